"""`run`'s pull options (issue 12): --platform picks the image to pull and use, --tls-verify
reaches the pull; an image for another platform than the host's gets docker's warning."""
from __future__ import annotations

import pytest

from minictr import api
from minictr.config import Paths
from minictr.errors import ImageError
from minictr.image import manifests
from minictr.spec.options import RunOptions

pytestmark = pytest.mark.registry


def _plan(tmp_path, image, warnings, pull_policy="missing", **kw):
    paths = Paths(store=str(tmp_path / "store"), state=str(tmp_path / "state"), rootless=False)
    return api.plan(paths, RunOptions(image=image, command=("true",), **kw),
                    pull_policy=pull_policy, warn=warnings.append)


def test_platform_picks_the_image_and_a_foreign_one_is_warned_about(empty_registry, layout,
                                                                    tmp_path):
    from registry_harness import push

    if manifests.host_platform()["architecture"] != "amd64":
        pytest.skip("the test index has amd64 and arm64 images; the warning needs amd64 here")
    push(layout, empty_registry.host, "test/multi", tag="multi")
    ref = f"{empty_registry.host}/test/multi:multi"
    warnings: list[str] = []
    p = _plan(tmp_path, ref, warnings, platform="linux/arm64", tls_verify=False)
    assert warnings == []                                  # asked for: no warning, as docker
    store = api._store(Paths(store=str(tmp_path / "store"), state="", rootless=False))
    assert store.resolve(p.image).manifest_digest == layout["arm"]["digest"]
    # the stored image is arm64 now: used without --platform, with docker's warning
    _plan(tmp_path, ref, warnings, pull_policy="never")
    assert warnings == ["The requested image's platform (linux/arm64/v8) does not match the "
                        "detected host platform (linux/amd64) and no specific platform was "
                        "requested"]
    # a stored image for another platform than the one asked for is not used silently
    with pytest.raises(ImageError, match="does not match the requested linux/amd64"):
        _plan(tmp_path, ref, [], pull_policy="never", platform="linux/amd64")
    # with pulling allowed, the requested platform's image is pulled instead
    p = _plan(tmp_path, ref, warnings, platform="linux/amd64", tls_verify=False)
    assert store.resolve(p.image).manifest_digest == layout["amd"]["digest"]


def test_tls_verify_false_reaches_runs_pull(tls_registry, tmp_path):
    """The pull hint suggests --tls-verify=false; run did not take it."""
    ref = f"{tls_registry.host}/test/app:v1"
    with pytest.raises(ImageError):
        _plan(tmp_path, ref, [])
    assert _plan(tmp_path, ref, [], tls_verify=False).image == ref

"""Engines tier: private containerd, dockerd and podman driving an OCI runtime (see README.md).

Installs nothing: each fixture skips with a one-line reason when its tool is absent (and only
then); an installed engine that does not start is a failure, with its log.

The runtime under test is the ``runtime`` fixture, parametrised:
  runc    reference, always run where runc is installed (proves the harness)
  crun    reference, skipped where crun refuses the machine (crun 1.8 and hybrid cgroups)
  target  MINICTR_ENGINE_RUNTIME (a path or a name on PATH), else minictr-runc from this venv's
          bin or PATH; skipped when there is none, a failure when the variable names nothing
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest

from engines_harness import (GPU_IMAGE, IMAGE, Containerd, Dockerd, EngineError, Podman, Runtime,
                             Session, build_spy, install_spy, run)

from tests import images

sys.path.insert(0, str(Path(__file__).parent.parent / "gpu"))
import fakedriver  # noqa: E402  (the GPU tier's fake driver and probe image, shared)
from probeimage import build_probe_rootfs, write_oci_layout  # noqa: E402

HERE = Path(__file__).parent
TARGET_ENV = "MINICTR_ENGINE_RUNTIME"
TARGET_NAME = "minictr-runc"

# Messages with which a *reference* runtime refuses this machine: its tests skip with the
# message. The target never skips on an error.
KNOWN_REFUSALS = [re.compile(r"cgroups in hybrid mode not supported[^\n:]*")]


def _missing(*tools_and_packages: tuple[str, str]) -> str | None:
    for tool, package in tools_and_packages:
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install {package})"
    return None


@pytest.fixture(scope="session")
def engines_session():
    if os.geteuid() != 0:
        pytest.skip("needs root (the engines run as root daemons; run the suite as root, as CI)")
    stale = Session.reap_stale()
    if stale:
        warnings.warn(f"an earlier engines session left something behind: {stale}")
    session = Session()
    yield session
    problems = session.teardown()
    if problems:
        warnings.warn(f"engines tier left something behind: {problems}")


@pytest.fixture(scope="session")
def image_archives(engines_session, tmp_path_factory):
    """busybox as (oci-archive, docker-archive), both naming it IMAGE."""
    image = images.build_busybox(tmp_path_factory.mktemp("images"))
    return images.write_archives(image, engines_session.dir / "images", IMAGE)


def _target() -> tuple[str | None, str]:
    """(path, "") for the runtime under test, or (None, why not)."""
    wanted = os.environ.get(TARGET_ENV)
    if wanted:
        path = wanted if "/" in wanted else shutil.which(wanted)
        if not path or not os.access(path, os.X_OK):
            return None, f"FAIL:{TARGET_ENV}={wanted} is not an executable"
        return os.path.abspath(path), ""
    beside = Path(sys.executable).parent / TARGET_NAME
    if beside.exists():
        return str(beside), ""
    on_path = shutil.which(TARGET_NAME)
    if on_path:
        return on_path, ""
    return None, (f"{TARGET_NAME} is not installed (in {beside.parent} or on PATH); "
                  f"set {TARGET_ENV}=/path/to/runtime to test another")


@pytest.fixture(scope="session")
def runtimes(engines_session) -> dict[str, Runtime | str]:
    """key -> Runtime, or the reason it is absent ("FAIL:..." when that is an error)."""
    found: dict[str, Runtime | str] = {}
    for key, package in (("runc", "runc"), ("crun", "crun")):
        path = shutil.which(key)
        found[key] = (Runtime(key, path, reference=True) if path
                      else f"{key} is not installed (apt-get install {package})")
    path, why = _target()
    found["target"] = Runtime("target", path, reference=False) if path else why
    spy = build_spy(HERE / "runtime_spy.c", engines_session.dir / "spy-build")
    for rt in found.values():
        if isinstance(rt, Runtime) and spy:
            rt.spy = install_spy(spy, rt, engines_session.dir / "spy")
    return found


_refusals: dict[str, str | None] = {}


def _refusal(request, rt: Runtime) -> str | None:
    """Run one container with a reference runtime through ctr; the known message it refuses this
    machine with, if it does."""
    if rt.key not in _refusals:
        try:
            containerd = request.getfixturevalue("containerd")
        except pytest.skip.Exception:
            return None
        res = run(containerd.run_argv(rt, f"probe-{rt.key}", "true", flags=("--rm",)))
        output = res.stdout + res.stderr
        match = next((m for m in (p.search(output) for p in KNOWN_REFUSALS) if m), None)
        _refusals[rt.key] = (f"{rt.key} ({rt.path}) refuses this machine: {match.group(0)}"
                             if res.returncode != 0 and match else None)
    return _refusals[rt.key]


@pytest.fixture(params=["runc", "crun", "target"])
def runtime(request, runtimes) -> Runtime:
    rt = runtimes[request.param]
    if isinstance(rt, str):
        if rt.startswith("FAIL:"):
            pytest.fail(rt[5:])
        pytest.skip(rt)
    if rt.reference:
        reason = _refusal(request, rt)
        if reason:
            pytest.skip(reason)
    return rt


@pytest.fixture
def spied(runtime) -> Runtime:
    """The runtime, with its spy's record emptied; skips without gcc."""
    if not runtime.spy:
        pytest.skip("gcc is not installed: no runtime_spy (apt-get install gcc)")
    runtime.spy_reset()
    return runtime


@pytest.fixture(scope="session")
def containerd(engines_session, image_archives):
    reason = _missing(("containerd", "containerd"), ("ctr", "containerd"),
                      ("containerd-shim-runc-v2", "containerd"))
    if reason:
        pytest.skip(reason)
    daemon = Containerd(engines_session)
    try:
        daemon.start()
        daemon.import_image(image_archives[0])
        yield daemon
    finally:
        daemon.stop()


def _start_dockerd(engines_session, containerd, image_archives, **kw) -> Dockerd:
    """Start (overlay2, else vfs where overlay2 does not work) and load the image."""
    driver = os.environ.get("MINICTR_ENGINE_STORAGE_DRIVER", "overlay2")
    daemon = Dockerd(engines_session, containerd, storage_driver=driver, **kw)
    try:
        daemon.start()
    except EngineError as err:
        if driver != "overlay2" or "overlay" not in str(err):
            raise
        daemon.stop()
        shutil.rmtree(daemon.dir, ignore_errors=True)
        daemon = Dockerd(engines_session, containerd, storage_driver="vfs", **kw)
        daemon.start()
    daemon.load(image_archives[1])
    return daemon


@pytest.fixture(scope="session")
def dockerd(engines_session, containerd, runtimes, image_archives):
    """One dockerd for the session, every runtime registered with --add-runtime: t-KEY (the
    runtime) and t-KEY-spy (runtime_spy in front of it)."""
    reason = _missing(("dockerd", "docker.io"), ("docker", "docker.io"))
    if reason:
        pytest.skip(reason)
    registered = {}
    for rt in runtimes.values():
        if isinstance(rt, Runtime):
            registered[rt.docker_name] = rt.path
            if rt.spy:
                registered[rt.docker_spy_name] = str(rt.spy)
    daemon = None
    try:
        daemon = _start_dockerd(engines_session, containerd, image_archives, runtimes=registered)
        yield daemon
    finally:
        if daemon:
            daemon.stop()


@pytest.fixture
def dockerd_default_runtime(engines_session, containerd, runtime, image_archives):
    """A second dockerd whose daemon.json registers the runtime under test (``runtimes``) and
    makes it the ``default-runtime``; stopped after the test."""
    name = f"d-{runtime.key}"
    daemon = None
    try:
        daemon = _start_dockerd(engines_session, containerd, image_archives,
                                name=f"docker-{runtime.key}", namespace=f"moby-{runtime.key}",
                                daemon_json={"runtimes": {name: {"path": runtime.path}},
                                             "default-runtime": name})
        daemon.default_runtime = name
        yield daemon
    finally:
        if daemon:
            daemon.stop()
            shutil.rmtree(daemon.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def podman(engines_session, runtimes, image_archives):
    reason = _missing(("podman", "podman"), ("conmon", "conmon"))
    if reason:
        pytest.skip(reason)
    reference = runtimes["runc"]
    if not isinstance(reference, Runtime):
        pytest.skip(f"podman's start check needs runc: {reference}")
    daemon = Podman(engines_session)
    try:
        daemon.start()
        daemon.load(image_archives[1])
        reason = daemon.settle_rlimits(reference.path)
        if reason:
            pytest.skip(reason)
        if daemon.workaround:
            warnings.warn(daemon.workaround)
        yield daemon
    finally:
        daemon.stop()


# ------------------------------------------------------------------ GPUs (fake driver)


@pytest.fixture(scope="session")
def fake_gpus(engines_session, runtimes):
    """The GPU tier's fake driver (two GPUs: index 0 = minor 1, index 1 = minor 0) for the
    runtime the engines start: minictr-runc reads its roots from config.toml in the session's
    XDG_CONFIG_HOME (containerd and podman hand their environment to the runtime), along with a
    CDI spec directory holding `minictr cdi generate`'s spec for the same driver."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the fake driver's libraries (apt-get install gcc)")
    target = runtimes["target"]
    if not isinstance(target, Runtime):
        pytest.skip(f"no runtime that injects GPUs: {target}")
    drv = fakedriver.build(str(engines_session.dir / "gpu"))
    cdi_dir = engines_session.dir / "cdi"
    cdi_dir.mkdir()
    minictr = Path(target.path).parent / "minictr"
    exe = str(minictr) if minictr.exists() else shutil.which("minictr")
    if not exe:
        pytest.skip("needs the minictr command beside the runtime to write the CDI spec")
    res = run([exe, "cdi", "generate", "-o", str(cdi_dir / "nvidia.yaml")],
              env={**os.environ, **drv.env()})
    assert res.returncode == 0, res.stderr
    config = engines_session.xdg_config / "minictr" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(drv.config_toml(cdi_spec_dirs=[str(cdi_dir)]))
    yield drv
    config.unlink()


@pytest.fixture(scope="session")
def gpu_image_archives(engines_session, fake_gpus):
    """The probe image (glibc, /probe, busybox) as (oci-archive, docker-archive) named
    GPU_IMAGE: /probe dlopens libcuda.so.1 and opens device paths (tests/gpu/probeimage.py)."""
    root = engines_session.dir / "gpu-image"
    layout = write_oci_layout(build_probe_rootfs(str(root / "rootfs")), str(root / "layout"))
    return images.write_archives(images.BuiltImage(Path(layout)), root, GPU_IMAGE)


@pytest.fixture(scope="session")
def target(runtimes) -> Runtime:
    """The runtime under test alone: the GPU tests need one that injects GPUs (runc and crun
    would run docker's nvidia-container-runtime-hook, or nothing)."""
    rt = runtimes["target"]
    if isinstance(rt, str):
        if rt.startswith("FAIL:"):
            pytest.fail(rt[5:])
        pytest.skip(rt)
    return rt


@pytest.fixture(scope="session")
def docker_gpu(dockerd, gpu_image_archives):
    dockerd.load(gpu_image_archives[1])
    return dockerd


@pytest.fixture(scope="session")
def containerd_gpu(containerd, gpu_image_archives):
    containerd.import_image(gpu_image_archives[0], GPU_IMAGE)
    return containerd


@pytest.fixture(scope="session")
def podman_gpu(podman, gpu_image_archives):
    podman.load(gpu_image_archives[1])
    return podman


@pytest.fixture
def dockerd_gpu_default(engines_session, containerd, target, gpu_image_archives):
    """A dockerd whose daemon.json names the runtime under test ``minictr`` (``runtimes``) and
    makes it the ``default-runtime``, with the GPU probe image loaded; stopped after the test."""
    daemon = None
    try:
        daemon = _start_dockerd(engines_session, containerd, (None, gpu_image_archives[1]),
                                name="docker-gpu", namespace="moby-gpu",
                                daemon_json={"runtimes": {"minictr": {"path": target.path}},
                                             "default-runtime": "minictr"})
        yield daemon
    finally:
        if daemon:
            daemon.stop()
            shutil.rmtree(daemon.dir, ignore_errors=True)

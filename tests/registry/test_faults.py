"""Faults during a pull: broken connections (resumed with Range, or restarted), a registry killed
and restarted mid-download, 503s with Retry-After, a corrupt blob, Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from minictr.errors import RegistryError
from minictr.image import manifests, registry

pytestmark = pytest.mark.registry
HERE = os.path.dirname(os.path.abspath(__file__))


def _pull(store, ref, no_hosts, authfile, **kw):
    return registry.pull(store, ref, hosts_config=no_hosts, authfile=authfile, env={},
                         tls_verify=False, **kw)


def _image(layout):
    blobs = os.path.join(layout["layouts"]["v1"], "blobs", "sha256")
    manifest = json.load(open(os.path.join(blobs, layout["v1"]["digest"][7:])))
    config = json.load(open(os.path.join(blobs, manifest["config"]["digest"][7:])))
    return manifest, manifests.chain_ids(config["rootfs"]["diff_ids"])


def _big(layout):
    manifest, chains = _image(layout)
    return manifest["layers"][1], chains[1]


def test_cut_connection_resumes_with_range(proxy, layout, store, no_hosts, authfile):
    big, chain = _big(layout)
    proxy.target, proxy.cut_after = big["digest"], 1 << 20

    _pull(store, f"{proxy.host}/test/app:v1", no_hosts, authfile)

    gets = [(rng, status) for path, rng, status in proxy.blob_gets() if big["digest"] in path]
    assert gets == [(None, 200), (f"bytes={1 << 20}-", 206)]
    assert store.has_layer(chain)


def test_cut_connection_without_range_support_restarts(proxy, layout, store, no_hosts,
                                                       authfile):
    big, chain = _big(layout)
    proxy.target, proxy.cut_after, proxy.strip_range = big["digest"], 1 << 20, True

    _pull(store, f"{proxy.host}/test/app:v1", no_hosts, authfile)

    gets = [(rng, status) for path, rng, status in proxy.blob_gets() if big["digest"] in path]
    assert gets == [(None, 200), (f"bytes={1 << 20}-", 200)]   # Range stripped: whole blob
    assert store.has_layer(chain)


def test_registry_killed_mid_download_and_restarted(proxy, plain, layout, store, no_hosts,
                                                    authfile):
    big, chain = _big(layout)

    def kill_and_restart():
        plain.stop()
        threading.Timer(1.0, plain.start).start()

    proxy.target, proxy.cut_after, proxy.on_cut = big["digest"], 1 << 20, kill_and_restart

    _pull(store, f"{proxy.host}/test/app:v1", no_hosts, authfile)

    statuses = [status for path, rng, status in proxy.blob_gets() if big["digest"] in path]
    assert statuses[0] == 200 and statuses[-1] == 206
    assert store.has_layer(chain)


def test_503_with_retry_after_is_retried(proxy, store, no_hosts, authfile):
    proxy.unavailable = 3
    assert _pull(store, f"{proxy.host}/test/app:v1", no_hosts, authfile)
    assert sum(1 for *_, status in proxy.log if status == 503) == 3


def test_corrupt_blob_in_registry_storage_is_refused(plain, layout, store, no_hosts, authfile):
    big, chain = _big(layout)
    data = plain.blob_data(big["digest"])
    with open(data, "r+b") as f:
        f.seek(4)                   # gzip MTIME: still a valid gzip of the same tar
        f.write(b"\x01\x02\x03\x04")

    with pytest.raises(RegistryError) as err:
        _pull(store, f"{plain.host}/test/app:v1", no_hosts, authfile)

    assert f"layer {big['digest']} from {plain.host}/test/app" in str(err.value)
    assert "verification failed" in str(err.value)
    assert not store.has_layer(chain)
    assert not store.has_blob(big["digest"])
    assert not store.has_blob(layout["v1"]["digest"])       # no image recorded


def test_ctrl_c_stops_workers_and_stores_nothing(proxy, layout, tmp_path):
    """SIGINT while a worker is blocked mid-blob: the pull stops and the layer is not stored."""
    big, chain = _big(layout)
    proxy.target, proxy.stall_after = big["digest"], 1 << 20
    root = str(tmp_path / "store")
    script = f"""
import signal, sys
sys.path.insert(0, {HERE!r})
from registry_harness import make_store
from minictr.image import registry
signal.signal(signal.SIGINT, signal.default_int_handler)   # as cli.main() does after imports
from minictr.image.hosts import HostsConfig
registry.pull(make_store({root!r}), {proxy.host + '/test/app:v1'!r}, tls_verify=False,
              hosts_config=HostsConfig(), authfile={str(tmp_path / 'auth.json')!r}, env={{}})
"""
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        assert proxy.stalled.wait(60), "the pull never reached the stalled blob"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)     # a hang guard, not a timing measurement
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode != 0
    assert b"KeyboardInterrupt" in err
    from registry_harness import make_store

    store = make_store(root)
    assert not store.has_layer(chain)
    assert not store.has_blob(big["digest"])
    assert not store.has_blob(layout["v1"]["digest"])


def test_connection_broken_too_often_fails_cleanly(proxy, layout, store, no_hosts, authfile):
    """Every GET of the big blob breaks after 64 KiB: the resume budget runs out with a clear
    error and nothing is stored; the next pull, without faults, succeeds."""
    big, chain = _big(layout)
    proxy.target, proxy.cut_after, proxy.cuts = big["digest"], 64 << 10, 1000

    with pytest.raises(RegistryError, match=f"download of {big['digest']} broke 6 times"):
        _pull(store, f"{proxy.host}/test/app:v1", no_hosts, authfile, sleep=lambda s: None)
    assert not store.has_layer(chain) and not store.has_blob(big["digest"])

    proxy.cuts = 0
    _pull(store, f"{proxy.host}/test/app:v1", no_hosts, authfile)
    assert store.has_layer(chain)

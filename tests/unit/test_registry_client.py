"""The distribution client, endpoints and the resumable blob stream, against a scripted HTTP
session (the ``session``/``session_factory`` and ``sleep`` seams)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json

import pytest

from minictr.errors import RegistryError
from minictr.image import hosts, manifests, registry
from minictr.image.distribution import Client, retry_after
from minictr.image.transfer import BlobStream, Transfers


class Response:
    """What httpclient.Session returns: status, headers, a body read on demand."""

    def __init__(self, status, body=b"", headers=None, break_after=None):
        self.status_code, self.headers, self.reason = status, headers or {}, ""
        self.body, self.buf, self.break_after, self.sent = body, io.BytesIO(body), break_after, 0

    def read1(self, n=1 << 20):
        if self.break_after is not None and self.sent >= self.break_after:
            raise ConnectionError("connection broken")
        if self.break_after is not None:
            n = min(n, self.break_after - self.sent)
        data = self.buf.read(n)
        self.sent += len(data)
        return data

    def read(self, n=-1):
        return self.read1(n if n >= 0 else len(self.body))

    def json(self):
        return json.loads(self.body)

    def shutdown(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        pass


class Session:
    """Answers requests from a script: a list of (method, url suffix, response)."""

    def __init__(self, script):
        self.script, self.seen = list(script), []

    def request(self, method, url, headers=None, **kw):
        self.seen.append((method, url, dict(headers or {})))
        for i, (m, suffix, resp) in enumerate(self.script):
            if m == method and url.split("?")[0].endswith(suffix):
                del self.script[i]
                return resp
        raise AssertionError(f"unexpected {method} {url}")

    def get(self, url, params=None, auth=None, **kw):
        return self.request("GET", url, {"params": params, "auth": auth})

    def close(self):
        pass


def _client(script, **kw):
    ep = hosts.Endpoint(host="reg.test", registry="reg.test")
    sleeps = []
    return Client(ep, "team/app", session=Session(script), sleep=sleeps.append, **kw), sleeps


def test_endpoints():
    assert hosts.endpoints("docker.io")[0].host == "registry-1.docker.io"
    assert hosts.endpoints("reg.io")[0].schemes == ("https",)
    assert hosts.endpoints("localhost:5000")[0].schemes == ("https", "http")
    assert hosts.endpoints("127.0.0.1:5000")[0].verify is True
    insecure = hosts.endpoints("reg.io", tls_verify=False)[0]
    assert (insecure.schemes, insecure.verify) == (("https", "http"), False)
    assert hosts.endpoints("localhost:5000", tls_verify=True)[0].schemes == ("https",)


def test_is_loopback():
    for host in ("localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000"):
        assert hosts.is_loopback(host), host
    for host in ("reg.io", "10.0.0.1:5000", "localhost.example.com", "[fe80::1]:5000"):
        assert not hosts.is_loopback(host), host


def test_registries_json_mirrors_and_certs_dir(tmp_path):
    conf = tmp_path / "registries.json"
    conf.write_text(json.dumps({"registries": {"docker.io": {"mirrors": [
        "mirror.lan:5000", {"location": "10.0.0.9:5000", "insecure": True}]},
        "lab:5000": {"insecure": True}}}))
    (tmp_path / "certs.d" / "lab:5000").mkdir(parents=True)
    (tmp_path / "certs.d" / "lab:5000" / "ca.crt").write_text("x")
    config = hosts.load_config(env={"MINICTR_REGISTRIES_CONF": str(conf),
                                    "HOME": str(tmp_path)})
    config = hosts.HostsConfig(config.registries, (str(tmp_path / "certs.d"),))

    eps = hosts.endpoints("docker.io", config=config)
    assert [(e.host, e.mirror, e.verify) for e in eps] == [
        ("mirror.lan:5000", True, True), ("10.0.0.9:5000", True, False),
        ("registry-1.docker.io", False, True)]
    lab = hosts.endpoints("lab:5000", config=config)[-1]
    assert lab.verify is False and lab.ca_files[0].endswith("lab:5000/ca.crt")


def test_bad_registries_json(tmp_path):
    conf = tmp_path / "r.json"
    conf.write_text(json.dumps({"registries": {"x": {"mirrors": [5]}}}))
    with pytest.raises(Exception, match="mirror 5"):
        hosts.load_config(str(conf), env={})


def test_bearer_token_flow_and_retry_after():
    challenge = 'Bearer realm="https://auth.test/token",service="reg"'
    client, sleeps = _client([
        ("GET", "/v2/", Response(401, headers={"WWW-Authenticate": challenge})),
        ("GET", "/token", Response(200, b'{"token": "T1"}')),
        ("GET", "/manifests/v1", Response(503, headers={"Retry-After": "7"})),
        ("GET", "/manifests/v1", Response(429, headers={"Retry-After": "999"})),
        ("GET", "/manifests/v1", Response(200, b"{}", {"Content-Type": manifests.OCI_MANIFEST})),
    ])
    data, ctype = client.get_manifest("v1", manifests.ACCEPT, 100)
    assert (data, ctype) == (b"{}", manifests.OCI_MANIFEST)
    assert sleeps == [7.0, 30.0]              # Retry-After honoured, capped
    seen = client.session.seen
    assert seen[1][2]["params"] == {"service": "reg", "scope": "repository:team/app:pull"}
    assert seen[-1][2]["Authorization"] == "Bearer T1"


def test_expired_token_is_refreshed_once():
    challenge = 'Bearer realm="https://auth.test/token",service="reg"'
    client, _ = _client([
        ("GET", "/v2/", Response(401, headers={"WWW-Authenticate": challenge})),
        ("GET", "/token", Response(200, b'{"access_token": "OLD"}')),
        ("GET", "/manifests/v1", Response(401, headers={"WWW-Authenticate": challenge})),
        ("GET", "/token", Response(200, b'{"token": "NEW"}')),
        ("GET", "/manifests/v1", Response(200, b"{}")),
    ])
    client.get_manifest("v1", manifests.ACCEPT, 100)
    assert client.session.seen[-1][2]["Authorization"] == "Bearer NEW"


def test_retry_after_http_date():
    r = Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after(r, 1.0) == 0.0         # a date in the past: no wait


def test_manifest_size_limit():
    client, _ = _client([("GET", "/v2/", Response(200)),
                         ("GET", "/manifests/v1", Response(200, b"x" * 101))])
    with pytest.raises(RegistryError, match="larger than 100 bytes"):
        client.get_manifest("v1", manifests.ACCEPT, 100)


def _stream(responses, size, **kw):
    opened = []

    def open_at(offset):
        opened.append(offset)
        return responses.pop(0)
    return BlobStream(open_at, size, "sha256:x", Transfers(), sleep=lambda s: None, **kw), opened


def test_blob_stream_resumes_with_range():
    body = bytes(range(256)) * 40
    s, opened = _stream([Response(200, body, break_after=3000),
                         Response(206, body[3000:])], len(body))
    assert b"".join(iter(lambda: s.read(1000), b"")) == body
    assert opened == [0, 3000]


def test_blob_stream_skips_when_range_is_ignored():
    body = bytes(range(256)) * 40
    s, opened = _stream([Response(200, body, break_after=5000), Response(200, body)], len(body))
    assert b"".join(iter(lambda: s.read(4096), b"")) == body
    assert opened == [0, 5000]


def test_blob_stream_refuses_more_than_the_descriptor_size():
    s, _ = _stream([Response(200, b"abcdef")], 4)
    assert s.read(10) == b"abcd"
    with pytest.raises(RegistryError, match="larger than its descriptor"):
        s.read(10)


def test_blob_stream_gives_up_after_max_resumes():
    s, opened = _stream([Response(200, b"ab" * 10, break_after=1)] * 10, 20, max_resumes=2)
    with pytest.raises(RegistryError, match="broke 3 times"):
        while s.read(5):
            pass
    assert len(opened) == 3


def _image_bytes():
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode()
    cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": manifests.OCI_MANIFEST,
                           "config": {"mediaType": manifests.CONFIG_TYPES[0], "digest": cdigest,
                                      "size": len(config)}, "layers": []}).encode()
    return manifest, config, cdigest


class NoStore:
    def has_blob(self, d):
        return False

    @contextlib.contextmanager
    def importing(self):
        yield self


def test_pull_by_digest_verifies_the_manifest():
    manifest, _, _ = _image_bytes()
    wrong = "sha256:" + "0" * 64
    session = Session([("GET", "/v2/", Response(200)),
                       ("GET", f"/manifests/{wrong}", Response(200, manifest))])
    with pytest.raises(RegistryError, match="manifest digest mismatch"):
        registry.pull(NoStore(), f"reg.test/team/app@{wrong}", hosts_config=hosts.HostsConfig(),
                      env={}, authfile="/nonexistent", session_factory=lambda ep: session)


def test_config_digest_mismatch_stores_nothing():
    manifest, config, cdigest = _image_bytes()
    session = Session([("GET", "/v2/", Response(200)),
                       ("GET", "/manifests/v1", Response(200, manifest)),
                       ("GET", f"/blobs/{cdigest}", Response(200, config[:-1] + b" "))])
    with pytest.raises(RegistryError, match="config blob digest mismatch"):
        registry.pull(NoStore(), "reg.test/team/app:v1", hosts_config=hosts.HostsConfig(),
                      env={}, authfile="/nonexistent", session_factory=lambda ep: session)


def test_rate_limit_after_retries_has_a_hint():
    limited = b'{"errors": [{"code": "TOOMANYREQUESTS", "message": "pull rate limit"}]}'
    client, sleeps = _client([("GET", "/v2/", Response(200))] +
                             [("GET", "/manifests/v1", Response(429, limited))] * 6)
    with pytest.raises(RegistryError, match="TOOMANYREQUESTS: pull rate limit") as err:
        client.get_manifest("v1", manifests.ACCEPT, 100)
    assert "rate-limits" in err.value.hint
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]          # exponential backoff without Retry-After


def test_run_parallel_keeps_order_and_raises_the_first_failure():
    import threading
    import time as _time

    from minictr.image.transfer import run_parallel

    assert run_parallel([lambda i=i: (_time.sleep(0.01 * (5 - i)), i)[1] for i in range(5)],
                        Transfers(), workers=3) == [0, 1, 2, 3, 4]
    assert run_parallel([], Transfers()) == []
    started, transfers = [], Transfers()

    def job(i):
        started.append(i)
        if i == 1:
            raise RegistryError("layer 1 broke")
        transfers.cancel.wait(5)        # what a download does: stops when cancelled
        return i
    with pytest.raises(RegistryError, match="layer 1 broke"):
        run_parallel([lambda i=i: job(i) for i in range(6)], transfers, workers=2)
    assert transfers.cancel.is_set() and sorted(started) == [0, 1]
    assert not [t for t in threading.enumerate() if t.name.startswith("minictr-pull")]

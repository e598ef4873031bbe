"""The registry's HTTP client (minictr/image/httpclient.py) against small servers on loopback:
redirects and where Authorization goes, proxies (CONNECT and absolute form, NO_PROXY), bodies
cut short, the pool, and cutting every connection from another thread."""
from __future__ import annotations

import http.server
import os
import select
import shutil
import socket
import subprocess
import threading
import time

import pytest

from minictr.image import httpclient
from minictr.image.httpclient import Session, bypasses_proxy, proxy_for


class Server:
    """An HTTP/1.1 server on 127.0.0.1 whose answers come from ``routes`` (path -> function
    of the handler); it records (method, path, headers) and the client ports it saw."""

    def __init__(self, routes, tls=None):
        self.routes, self.seen, self.ports = routes, [], set()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.seen.append(("GET", self.path, dict(self.headers)))
                outer.ports.add(self.client_address[1])
                outer.routes[self.path.split("?")[0]](self)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path, host="127.0.0.1", scheme="http"):
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def answer(body=b"ok", status=200, headers=()):
    def route(h):
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return route


def redirect(location, status=302):
    return answer(b"moved", status, [("Location", location)])


@pytest.fixture
def servers():
    made = []

    def make(routes, tls=None):
        made.append(Server(routes, tls))
        return made[-1]
    yield make
    for s in made:
        s.close()


def get(url, env=None, **kw):
    with Session(env=env or {}, **kw) as s:
        with s.get(url, headers={"Authorization": "Bearer T"}) as r:
            return r.status_code, r.read(), r.url


def test_redirect_on_the_same_origin_keeps_authorization(servers):
    srv = servers({"/a": redirect("/b"), "/b": answer(b"here")})
    assert get(srv.url("/a")) == (200, b"here", srv.url("/b"))
    assert srv.seen[1][2].get("Authorization") == "Bearer T"


def test_redirect_to_another_host_drops_authorization(servers):
    """A registry sends blobs to storage with a signed URL: its token must not go there."""
    storage = servers({"/blob": answer(b"data")})
    for status in (301, 302, 303, 307, 308):
        registry = servers({"/v2/x": redirect(storage.url("/blob", host="localhost"), status)})
        assert get(registry.url("/v2/x"))[:2] == (200, b"data")
        assert registry.seen[-1][2].get("Authorization") == "Bearer T"
        assert "Authorization" not in storage.seen[-1][2]
    # another port of the same host is another origin too
    registry = servers({"/v2/x": redirect(storage.url("/blob"))})
    get(registry.url("/v2/x"))
    assert "Authorization" not in storage.seen[-1][2]


def test_redirect_loop_ends(servers):
    srv = servers({"/loop": redirect("/loop")})
    with pytest.raises(httpclient.TooManyRedirects):
        get(srv.url("/loop"), max_redirects=3)
    assert len(srv.seen) == 4


def test_body_shorter_than_its_content_length_is_an_incomplete_read(servers):
    def short(h):
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(b"x" * 1000)
        h.wfile.flush()
        h.close_connection = True
    srv = servers({"/short": short})
    with Session(env={}) as s, s.get(srv.url("/short")) as r:
        with pytest.raises(httpclient.IncompleteRead, match="after 1000 of 100000 bytes"):
            r.read()
    assert issubclass(httpclient.IncompleteRead, ConnectionError)   # transfer.BROKEN resumes


def test_connections_are_reused(servers):
    srv = servers({"/a": answer(b"1"), "/b": answer(b"2", 401)})
    with Session(env={}) as s:
        for path in ("/a", "/b", "/a"):
            with s.get(srv.url(path)) as r:
                if path == "/a":
                    r.read()        # /b is closed unread: its small body is drained
    assert len(srv.seen) == 3 and len(srv.ports) == 1


def test_connection_refused_is_a_connect_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpclient.ConnectError, match="connection refused"):
        get(f"http://127.0.0.1:{port}/")


def test_cut_wakes_a_reader_blocked_in_recv(servers):
    """What the pull's deadline does: shutdown(2) of every connection, from another thread."""
    release = threading.Event()

    def stall(h):
        h.send_response(200)
        h.send_header("Content-Length", "10")
        h.end_headers()
        h.wfile.write(b"12345")
        h.wfile.flush()
        release.wait(30)
    srv = servers({"/stall": stall})
    with Session(env={}) as s, s.get(srv.url("/stall"), timeout=(5, 60)) as r:
        assert r.read1(5) == b"12345"
        threading.Timer(0.3, s.connections.cut).start()
        start = time.monotonic()
        with pytest.raises(OSError):
            r.read()
        assert time.monotonic() - start < 20
    release.set()


# ---------------------------------------------------------------- proxies


def test_no_proxy_rules():
    assert bypasses_proxy("reg.example.com", 443, "example.com")
    assert bypasses_proxy("reg.example.com", 443, ".example.com")
    assert bypasses_proxy("reg.example.com", 443, "*.example.com")
    assert not bypasses_proxy("badexample.com", 443, "example.com")
    assert bypasses_proxy("reg.io", 5000, "other, reg.io:5000")
    assert not bypasses_proxy("reg.io", 443, "reg.io:5000")
    assert bypasses_proxy("10.1.2.3", 443, "10.0.0.0/8")
    assert bypasses_proxy("::1", 443, "::1")
    assert bypasses_proxy("anything", 1, " * ")
    assert not bypasses_proxy("reg.io", 443, "")
    env = {"HTTPS_PROXY": "proxy:3128", "http_proxy": "http://p2:8080", "NO_PROXY": "local"}
    assert proxy_for("https", "reg.io", 443, env) == "http://proxy:3128"
    assert proxy_for("http", "reg.io", 80, env) == "http://p2:8080"
    assert proxy_for("https", "x.local", 443, env) is None
    assert proxy_for("https", "reg.io", 443, {"ALL_PROXY": "http://a:1"}) == "http://a:1"
    # the lower-case name wins, as in curl
    assert proxy_for("https", "r", 443, {"https_proxy": "http://low:1",
                                         "HTTPS_PROXY": "http://up:1"}) == "http://low:1"


class Proxy:
    """A forward proxy: CONNECT tunnels and absolute-form GETs, each recorded."""

    def __init__(self):
        self.seen = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_CONNECT(self):
                outer.seen.append(("CONNECT", self.path, dict(self.headers)))
                host, _, port = self.path.rpartition(":")
                upstream = socket.create_connection((host, int(port)))
                self.send_response(200, "Connection established")
                self.end_headers()
                pair = [self.connection, upstream]
                while True:
                    ready, _, _ = select.select(pair, [], [], 10)
                    if not ready:
                        break
                    for src in ready:
                        data = src.recv(65536)
                        if not data:
                            upstream.close()
                            return
                        (upstream if src is self.connection else self.connection).sendall(data)

            def do_GET(self):
                outer.seen.append(("GET", self.path, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Length", "7")
                self.end_headers()
                self.wfile.write(b"proxied")

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://user:p%40ss@127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def proxy():
    p = Proxy()
    yield p
    p.httpd.shutdown()
    p.httpd.server_close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("needs openssl to make a certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=reg.test", "-addext", "subjectAltName=DNS:reg.test,"
                    "IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx, cert


def test_https_through_a_proxy_uses_connect(servers, proxy, tls):
    ctx, cert = tls
    srv = servers({"/v2/": answer(b"secure")}, tls=ctx)
    env = {"HTTPS_PROXY": proxy.url, "NO_PROXY": "example.org"}
    assert get(srv.url("/v2/", scheme="https"), env=env, ca_files=[cert])[:2] == (200, b"secure")
    method, target, headers = proxy.seen[0]
    assert (method, target) == ("CONNECT", f"127.0.0.1:{srv.port}")
    assert headers["Proxy-Authorization"] == "Basic dXNlcjpwQHNz"      # user:p@ss
    assert "Authorization" not in headers       # the registry's token stays in the tunnel
    assert srv.seen[0][2]["Authorization"] == "Bearer T"


def test_plain_http_through_a_proxy_uses_the_absolute_form(servers, proxy):
    assert get("http://reg.test:5000/v2/", env={"http_proxy": proxy.url})[:2] == (
        200, b"proxied")
    assert proxy.seen[0][:2] == ("GET", "http://reg.test:5000/v2/")


def test_no_proxy_goes_direct(servers):
    srv = servers({"/v2/": answer(b"direct")})
    env = {"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "localhost,127.0.0.1"}
    assert get(srv.url("/v2/"), env=env)[:2] == (200, b"direct")


def test_tls_verification(servers, tls):
    ctx, cert = tls
    srv = servers({"/v2/": answer(b"ok")}, tls=ctx)
    with pytest.raises(httpclient.TLSError) as err:
        get(srv.url("/v2/", scheme="https"))
    assert err.value.verify_failed
    assert get(srv.url("/v2/", scheme="https"), verify=False)[:2] == (200, b"ok")
    assert get(srv.url("/v2/", scheme="https"), ca_files=[cert])[:2] == (200, b"ok")


def test_pull_path_imports_neither_requests_nor_urllib3():
    code = ("import sys; import minictr.image.registry; "
            "print(sorted(m for m in ('requests', 'urllib3') if m in sys.modules))")
    out = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"

"""A small HTTP/1.1 client for the registry, on the standard library's http.client.

Why not requests: importing requests and urllib3 took ~100 ms of a 1 MB pull's ~300 ms, more than
the transfer (bench/README.md, "Pull"). The distribution API needs little of them: GET with
headers, a query for the token server, streamed bodies, and these, each done here:

* **a connection pool per host** (scheme, host, port, proxy): an idle keep-alive connection is
  reused by the next request; a response not read to its end closes its connection instead;
* **redirects** (RFC 9110 §15.4: 301, 302, 303, 307, 308), at most ``max_redirects``; the
  Authorization header is dropped when a redirect leaves the origin (registries send blobs to
  a storage host with a signed URL, which must not receive the registry's token; requests'
  ``should_strip_auth`` does the same, allowing only http→https on the same host);
* **TLS verification** with the system's CAs plus the registry's certs.d CAs, a client
  certificate, or none at all when the user turned verification off;
* **proxies from the environment** as curl and requests read them: ``https_proxy``/
  ``HTTPS_PROXY``, ``http_proxy``/``HTTP_PROXY``, ``all_proxy``/``ALL_PROXY``, and
  ``no_proxy``/``NO_PROXY`` (``*``, host and domain suffixes, ``host:port``, IP networks);
  https goes through a CONNECT tunnel, plain http in absolute form;
* **a body shorter than its Content-Length** is an ``IncompleteRead`` (a ``ConnectionError``)
  naming both counts, never a short body taken as complete;
* **every connection is tracked** (``Connections``), so a deadline can shutdown(2) them all
  from another thread and wake a reader blocked in recv(2).
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import sys
import threading
import weakref
from urllib.parse import unquote, urlencode, urljoin, urlsplit

REDIRECTS = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}
USER_AGENT = "minictr/0.1"
DRAIN_LIMIT = 64 << 10      # a redirect's or error's body read to reuse the connection


class HTTPError(Exception):
    """A request that got no HTTP answer (the base of the errors below)."""


class ConnectError(HTTPError):
    """The server (or the proxy) could not be reached, or did not answer in time."""


class TLSError(ConnectError):
    """The TLS handshake failed; ``verify_failed`` when the certificate was not trusted."""

    def __init__(self, text: str, verify_failed: bool = False):
        super().__init__(text)
        self.verify_failed = verify_failed


class TooManyRedirects(HTTPError):
    pass


class IncompleteRead(ConnectionError):
    """The connection ended before the body did."""


class Connections:
    """Every connection a session opens, so that a deadline can cut them all at once:
    shutdown(2) wakes a thread blocked in recv(2) on one (close(2) from another thread does
    not), however slowly the server drips its bytes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open: weakref.WeakSet = weakref.WeakSet()

    def add(self, sock) -> None:
        with self._lock:
            self._open.add(sock)

    def cut(self) -> None:
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            _shutdown(sock)


def _shutdown(sock) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


# ---------------------------------------------------------------- proxies from the environment


def _env(env, name: str) -> str:
    return env.get(name.lower()) or env.get(name.upper()) or ""


def proxy_for(scheme: str, host: str, port: int, env) -> str | None:
    """The proxy URL for a request to ``scheme://host:port``, or None (direct)."""
    proxy = _env(env, f"{scheme}_proxy") or _env(env, "all_proxy")
    if not proxy or bypasses_proxy(host, port, _env(env, "no_proxy")):
        return None
    return proxy if "://" in proxy else "http://" + proxy


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``no_proxy`` (comma-separated) exempts ``host``: ``*``; a name, matching it and
    its subdomains (a leading dot or ``*.`` is ignored); ``name:port``; an IP address or
    network (``10.0.0.0/8``)."""
    host = host.strip("[]").lower().rstrip(".")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, want_port = entry, None
        if entry.count(":") == 1 or (entry.startswith("[") and "]:" in entry):
            name, _, text = entry.rpartition(":")
            if text.isdigit():
                want_port = int(text)
            else:
                name = entry
        name = name.strip("[]").lstrip("*").lstrip(".").rstrip(".")
        if want_port is not None and want_port != port:
            continue
        if _ip_match(host, name) or host == name or host.endswith("." + name):
            return True
    return False


def _ip_match(host: str, entry: str) -> bool:
    if not entry or not (entry[0].isdigit() or ":" in entry):
        return False
    import ipaddress    # only for an IP-looking NO_PROXY entry

    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False


# ---------------------------------------------------------------- responses


class Response:
    """A response whose body is read on demand (``read``, ``read1``) or at once (``json``).
    Read to its end, its connection goes back to the pool; closed earlier, it is closed."""

    def __init__(self, raw: http.client.HTTPResponse, conn, sock, url: str, release):
        self._raw, self._conn, self._release = raw, conn, release
        self._sock = sock           # the connection's, even once http.client hands it over
        self.url = url
        self.status_code = raw.status
        self.reason = raw.reason
        self.headers = raw.headers          # an email.message.Message: get() ignores case
        self._length = raw.length           # None: chunked or to the connection's close
        self._got = 0

    def read1(self, n: int = 1 << 20) -> bytes:
        """Up to ``n`` bytes, as soon as some have arrived; b"" at the end of the body."""
        try:
            data = self._raw.read1(n)
        except http.client.IncompleteRead as err:      # a chunked body cut short
            raise IncompleteRead(f"the connection closed after {self._got + len(err.partial)}"
                                 f" bytes of a chunked body from {self._where()}") from err
        except http.client.HTTPException as err:
            raise ConnectionError(f"{self._where()}: {type(err).__name__}: {err}") from err
        if data:
            self._got += len(data)
        elif n and self._length is not None and self._got < self._length:
            raise IncompleteRead(f"the connection closed after {self._got} of "
                                 f"{self._length} bytes from {self._where()}")
        else:
            self._finished()
        return data

    def read(self, n: int = -1) -> bytes:
        """``n`` bytes (fewer only at the end of the body); all of it when ``n`` < 0."""
        parts, want = [], n
        while want != 0:
            data = self.read1(1 << 20 if want < 0 else min(want, 1 << 20))
            if not data:
                break
            parts.append(data)
            if want > 0:
                want -= len(data)
        return b"".join(parts)

    def json(self):
        return json.loads(self.read())

    def _where(self) -> str:
        return urlsplit(self.url).netloc

    def _complete(self) -> bool:
        """The whole body was read (http.client's read1 leaves a response whose
        Content-Length is used up open, not closed)."""
        raw = self._raw
        return raw.isclosed() or (raw.length == 0 and not raw.chunked)

    def _finished(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            reusable = not self._raw.will_close and self._complete()
            self._raw.close()
            self._release(conn, reusable=reusable)

    def shutdown(self) -> None:
        """Wake a reader blocked on this response from another thread."""
        if self._conn is not None:
            _shutdown(self._sock)

    def close(self) -> None:
        if self._conn is not None and not self._complete() and \
                self._raw.length is not None and self._raw.length <= DRAIN_LIMIT:
            with contextlib.suppress(OSError, http.client.HTTPException):
                self._raw.read()        # a small unread body (a 401's): keep the connection
        if self._conn is not None:
            conn, self._conn = self._conn, None
            reusable = self._complete() and not self._raw.will_close
            self._raw.close()
            self._release(conn, reusable=reusable)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- the session


class Session:
    """Requests to any host, with pooled connections (thread-safe).

    ``verify``: check the server's certificate against the system's CAs plus ``ca_files``.
    ``client_cert``: (cert file, key file). ``env``: where the proxy variables are read.
    """

    def __init__(self, *, verify: bool = True, ca_files=(), client_cert=None, pool: int = 8,
                 env=None, max_redirects: int = 10):
        self.verify, self.ca_files, self.client_cert = verify, tuple(ca_files), client_cert
        self.env = os.environ if env is None else env
        self.max_redirects = max_redirects
        self.pool = pool
        self.connections = Connections()
        self._idle: dict[tuple, list] = {}
        self._lock = threading.Lock()
        self._ssl = None

    # -------------------------------------------------------- connections

    def ssl_context(self):
        """Made once, on the first https request. (Plain-http pulls still load ssl: http.client
        imports it at its own import, ~5 ms under -X importtime, to define HTTPSConnection.)"""
        if self._ssl is None:
            import ssl

            if self.verify:
                ctx = ssl.create_default_context()      # the system's CAs, hostname checked
                for path in self.ca_files:
                    ctx.load_verify_locations(cafile=path)
            else:
                # no CA store to load (~15 ms): nothing is checked against it
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if self.client_cert:
                ctx.load_cert_chain(*self.client_cert)
            self._ssl = ctx
        return self._ssl

    def _connect(self, key: tuple, timeout: tuple[float, float]):
        scheme, host, port, proxy = key
        if proxy is None:
            target_host, target_port = host, port
        else:
            p = urlsplit(proxy)
            target_host, target_port = p.hostname, p.port or DEFAULT_PORTS.get(p.scheme, 80)
        if scheme == "https":
            conn = http.client.HTTPSConnection(target_host, target_port, timeout=timeout[0],
                                               context=self.ssl_context())
            if proxy is not None:       # CONNECT host:port, then TLS inside the tunnel
                conn.set_tunnel(host, port, headers=_proxy_auth(proxy))
        else:
            conn = http.client.HTTPConnection(target_host, target_port, timeout=timeout[0])
        try:
            conn.connect()
        except Exception as err:
            conn.close()
            raise _connect_error(err, host, port, proxy) from err
        self.connections.add(conn.sock)
        conn.sock.settimeout(timeout[1])
        return conn

    def _take(self, key: tuple):
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def _release(self, key: tuple, conn, reusable: bool) -> None:
        if reusable:
            with self._lock:
                idle = self._idle.setdefault(key, [])
                if len(idle) < self.pool:
                    idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # -------------------------------------------------------- requests

    def get(self, url: str, **kw) -> Response:
        return self.request("GET", url, **kw)

    def request(self, method: str, url: str, headers: dict | None = None, *,
                params: dict | None = None, auth: tuple[str, str] | None = None,
                timeout: tuple[float, float] = (10.0, 60.0), allow_redirects: bool = True,
                stream: bool = True) -> Response:
        """Send one request, following redirects; the body is left to read. ``auth``: basic
        credentials, sent to the first origin only. ``stream`` is accepted for callers written
        for requests: bodies are always streamed."""
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        sent = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
        if auth is not None:
            pair = f"{auth[0]}:{auth[1]}".encode()
            sent["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        origin = _origin(url)
        for _hop in range(self.max_redirects + 1):
            response = self._send_once(method, url, sent, timeout)
            if not allow_redirects or response.status_code not in REDIRECTS:
                return response
            location = response.headers.get("Location")
            _drain(response)
            if not location:
                return response
            url = urljoin(url, location)
            if response.status_code == 303 and method != "HEAD":
                method = "GET"
            if not _same_origin(origin, _origin(url)):
                # a redirect to another host (a blob store's signed URL): the registry's
                # credentials must not follow
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
        raise TooManyRedirects(f"more than {self.max_redirects} redirects, last to {url}")

    def _send_once(self, method: str, url: str, headers: dict, timeout) -> Response:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            raise HTTPError(f"unsupported URL {url!r}")
        host, port = parts.hostname, parts.port or DEFAULT_PORTS[scheme]
        proxy = proxy_for(scheme, host, port, self.env)
        key = (scheme, host, port, proxy)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        hdrs = dict(headers)
        if proxy is not None and scheme == "http":
            target = f"http://{parts.netloc}{target}"     # absolute form, to the proxy
            hdrs.update(_proxy_auth(proxy))
        # a pooled connection may have been closed by the server while idle: one retry on
        # a fresh connection, only for a reused one (a new one failing is a real error)
        for reused in (True, False):
            conn = self._take(key) if reused else None
            if reused and conn is None:
                continue
            if conn is None:
                conn = self._connect(key, timeout)
            sock = conn.sock
            try:
                conn.request(method, target, headers=hdrs)
                raw = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as err:
                conn.close()
                if reused:
                    continue
                raise ConnectError(f"{parts.netloc}: {_reason(err)}") from err
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                raise ConnectError(f"{parts.netloc}: {_reason(err)}") from err
            if method == "HEAD":
                raw.read()
            return Response(raw, conn, sock, url,
                            lambda c, reusable, key=key: self._release(key, c, reusable))
        raise AssertionError("unreachable")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _origin(url: str) -> tuple[str, str, int]:
    p = urlsplit(url)
    scheme = p.scheme.lower()
    return scheme, (p.hostname or "").lower(), p.port or DEFAULT_PORTS.get(scheme, 0)


def _same_origin(a: tuple, b: tuple) -> bool:
    """The same scheme, host and port; or http on the default port moved to https on its
    default port, on the same host (what requests allows)."""
    if a == b:
        return True
    return a[1] == b[1] and a[0] == "http" and b[0] == "https" and a[2] == 80 and b[2] == 443


def _drain(response: Response) -> None:
    """Read a small body to its end so its connection can be reused; close a large one."""
    try:
        while response._got < DRAIN_LIMIT and response.read1(1 << 16):
            pass
    except OSError:
        pass
    response.close()


def _proxy_auth(proxy: str) -> dict[str, str]:
    p = urlsplit(proxy)
    if p.username is None:
        return {}
    pair = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(pair).decode()}


def _connect_error(err: Exception, host: str, port: int, proxy: str | None) -> ConnectError:
    where = f"{host}:{port}" + (f" through proxy {urlsplit(proxy).netloc}" if proxy else "")
    ssl = sys.modules.get("ssl")        # imported by an https connection only
    if ssl is not None and isinstance(err, ssl.SSLCertVerificationError):
        return TLSError(f"{where}: certificate verify failed: "
                        f"{err.verify_message or err.reason}", verify_failed=True)
    if ssl is not None and isinstance(err, ssl.SSLError):
        return TLSError(f"{where}: TLS handshake failed: {err.reason or err}")
    return ConnectError(f"{where}: {_reason(err)}")


def _reason(err: Exception) -> str:
    """A connection error in a few words."""
    if isinstance(err, socket.gaierror):
        return "host name not found"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    text = str(err)
    if "Tunnel connection failed" in text:
        return f"the proxy refused the tunnel ({text.split(':', 1)[-1].strip()})"
    if "Network is unreachable" in text:
        return "network unreachable"
    return text or type(err).__name__

"""Test harness for the registry tier: a real docker-registry (distribution 2.x) on loopback,
OCI layouts built in the test and pushed with skopeo, certificates made with openssl, a token
server signing RS256 JWTs, and an HTTP proxy that injects faults (cut connections, 503s)."""
from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- OCI layouts


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Layout:
    """An OCI image layout directory (image-layout.md) written blob by blob."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)

    def blob(self, data: bytes, media_type: str) -> dict:
        d = _digest(data)
        with open(os.path.join(self.path, "blobs", "sha256", d[7:]), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": d, "size": len(data)}

    def image(self, layers: list[dict[str, bytes]], arch: str = "amd64",
              variant: str = "") -> dict:
        """Write one image (gzip layers, config, manifest); return the manifest descriptor."""
        descs, diff_ids = [], []
        for files in layers:
            tar = layer_tar(files)
            diff_ids.append(_digest(tar))
            descs.append(self.blob(gzip.compress(tar, mtime=0),
                                   "application/vnd.oci.image.layer.v1.tar+gzip"))
        platform = {"os": "linux", "architecture": arch}
        if variant:
            platform["variant"] = variant
        config = {**platform, "config": {"Cmd": ["/bin/sh"], "Env": [f"ARCH={arch}"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        cdesc = self.blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc,
                    "layers": descs}
        return {**self.blob(json.dumps(manifest).encode(), OCI_MANIFEST), "platform": platform}

    def tag(self, desc: dict, tag: str) -> None:
        entry = dict(desc)
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}, f)

    def index(self, manifests: list[dict], extra: list[dict] = ()) -> dict:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX,
               "manifests": list(manifests) + list(extra)}
        return self.blob(json.dumps(doc).encode(), OCI_INDEX)


def skopeo_push(layout: str, tag: str, dest: str, creds: str | None = None,
                all_platforms: bool = False, fmt: str | None = None) -> None:
    """Push with skopeo; ``fmt="v2s2"`` converts to Docker's schema 2 media types."""
    cmd = ["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", "-q"]
    if fmt:
        cmd += ["--format", fmt]
    if all_platforms:
        cmd.append("--all")
    if creds:
        cmd += ["--dest-creds", creds]
    r = subprocess.run(cmd + [f"oci:{layout}:{tag}", f"docker://{dest}"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"skopeo push to {dest} failed: {r.stderr.strip()}")


# ---------------------------------------------------------------- certificates


def openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_and_server_cert(d: str) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=minictr test CA", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return (os.path.join(d, "ca.crt"), os.path.join(d, "server.crt"),
            os.path.join(d, "server.key"))


# ---------------------------------------------------------------- the registry


class RegistryServer:
    """docker-registry serve CONFIG, bound to 127.0.0.1:PORT with its own storage dir."""

    def __init__(self, workdir: str, *, auth: dict | None = None, tls: tuple | None = None):
        self.workdir = workdir
        self.storage = os.path.join(workdir, "storage")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.tls = tls
        self.proc = None
        http_conf = {"addr": self.host, "secret": "minictr-test"}
        if tls:
            http_conf["tls"] = {"certificate": tls[0], "key": tls[1]}
        conf = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": self.storage},
                            "delete": {"enabled": True}},
                "http": http_conf}
        if auth:
            conf["auth"] = auth
        self.config = os.path.join(workdir, "config.yml")
        with open(self.config, "w") as f:
            json.dump(conf, f)          # YAML is a superset of JSON
        self.log = os.path.join(workdir, "registry.log")

    def start(self) -> None:
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", self.config],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {open(self.log).read()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def blob_data(self, digest: str) -> str:
        hexd = digest.split(":")[1]
        return os.path.join(self.storage, "docker", "registry", "v2", "blobs", "sha256",
                            hexd[:2], hexd, "data")


# ---------------------------------------------------------------- token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A token server per distribution's docs/spec/auth/token.md and jwt.md: it grants push and
    pull to USER:PASSWORD, pull on ``public/*`` to anyone, and nothing else; tokens are RS256
    JWTs whose x5c header carries the certificate the registry's rootcertbundle trusts."""

    def __init__(self, workdir: str, user: str, password: str, service: str, issuer: str):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "token.key", "-out",
                "token.crt", "-days", "2", "-subj", "/CN=minictr token signer", cwd=workdir)
        self.key = os.path.join(workdir, "token.key")
        self.cert = os.path.join(workdir, "token.crt")
        der = subprocess.run(["openssl", "x509", "-in", self.cert, "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.user, self.password, self.service, self.issuer = user, password, service, issuer
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                status, body = server.answer(q, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_port}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, query: dict, authorization: str | None) -> tuple[int, dict]:
        user = None
        if authorization:
            u, _, p = base64.b64decode(authorization.split()[1]).decode().partition(":")
            if (u, p) != (self.user, self.password):
                return 401, {"details": "wrong credentials"}
            user = u
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            allowed = actions.split(",") if user else \
                [a for a in actions.split(",") if a == "pull" and name.startswith("public/")]
            if allowed:
                access.append({"type": kind, "name": name, "actions": allowed})
        self.requests.append({"user": user, "scope": query.get("scope", [])})
        return 200, {"token": self.sign(user or "", access), "expires_in": 300}

    def sign(self, subject: str, access: list) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}." \
                        f"{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key],
                             input=signing_input.encode(), check=True, capture_output=True).stdout
        return f"{signing_input}.{_b64url(sig)}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- fault-injecting proxy


class FaultProxy:
    """An HTTP proxy in front of a registry that records requests and injects faults:

    ``cut_after``: the first ``cuts`` GETs of a blob (whose path contains ``target``, if set)
    send only that many bytes of the body, then close the connection; ``on_cut`` runs at that
    moment (e.g. to kill the registry).
    ``unavailable``: that many first requests get 503 with Retry-After: 0.
    ``strip_range``: forward without the Range header (a registry without range support).
    ``stall_after``: like cut_after, but hold the connection open until ``release`` is set.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.cut_after: int | None = None
        self.cuts = 1                         # how many GETs cut_after applies to
        self.target: str | None = None        # the faults hit only paths containing this
        self.stall_after: int | None = None
        self.on_cut = None
        self.unavailable = 0
        self.strip_range = False
        self.release = threading.Event()
        self.stalled = threading.Event()
        self.log: list[tuple[str, str, str | None, int]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                proxy.handle(self)

            def do_HEAD(self):
                proxy.handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_port
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _reply(self, h, status: int, headers: dict, body: bytes = b"") -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h) -> None:
        rng = h.headers.get("Range")
        is_blob = "/blobs/" in h.path and h.command == "GET" and \
            (self.target is None or self.target in h.path)
        with self._lock:
            fault = None
            if self.unavailable > 0:
                self.unavailable -= 1
                fault = "503"
            elif is_blob and self.cut_after is not None and self.cuts > 0:
                fault, limit = "cut", self.cut_after
                self.cuts -= 1
            elif is_blob and not rng and self.stall_after is not None:
                fault, limit, self.stall_after = "stall", self.stall_after, None
        if fault == "503":
            self.log.append((h.command, h.path, rng, 503))
            return self._reply(h, 503, {"Retry-After": "0"})
        headers = {k: v for k, v in h.headers.items()
                   if k.lower() not in ("host", "connection") and
                   not (self.strip_range and k.lower() == "range")}
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
            conn.request(h.command, h.path, headers=headers)
            up = conn.getresponse()
        except OSError:
            self.log.append((h.command, h.path, rng, 502))
            return self._reply(h, 502, {})
        self.log.append((h.command, h.path, rng, up.status))
        h.send_response(up.status)
        for k, v in up.getheaders():
            if k.lower() not in ("connection", "transfer-encoding"):
                h.send_header(k, v)
        h.end_headers()
        sent = 0
        limit = limit if fault else None
        while True:
            chunk = up.read(65536)
            if not chunk:
                break
            if limit is not None and sent + len(chunk) >= limit:
                h.wfile.write(chunk[:limit - sent])
                h.wfile.flush()
                if fault == "stall":
                    self.stalled.set()
                    self.release.wait(60)
                elif self.on_cut:
                    self.on_cut()
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                break
            h.wfile.write(chunk)
            sent += len(chunk)
        conn.close()

    def blob_gets(self) -> list[tuple[str, str | None, int]]:
        return [(p, r, s) for m, p, r, s in self.log if m == "GET" and "/blobs/" in p]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def http_get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


# Shared by the conftest and the tests. They live here, not in conftest.py: several tiers have a
# conftest.py, and `from conftest import ...` gets whichever was imported first.
USER, PASSWORD = "alice", "s3cret-pass"
BIG = 3 << 20       # an incompressible layer big enough to cut mid-transfer


def make_store(root: str):
    from minictr.image.store import Store

    return Store(root)


def push(layout, registry_host: str, repo: str, tag: str = "v1", creds=None) -> None:
    skopeo_push(layout["layouts"][tag], tag, f"{registry_host}/{repo}:{tag}", creds=creds,
                all_platforms=(tag == "multi"))

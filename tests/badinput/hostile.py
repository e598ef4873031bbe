"""A registry that misbehaves on purpose, on 127.0.0.1, one behaviour per server:

    with HostileRegistry("drip") as reg:
        ... minictr pull {reg.host}/any/repo:tag ...

Behaviours (``MODES``): what the issue 13 sweep found hanging or crashing `pull` and `login`,
and their neighbours. Plain HTTP/1.1 with hand-written replies (http.server's helpers would
fix what these replies get wrong on purpose).
"""
from __future__ import annotations

import http.server
import json
import socket
import threading
import time

MANIFEST = json.dumps({"schemaVersion": 2,
                       "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": "sha256:" + "a" * 64, "size": 10},
                       "layers": []}).encode()
MODES = {
    "drip": "the manifest, one byte every 0.5 s (a per-read timeout never fires)",
    "drip-headers": "the status line and headers, one byte every 0.5 s",
    "stall": "the manifest's headers, then nothing, the connection held open",
    "redirect-loop": "every manifest request redirected to itself",
    "short-body": "a Content-Length of 5000 for a 100-byte body, then the connection closed",
    "deep-json": "a manifest of 100000 nested arrays",
    "huge-manifest": "a manifest of 5 MiB (the limit is 4 MiB)",
    "not-json": "a manifest that is not JSON",
    "garbage-retry-after": "503 with Retry-After: soon, forever",
    "bad-token": "a Bearer challenge whose token server answers a JSON list",
    "token-newline": "a token server whose token holds a newline",
    "bad-challenge": "401 with an unparseable WWW-Authenticate",
    "401-no-challenge": "401 to everything, without WWW-Authenticate",
    "refuse-all": "a token for any credentials, then 401 to every request with it",
    "basic-refuse": "a Basic challenge, 401 to any credentials",
    "403": "403 to everything",
    "500": "500 to everything",
}


class HostileRegistry:
    def __init__(self, mode: str):
        assert mode in MODES, mode
        self.mode = mode
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                try:
                    outer.handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------ replies

    def reply(self, h, status: int, body: bytes = b"", headers: dict | None = None,
              length: int | None = None) -> None:
        head = [f"HTTP/1.1 {status} X"]
        for k, v in {"Content-Length": str(len(body) if length is None else length),
                     "Content-Type": "application/vnd.oci.image.manifest.v1+json",
                     **(headers or {})}.items():
            head.append(f"{k}: {v}")
        h.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        h.wfile.flush()

    def drip(self, h, data: bytes) -> None:
        for i in range(len(data)):
            if self.stopping.wait(0.5):
                return
            h.wfile.write(data[i:i + 1])
            h.wfile.flush()

    def handle(self, h) -> None:
        mode, path = self.mode, h.path
        auth = h.headers.get("Authorization")
        if mode in ("401-no-challenge", "403", "500"):
            return self.reply(h, int(mode[:3]), b"{}", {"Connection": "close"})
        if mode == "bad-challenge":
            return self.reply(h, 401, b"", {"WWW-Authenticate": '=,="\\'})
        if mode in ("bad-token", "token-newline", "refuse-all"):
            realm = f"http://{self.host}/token"
            if path.startswith("/token"):
                token = {"bad-token": [1], "token-newline": {"token": "a\nb"},
                         "refuse-all": {"token": "granted"}}[mode]
                return self.reply(h, 200, json.dumps(token).encode(),
                                  {"Content-Type": "application/json"})
            return self.reply(h, 401, b"", {"WWW-Authenticate":
                                            f'Bearer realm="{realm}",service="hostile"'})
        if mode == "basic-refuse":
            return self.reply(h, 401, b"", {"WWW-Authenticate": 'Basic realm="hostile"'})
        if path == "/v2/":
            return self.reply(h, 200, b"{}")
        if mode == "drip":
            self.reply(h, 200, b"", length=len(MANIFEST))
            return self.drip(h, MANIFEST)
        if mode == "drip-headers":
            return self.drip(h, b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"x" * 200 + b"\r\n\r\n")
        if mode == "stall":
            self.reply(h, 200, b"", length=len(MANIFEST))
            self.stopping.wait(600)
            return
        if mode == "redirect-loop":
            return self.reply(h, 302, b"", {"Location": path})
        if mode == "short-body":
            self.reply(h, 200, MANIFEST[:100], {"Connection": "close"}, length=5000)
            h.close_connection = True
            with_socket = h.connection
            with_socket.shutdown(socket.SHUT_RDWR)
            return
        if mode == "deep-json":
            return self.reply(h, 200, b"[" * 100_000)
        if mode == "huge-manifest":
            return self.reply(h, 200, b" " * (5 << 20) + MANIFEST)
        if mode == "not-json":
            return self.reply(h, 200, b"<html>hello</html>")
        if mode == "garbage-retry-after":
            return self.reply(h, 503, b"", {"Retry-After": "soon"})
        raise AssertionError(mode)


if __name__ == "__main__":       # a manual check: python tests/badinput/hostile.py MODE
    import sys

    with HostileRegistry(sys.argv[1]) as r:
        print(r.host, flush=True)
        time.sleep(3600)

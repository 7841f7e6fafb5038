"""A fault-injecting HTTP reverse proxy for S3 tests: 127.0.0.1 -> a real moto server.

    proxy = FaultProxy(moto.endpoint, decide=random_faults(seed=1, rate=0.2)).start()
    ... point the client at proxy.url ...
    proxy.faults      # [(method, path, kind), ...] what was injected
    proxy.stop()      # listener closed and open connections cut: "connection refused"
    proxy.start()     # back on the same port, moto's state untouched

Per request `decide(method, path, n) -> kind | None` (n = 0-based request count) picks
a fault; `on_request(method, path)` runs first (e.g. kill the upstream mid-run). Kinds:
- "500": 500 InternalError, not forwarded
- "503": 503 SlowDown (S3's throttling reply), not forwarded
- "drop": the request is read, the connection closed without a reply, not forwarded
- "drop_after": forwarded (a PUT lands), then the connection closed without the reply
A request the upstream refuses (it was killed) is dropped like "drop".
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Decide = Callable[[str, str, int], str | None]
KINDS = ("500", "503", "drop", "drop_after")
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}


def random_faults(
    seed: int, rate: float, kinds: Iterable[str] = KINDS, methods: Iterable[str] | None = None
) -> Decide:
    """A seeded fraction `rate` of requests (of `methods`, default all) get a random kind."""
    rng = random.Random(seed)
    kinds, only = list(kinds), set(methods) if methods else None
    lock = threading.Lock()

    def decide(method: str, path: str, n: int) -> str | None:
        if only is not None and method not in only:
            return None
        with lock:  # one RNG stream, whatever the thread interleaving
            return rng.choice(kinds) if rng.random() < rate else None

    return decide


def always(kind: str, methods: Iterable[str] | None = None, path_contains: str = "") -> Decide:
    """Every request of `methods` (default all) whose path contains `path_contains` fails."""
    only = set(methods) if methods else None

    def decide(method: str, path: str, n: int) -> str | None:
        if (only is None or method in only) and path_contains in path:
            return kind
        return None

    return decide


class FaultProxy:
    def __init__(self, upstream: str, decide: Decide | None = None, port: int = 0):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.decide: Decide = decide or (lambda m, p, n: None)
        self.on_request: Callable[[str, str], None] | None = None
        self.port = port
        self.count = 0
        self.faults: list[tuple[str, str, str]] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def heal(self) -> None:
        self.decide = lambda m, p, n: None

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True, name="s3-fault-proxy").start()
        return self

    def stop(self) -> None:
        """Close the listener and cut every open connection (the endpoint is gone)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def _pick(self, method: str, path: str) -> str | None:
        with self._lock:
            n = self.count
            self.count += 1
            self.requests.append((method, path))
        if self.on_request is not None:
            self.on_request(method, path)
        kind = self.decide(method, path, n)
        if kind is not None:
            with self._lock:
                self.faults.append((method, path, kind))
        return kind


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._conns.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._conns.discard(self.connection)
        super().finish()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        kind = self.owner._pick(self.command, self.path)
        if kind in _ERRORS:
            status, code, msg = _ERRORS[kind]
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{msg}</Message><RequestId>fault-proxy</RequestId></Error>"
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(xml)
            return
        if kind == "drop":
            self.close_connection = True
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            headers["Content-Length"] = str(len(body))
        try:
            conn = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
        except OSError:
            self.close_connection = True  # upstream gone: the client sees the connection drop
            return
        if kind == "drop_after":
            self.close_connection = True
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP | {"content-length", "server", "date"}:
                self.send_header(k, v)
        length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


__all__ = ["FaultProxy", "random_faults", "always", "KINDS"]

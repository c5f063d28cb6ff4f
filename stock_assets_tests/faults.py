"""Fault injection on real network paths: an HTTP proxy in front of moto, a TCP proxy in front
of PostgreSQL. The pipeline talks to them exactly as it talks to the real endpoints; the proxies
fail, slow down or cut the traffic on demand. Nothing of the pipeline's own code is mocked.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


# S3's answer when it refuses an object (status 403).
ACCESS_DENIED = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"


@dataclass
class HttpFault:
    """Which requests to hit (method and a substring of the path) and how, `times` at most."""

    method: str | None = None
    path_contains: str | None = None
    status: int | None = None  # answer with this status instead of forwarding
    body: bytes | None = None  # the error document to answer with (default: S3's XML shape)
    delay: float = 0.0  # wait this long before answering
    drop: bool = False  # close the connection without an answer
    corrupt: bool = False  # forward, then flip the answer's first byte (headers kept)
    truncate: bool = False  # forward the headers, then half the body, then close the connection
    stall: float = 0.0  # forward the headers, then wait this long before the body
    times: int | None = None  # None: every matching request
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method and method != self.method:
            return False
        return not (self.path_contains and self.path_contains not in path)


class _QuietServer(ThreadingHTTPServer):
    """A client that gave up (its timeout, the point of a slow fault) closes the connection
    while the answer is still being written: expected here, not worth a traceback."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class FaultyHttpProxy:
    upstream: str
    faults: list[HttpFault] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    # The headers of each request, in the order of `requests`, names in lower case.
    request_headers: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FaultyHttpProxy:
        proxy = self
        target = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sent = {k.lower(): v for k, v in self.headers.items()}
                fault = proxy._claim(self.command, self.path, sent)
                if fault and fault.delay:
                    time.sleep(fault.delay)
                if fault and fault.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault and fault.status:
                    payload = fault.body or (
                        b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
                    )
                    self.send_response(fault.status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                if fault and fault.corrupt and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault and fault.stall:
                    self.wfile.flush()
                    time.sleep(fault.stall)
                if fault and fault.truncate and data:
                    self.wfile.write(data[: len(data) // 2])  # short of its Content-Length
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _claim(self, method: str, path: str, headers: dict[str, str]) -> HttpFault | None:
        with self._lock:
            self.requests.append((method, path))
            self.request_headers.append(headers)
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class TcpToUnixProxy:
    """TCP on loopback → a PostgreSQL Unix socket. `on_bytes(n)` is called as client→server
    traffic flows; it may call `cut()` to drop every connection mid-stream. `cut_before`: the
    first client message holding these bytes is not sent; every connection is cut instead."""

    socket_path: str
    on_bytes: Callable[[TcpToUnixProxy, int], None] | None = None
    cut_before: bytes | None = None
    client_bytes: int = 0
    _connections: list[socket.socket] = field(default_factory=list)

    def start(self) -> TcpToUnixProxy:
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.socket_path)
            self._connections += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                if upstream and self.cut_before and self.cut_before in data:
                    self.cut()
                    return
                sink.sendall(data)
                if upstream:
                    self.client_bytes += len(data)
                    if self.on_bytes:
                        self.on_bytes(self, self.client_bytes)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every proxied connection at once, as a network failure would."""
        for sock in self._connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass

    def stop(self) -> None:
        self.cut()
        self._listener.close()

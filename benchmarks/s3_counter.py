"""`python -m benchmarks.s3_counter <upstream>`: a counting HTTP proxy in front of moto.

The scaling series points a run's `AWS_ENDPOINT_URL` here to count its S3 requests (by method,
and the GETs of `Stocks/` apart) and the bytes each way. Unlike the fault proxy of the tests
(`stock_assets_tests/faults.py`), it streams bodies through in 1 MiB blocks: at 10× a shard's
part is hundreds of MB, which a buffering proxy would hold in memory and delay past the
client's read timeout. It runs as its own process so that its CPU is measured apart from the
run's (it prints `PORT <n>` once listening). `GET /__counts__` answers the counts so far as
JSON; `?reset=1` also zeroes them.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
BLOCK = 1 << 20
CONTROL_PATH = "/__counts__"


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()  # request bodies, by method
        self.bytes_received: Counter[str] = Counter()  # response bodies, by method

    def add(self, kind: str, sent: int, received: int) -> None:
        with self.lock:
            self.requests[kind] += 1
            self.bytes_sent[kind] += sent
            self.bytes_received[kind] += received

    def snapshot(self, reset: bool) -> dict[str, Any]:
        with self.lock:
            data = {
                "requests": dict(self.requests),
                "total_requests": sum(self.requests.values()),
                "request_body_bytes": dict(self.bytes_sent),
                "response_body_bytes": dict(self.bytes_received),
            }
            if reset:
                self.reset()
        return data


def _kind(method: str, path: str) -> str:
    """The method, with the reads of the stock files and multipart calls told apart."""
    query = urlsplit(path).query
    if method == "GET" and "/Stocks/" in path:
        return "GET Stocks/"
    if method == "PUT" and "partNumber=" in query:
        return "PUT part"
    if method == "POST" and "uploads" in query:
        return "POST multipart"
    return method


def serve(upstream: str) -> ThreadingHTTPServer:
    target = urlsplit(upstream)
    counts = Counts()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        _upstream: http.client.HTTPConnection | None = None

        def log_message(self, *args: object) -> None:
            pass

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _control(self) -> None:
            payload = json.dumps(counts.snapshot("reset=1" in self.path)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _handle(self) -> None:
            if self.path.startswith(CONTROL_PATH):
                self._control()
                return
            body = self._read_body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            headers["Content-Length"] = str(len(body))
            # One upstream connection per client connection, kept alive like the client's.
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(
                    target.hostname, target.port, timeout=120
                )
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                response = self._upstream.getresponse()
            except (OSError, http.client.HTTPException):
                self._upstream.close()  # a stale kept-alive connection: one fresh try
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                response = self._upstream.getresponse()
            length = response.getheader("Content-Length")
            data = None if length is not None else response.read()  # chunked: buffered
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data) if data is not None else length))
            self.end_headers()
            received = 0
            if self.command != "HEAD":
                if data is not None:
                    self.wfile.write(data)
                    received = len(data)
                else:
                    while block := response.read(BLOCK):
                        self.wfile.write(block)
                        received += len(block)
            response.read()  # drain (HEAD), so the upstream connection can be reused
            counts.add(_kind(self.command, self.path), len(body), received)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str]) -> int:
    server = serve(argv[0])
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

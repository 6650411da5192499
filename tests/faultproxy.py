"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the moto S3 server: 503 SlowDown, connection resets, slow
responses, and a PUT that reaches the server but whose answer never reaches the client.

    with MotoServer() as s3, FaultProxy(s3.endpoint_url) as proxy:
        proxy.add_fault("GET", r"/raw/", "503", times=3)
        env = {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint_url}

A fault fires on the first `times` requests that match its method and path pattern (then it is spent), or, with
`every`, on every n-th matching request for the whole run. `proxy.log` records (method, path, fault or None).
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class Fault:
    method: str
    pattern: re.Pattern
    kind: str  # "503", "reset", "slow", "put_lost_answer"
    times: int = 1
    every: int = 0
    seconds: float = 0.0
    seen: int = 0
    fired: int = 0

    def fires(self, method: str, path: str) -> bool:
        if method != self.method or not self.pattern.search(path):
            return False
        self.seen += 1
        if self.every:
            hit = self.seen % self.every == 0
        else:
            hit = self.fired < self.times
        if hit:
            self.fired += 1
        return hit


class FaultProxy:
    def __init__(self, upstream: str):
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_fault(self, method: str, path_regex: str, kind: str, times: int = 1, every: int = 0,
                  seconds: float = 0.0) -> Fault:
        fault = Fault(method, re.compile(path_regex), kind, times, every, seconds)
        with self._lock:
            self.faults.append(fault)
        return fault

    def fired(self, kind: str) -> int:
        return sum(1 for _, _, k in self.log if k == kind)

    # -- serving -----------------------------------------------------------------------------------------------------
    def _choose(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.fires(method, path):
                    return fault
        return None

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        body = _read_body(req)
        fault = self._choose(req.command, req.path)
        with self._lock:
            self.log.append((req.command, req.path, fault.kind if fault else None))
        if fault and fault.kind == "503":
            _answer(req, 503, SLOW_DOWN, {"Content-Type": "application/xml"})
            return
        if fault and fault.kind == "reset":
            _reset(req)
            return
        if fault and fault.kind == "slow":
            time.sleep(fault.seconds)
        status, headers, data = self._forward(req, body)
        if fault and fault.kind == "put_lost_answer":
            _reset(req)  # the server has the object; the client never hears so
            return
        _answer(req, status, data, headers)

    def _forward(self, req: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP_HEADERS}
            if body or req.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(req.command, req.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = b"" if req.command == "HEAD" else resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_HEADERS | {"content-length"}}
            if req.command == "HEAD":
                out["Content-Length"] = resp.getheader("Content-Length", "0")
            return resp.status, out, data
        finally:
            conn.close()

    # -- lifetime ----------------------------------------------------------------------------------------------------
    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _read_body(req: BaseHTTPRequestHandler) -> bytes:
    if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(req.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while req.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(req.rfile.read(size))
            req.rfile.readline()
    length = int(req.headers.get("Content-Length") or 0)
    return req.rfile.read(length) if length else b""


def _answer(req: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict) -> None:
    req.send_response(status)
    for key, value in headers.items():
        req.send_header(key, value)
    if "Content-Length" not in headers:
        req.send_header("Content-Length", str(len(data)))
    req.end_headers()
    if req.command != "HEAD":
        req.wfile.write(data)


def _reset(req: BaseHTTPRequestHandler) -> None:
    """A TCP reset, not a clean close: SO_LINGER 0 makes close() send RST, as a dropped load balancer does."""
    req.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    req.close_connection = True
    req.connection.close()

"""`actcurate review OUT`: the local review web app (stdlib ThreadingHTTPServer, no framework).

Reads go through manifests.clip_index (server-side filters and pages); verdicts go to manifests.reviews (append-only
Parquet under OUT/reviews/). Writes need the token printed at start-up. The server serves only: its own page, JSON,
the source videos named in the manifests (looked up by video id, never by a path from the request), frames
decoded from them, and files inside OUT.
"""

from __future__ import annotations

import hmac
import json
import mimetypes
import os
import posixpath
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from manifests import reviews
from manifests.clip_index import ClipIndex, Filters, QueryError
from pipeline.storage import filesystem_and_path, is_s3, normalize_uri

CHUNK = 256 * 1024
VIDEO_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/mp4", ".webm": "video/webm",
               ".mkv": "video/webm", ".ogv": "video/ogg", ".avi": "video/x-msvideo"}


class ReviewApp:
    def __init__(self, output: str, token: str | None = None):
        self.index = ClipIndex(output)
        self.store = self.index.store
        self.token = token or secrets.token_urlsafe(16)
        self.write_lock = threading.Lock()
        self.loopback = False  # set by make_server

    # -- API -----------------------------------------------------------------------------------------------------
    def clips(self, q: dict) -> dict:
        sort = q.get("sort", ["clip_id"])[0] or "clip_id"
        after = json.loads(q["after"][0]) if q.get("after", [""])[0] else None
        return self.index.page(Filters.from_query(q), sort=sort, descending=q.get("order", ["asc"])[0] == "desc",
                               after=tuple(after) if after else None, limit=int(q.get("limit", ["50"])[0]))

    def add_reviews(self, body: dict) -> dict:
        records = body.get("reviews") if isinstance(body.get("reviews"), list) else [body]
        for r in records:
            if not isinstance(r, dict) or r.get("clip_id") not in self.index._row_of:
                raise reviews.ReviewError(f"unknown clip {r.get('clip_id')!r}")
        with self.write_lock:
            path = reviews.append_reviews(self.store, records)
            self.index.refresh_reviews()
        return {"written": path, "records": len(records)}

    def video_source(self, video_id: str) -> str | None:
        return self.index.videos.get(video_id)

    def out_file(self, rel: str) -> str | None:
        """A local file inside OUT, or None: the real path (links resolved) must stay under OUT's real path."""
        if is_s3(self.store.root):
            return None
        root = os.path.realpath(self.store.root)
        path = os.path.realpath(os.path.join(root, rel))
        if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
            return None
        return path


class Handler(BaseHTTPRequestHandler):
    app: ReviewApp
    protocol_version = "HTTP/1.1"
    server_version = "actcurate-review"

    def setup(self):
        super().setup()
        # headers and body go out as two writes: without this, Nagle's algorithm holds the body until the client's
        # delayed ACK of the headers (40 ms on Linux) on every keep-alive request
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # quiet: a page load is dozens of requests
        pass

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj, default=str, allow_nan=False).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _host_ok(self) -> bool:
        """Bound to loopback, answer only requests addressed to loopback: a web page elsewhere cannot read the
        app through DNS rebinding (its Host header names its own domain)."""
        if not self.app.loopback:
            return True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        return host in ("127.0.0.1", "localhost", "::1")

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        if not self._host_ok():
            return self._error(403, "wrong Host for a server bound to loopback")
        url = urlsplit(self.path)
        q = parse_qs(url.query, keep_blank_values=True)
        path = url.path
        try:
            if path in ("/", "/index.html") or path.startswith("/clip/"):
                from pipeline.review_ui import PAGE

                return self._send(200, PAGE.encode(), "text/html; charset=utf-8",
                                  {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                   "style-src 'unsafe-inline'; script-src 'unsafe-inline'; media-src 'self'"})
            if path == "/favicon.ico":
                return self._send(204, b"", "image/x-icon")
            if path == "/api/meta":
                return self._json(self.app.index.meta())
            if path == "/api/clips":
                return self._json(self.app.clips(q))
            if path == "/api/hist":
                return self._json(self.app.index.histogram(q.get("col", [""])[0], Filters.from_query(q)))
            if path == "/api/queue":
                ids = self.app.index.queue(q.get("kind", ["random"])[0], Filters.from_query(q),
                                           n=int(q.get("n", ["50"])[0]), column=q.get("col", [None])[0],
                                           seed=int(q.get("seed", ["0"])[0] or 0))
                return self._json({"clip_ids": ids})
            if path.startswith("/api/clip/"):
                clip = self.app.index.clip(unquote(path[len("/api/clip/"):]))
                return self._json(clip) if clip else self._error(404, "no such clip")
            if path == "/api/reviews":
                return self._json(reviews.summary(self.app.store))
            if path.startswith("/video/"):
                return self._video(unquote(path[len("/video/"):]))
            if path.startswith("/frame/"):
                return self._frame(unquote(path[len("/frame/"):]), q)
            if path.startswith("/out/"):
                return self._out_file(unquote(path[len("/out/"):]))
            return self._error(404, "not found")
        except (QueryError, ValueError, reviews.ReviewError) as exc:
            return self._error(400, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            return None

    def do_POST(self):
        if not self._host_ok():
            return self._error(403, "wrong Host for a server bound to loopback")
        url = urlsplit(self.path)
        if url.path != "/api/reviews":
            return self._error(404, "not found")
        sent = self.headers.get("X-Review-Token", "")
        if not hmac.compare_digest(sent.encode(), self.app.token.encode()):
            return self._error(403, "a write needs the review token printed when the server started")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > 1 << 20:
                return self._error(413, "request too large")
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                return self._error(400, "expected a JSON object")
            return self._json(self.app.add_reviews(body))
        except (ValueError, reviews.ReviewError) as exc:
            return self._error(400, str(exc))

    # -- files ---------------------------------------------------------------------------------------------------
    def _video(self, video_id: str) -> None:
        """The source video by id, with HTTP range requests (the player seeks to the clip's start)."""
        uri = self.app.video_source(video_id)
        if uri is None:
            return self._error(404, "no such video")
        ctype = VIDEO_TYPES.get(posixpath.splitext(uri)[1].lower(), "application/octet-stream")
        try:
            if is_s3(uri):
                fs, p = filesystem_and_path(uri)
                handle = fs.open_input_file(p)
                size = handle.size()
                read = lambda off, n: handle.read_at(n, off)  # noqa: E731
            else:
                handle = open(normalize_uri(uri), "rb")
                size = os.fstat(handle.fileno()).st_size

                def read(off, n):
                    handle.seek(off)
                    return handle.read(n)
        except OSError:
            return self._error(404, "source video unreadable")
        with handle:
            start, end = 0, size - 1
            rng = self.headers.get("Range")
            status = 200
            if rng:
                parsed = _parse_range(rng, size)
                if parsed is None:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                start, end = parsed
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return None
            pos = start
            while pos <= end:
                data = read(pos, min(CHUNK, end - pos + 1))
                if not data:
                    break
                self.wfile.write(data)
                pos += len(data)
        return None

    def _frame(self, clip_id: str, q: dict) -> None:
        from manifests.report import frame_jpeg

        i = self.app.index._row_of.get(clip_id)
        if i is None:
            return self._error(404, "no such clip")
        uri = self.app.index.table.column("video_uri")[i].as_py()
        t = float(q.get("t", ["0"])[0])
        width = max(64, min(int(q.get("w", ["640"])[0]), 1280))
        data = frame_jpeg(uri, t, width=width, quality=85)
        return self._send(200, data, "image/jpeg") if data else self._error(404, "no frame")

    def _out_file(self, rel: str) -> None:
        path = self.app.out_file(rel)
        if path is None:
            return self._error(404, "not found")
        with open(path, "rb") as f:
            data = f.read()
        return self._send(200, data, mimetypes.guess_type(path)[0] or "application/octet-stream")


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One byte range (the only kind players send): bytes=a-b, bytes=a-, bytes=-n."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return None
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def make_server(output: str, host: str = "127.0.0.1", port: int = 8765, token: str | None = None
                ) -> tuple[ThreadingHTTPServer, ReviewApp]:
    from pipeline.errors import UserError
    from pipeline.plan import read_plan_summary
    from pipeline.storage import Store

    if read_plan_summary(Store(output)) is None:
        raise UserError(f"{output} is not an actcurate output (no plan/plan.json); run `actcurate run` first")
    app = ReviewApp(output, token)
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    app.loopback = host in ("127.0.0.1", "localhost", "::1")
    return server, app

"""A real HTTP forward proxy on 127.0.0.1, in its own thread and event loop, for the model client's proxy support.

It does what squid or tinyproxy do for the requests our clients make: CONNECT tunnels (https endpoints) and
absolute-form requests (http endpoints, kept alive: each request is parsed, rewritten to origin form and its
response relayed by Content-Length or chunks). With `credentials` it answers 407 unless Proxy-Authorization matches.
It records what it was asked (method, target, the credentials it got), never how it was answered.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from urllib.parse import urlsplit


class ForwardProxy:
    def __init__(self, credentials: tuple[str, str] | None = None):
        self.expected = None
        if credentials:
            self.expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, target, Proxy-Authorization or None)
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Close the listener and end the open connections' handlers while the loop still runs."""
        self._server.close()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, version = request_line.split(" ", 2)
                headers = {}
                for line in header_lines:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                auth = headers.get("proxy-authorization")
                self.requests.append((method, target, auth))
                if self.expected is not None and auth != self.expected:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                 b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    return
                if method == "CONNECT":
                    host, port = target.rsplit(":", 1)
                    up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                    return
                parts = urlsplit(target)
                if upstream is None:
                    upstream = await asyncio.open_connection(parts.hostname, parts.port or 80)
                up_reader, up_writer = upstream
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                origin_form = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                kept = [line for line in header_lines if line and not line.lower().startswith("proxy-")]
                up_writer.write(f"{method} {origin_form} {version}\r\n".encode("latin-1")
                                + "".join(f"{line}\r\n" for line in kept).encode("latin-1") + b"\r\n" + body)
                await up_writer.drain()
                writer.write(await _response(up_reader))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.CancelledError):
            pass  # a cancelled handler ends quietly: Python 3.11 logs a handler task that ends cancelled
        finally:
            writer.close()
            if upstream is not None:
                upstream[1].close()


async def _response(reader: asyncio.StreamReader) -> bytes:
    """One whole response as the upstream sent it (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        out = [head]
        while True:
            size_line = await reader.readline()
            out.append(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            out.append(await reader.readexactly(size + 2))
            if size == 0:
                return b"".join(out)
    length = 0
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass
    finally:
        writer.close()

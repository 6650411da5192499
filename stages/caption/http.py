"""A small HTTP/1.1 client over asyncio streams for the model endpoints' JSON POSTs (the hot path of every call).

Why not httpx: at 64-256 requests in flight its per-request CPU (request/response models, the pool scanning every
connection with a syscall per request) was most of a call's client CPU, several times this client's
(bench/caption_client.py). What a model call needs is small: POST a JSON body (and, for Gemini's Files API, a
few other requests), read one response with Content-Length, chunked or until close, keep the connection alive.
http and https, directly or through the http:// proxy the environment names (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY,
NO_PROXY; see `proxy_for`); no redirects, no compression (none is asked for). Preflight's single GET stays on httpx, given the same proxy.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pipeline.proxies import Proxy, UnsupportedProxy, authority, origin_of, proxy_for

MAX_HEADER_LINES = 200


class HttpTimeout(Exception):
    """The request did not complete within the timeout (connect, send and the whole response)."""


class HttpTransportError(Exception):
    """The connection failed or the server broke the protocol."""


@dataclass
class Response:
    status_code: int
    headers: dict[str, str]  # names lower-cased
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _Stale(Exception):
    """A kept-alive connection the server had closed: nothing was answered, so the request goes on a new one."""


class HttpClient:
    """Keeps idle connections per origin; the caller bounds how many requests are in flight."""

    def __init__(self, timeout_s: float, headers: dict[str, str]):
        self.timeout_s = timeout_s
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in {"Accept": "application/json", **headers}.items())
        self._idle: dict[tuple[str, str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._proxies: dict[tuple[str, str, int], Proxy | None] = {}  # per origin, from the environment at first use

    async def post_json(self, url: str, payload: Any) -> Response:
        return await self.request("POST", url, json.dumps(payload, separators=(",", ":")).encode(),
                                  {"Content-Type": "application/json"})

    async def request(self, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
                      ) -> Response:
        """One request with `body` (Content-Length always sent) and headers beyond the client's own."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpTransportError(f"not an http(s) URL: {parts.scheme}://{parts.hostname}")
        origin = origin_of(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rsplit("@", 1)[-1]
        proxy = self.proxy(origin)
        proxy_header = ""
        if proxy is not None and parts.scheme == "http":  # a plain request goes to the proxy in absolute form
            target = f"http://{host}{target}"
            proxy_header = f"Proxy-Authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}"
                f"Content-Length: {len(body)}\r\n{proxy_header}{self.headers}\r\n").encode("latin-1")
        via = f" (via proxy {proxy.name})" if proxy is not None else ""
        try:
            # wait_for, not asyncio.timeout: the package supports Python 3.10
            return await asyncio.wait_for(self._send(origin, head + body), self.timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            raise HttpTimeout(f"no complete answer within {self.timeout_s:g} s{via}") from None
        except HttpTransportError as exc:
            raise HttpTransportError(f"{exc}{via}") from None
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            raise HttpTransportError(f"{type(exc).__name__}: {exc}{via}") from None

    def proxy(self, origin: tuple[str, str, int]) -> Proxy | None:
        if origin not in self._proxies:
            try:
                self._proxies[origin] = proxy_for(*origin)
            except UnsupportedProxy as exc:  # preflight refuses such a run first (a UserError)
                raise HttpTransportError(str(exc)) from None
        return self._proxies[origin]

    async def _send(self, origin, request: bytes) -> Response:
        while True:
            reused, (reader, writer) = await self._connection(origin)
            try:
                response, keep = await self._exchange(reader, writer, request, reused)
            except _Stale:
                _close(writer)
                continue
            except BaseException:  # a failed, timed-out or cancelled exchange leaves the connection unusable
                _close(writer)
                raise
            if keep:
                self._idle.setdefault(origin, []).append((reader, writer))
            else:
                _close(writer)
            return response

    async def _connection(self, origin):
        idle = self._idle.get(origin)
        while idle:
            reader, writer = idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return True, (reader, writer)
            _close(writer)
        scheme, hostname, port = origin
        if scheme == "https" and self._ssl is None:
            import httpx2  # the CA bundle httpx (preflight) verifies with, so both trust the same servers

            self._ssl = httpx2.create_ssl_context()
        proxy = self.proxy(origin)
        if proxy is None:
            return False, await asyncio.open_connection(hostname, port, ssl=self._ssl if scheme == "https" else None)
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        if scheme == "https":
            try:
                await _tunnel(reader, writer, proxy, authority(hostname, port))
                writer = await _start_tls(reader, writer, self._ssl, hostname)
            except BaseException:
                _close(writer)
                raise
        return False, (reader, writer)

    async def _exchange(self, reader, writer, request: bytes, reused: bool) -> tuple[Response, bool]:
        try:
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
        except (ConnectionError, asyncio.IncompleteReadError):
            if reused:
                raise _Stale() from None
            raise
        if not status_line:
            if reused:
                raise _Stale()
            raise HttpTransportError("the server closed the connection without an answer")
        version, status = status_line.split(None, 2)[:2]
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            raise HttpTransportError("too many header lines")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int((await reader.readline()).split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            content, complete = b"".join(chunks), True
        elif "content-length" in headers:
            content, complete = await reader.readexactly(int(headers["content-length"])), True
        else:
            content, complete = await reader.read(), False  # until the server closes
        keep = complete and version == b"HTTP/1.1" and headers.get("connection", "").lower() != "close"
        return Response(int(status), headers, content), keep

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for _, writer in idle:
                _close(writer)
        self._idle.clear()


async def _tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: Proxy, authority: str) -> None:
    """Ask the proxy for a TCP tunnel to `authority` (HTTP CONNECT); TLS to the endpoint then runs inside it."""
    auth = f"Proxy-Authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
    writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{auth}\r\n".encode("latin-1"))
    await writer.drain()
    status_line = await reader.readline()
    for _ in range(MAX_HEADER_LINES):
        if (await reader.readline()) in (b"\r\n", b"\n", b""):
            break
    status = status_line.split(None, 2)[1:2]
    if status != [b"200"]:
        answer = status_line.decode("latin-1").strip() or "closed the connection"
        raise HttpTransportError(f"the proxy refused a tunnel to {authority}: {answer[:80]}")


async def _start_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext,
                     hostname: str) -> asyncio.StreamWriter:
    """TLS over an open connection (the proxy's tunnel), checked against the endpoint's own name."""
    if hasattr(writer, "start_tls"):  # Python 3.11+
        await writer.start_tls(context, server_hostname=hostname)
        return writer
    loop = asyncio.get_running_loop()  # Python 3.10: what 3.11's StreamWriter.start_tls does
    protocol = writer.transport.get_protocol()
    transport = await loop.start_tls(writer.transport, protocol, context, server_hostname=hostname)
    upgraded = asyncio.StreamWriter(transport, protocol, reader, loop)
    protocol._stream_writer, protocol._transport, protocol._over_ssl = upgraded, transport, True
    return upgraded


def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except RuntimeError:  # its loop is gone: a coroutine left pending when a batch ended, closed when collected
        pass

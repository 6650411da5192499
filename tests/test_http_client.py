"""The caption stages' HTTP/1.1 client (stages/caption/http.py) against a raw TCP server that answers the ways real
servers do: Content-Length, chunked, until close, a kept-alive connection the server drops, no answer at all."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest

from httpproxy import ForwardProxy
from pipeline.proxies import UnsupportedProxy, proxy_for
from stages.caption.http import HttpClient, HttpTimeout, HttpTransportError

OK = b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}'


async def serve(answer):
    """`answer(request number)` -> (raw response bytes, close the connection after it); None: never answer.
    Counts connections and keeps the request bodies."""
    seen = {"connections": 0, "bodies": []}

    async def handle(reader, writer):
        seen["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                seen["bodies"].append(json.loads(await reader.readexactly(length)))
                reply = answer(len(seen["bodies"]))
                if reply is None:
                    await asyncio.sleep(30)
                raw, close = reply
                writer.write(raw)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions?x=1", seen


def run(answer, requests=2, timeout_s=5.0, pause=0.02):
    async def main():
        server, url, seen = await serve(answer)
        client = HttpClient(timeout_s, {"Authorization": "Bearer k"})
        try:
            out = []
            for i in range(requests):
                out.append(await client.post_json(url, {"n": i}))
                await asyncio.sleep(pause)  # 0: the server's close may arrive only once the next request is sent
            return out, seen
        finally:
            await client.aclose()
            server.close()

    return asyncio.run(main())


def test_content_length_and_chunked_answers_on_one_kept_alive_connection():
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n5\r\n{"a":\r\n2;x=y\r\n1}\r\n0\r\n\r\n'
    plain = b'HTTP/1.1 429 Too Many Requests\r\nContent-Length: 7\r\n\r\n{"b":2}'
    responses, seen = run(lambda n: (chunked if n == 1 else plain, False))
    assert responses[0].json() == {"a": 1} and responses[0].headers["retry-after"] == "3"
    assert (responses[1].status_code, responses[1].json()) == (429, {"b": 2})
    assert seen["connections"] == 1 and seen["bodies"] == [{"n": 0}, {"n": 1}]


@pytest.mark.parametrize("pause", [0, 0.02])
@pytest.mark.parametrize("raw", [OK, b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}'], ids=["dropped", "until-close"])
def test_a_connection_the_server_closes_is_not_reused(raw, pause):
    # "dropped": a length and no Connection: close, but the server closes anyway (an idle timeout); "until-close":
    # no length, the body ends when the connection does
    responses, seen = run(lambda n: (raw, True), requests=3, pause=pause)
    assert [r.json() for r in responses] == [{}, {}, {}] and seen["connections"] == 3


def test_a_request_the_server_drops_on_a_kept_alive_connection_is_sent_again_on_a_new_one():
    # the server reads request 2 and closes without answering (its keep-alive timeout racing the request)
    responses, seen = run(lambda n: (b"", True) if n == 2 else (OK, False), requests=2)
    assert [r.status_code for r in responses] == [200, 200] and seen["connections"] == 2
    assert seen["bodies"] == [{"n": 0}, {"n": 1}, {"n": 1}]


def test_no_answer_is_a_timeout_and_a_closed_fresh_connection_a_transport_error():
    started = time.monotonic()
    with pytest.raises(HttpTimeout, match="within 0.3 s"):
        run(lambda n: None, requests=1, timeout_s=0.3)
    assert time.monotonic() - started < 2
    with pytest.raises(HttpTransportError, match="closed the connection without an answer"):
        run(lambda n: (b"", True), requests=1)
    with pytest.raises(HttpTransportError, match="ConnectionRefusedError|OSError"):
        asyncio.run(HttpClient(2.0, {}).post_json("http://127.0.0.1:9/x", {}))


@pytest.fixture
def tls(tmp_path):
    """A server TLS context with a self-signed certificate for 127.0.0.1, and that certificate's path."""
    import ssl
    import subprocess

    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days",
                    "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    return served, cert


def post_over_tls(served, cert, trust: bool, path: str = "/v1"):
    """One POST to an https server with the certificate `tls` made, from a client that trusts it or not."""
    import ssl

    async def main():
        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"tls":true}')
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=served)
        client = HttpClient(5.0, {})
        if trust:  # a client that trusts this self-signed certificate (the default bundle does not)
            client._ssl = ssl.create_default_context(cafile=str(cert))
        try:
            return await client.post_json(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}{path}", {})
        finally:
            await client.aclose()
            server.close()

    return asyncio.run(main())


def test_https_verifies_the_server_certificate(tls):
    with pytest.raises(HttpTransportError, match="CERTIFICATE_VERIFY_FAILED"):
        post_over_tls(*tls, trust=False)
    assert post_over_tls(*tls, trust=True).json() == {"tls": True}


# -- proxies ---------------------------------------------------------------------------------------------------------
SECRET = "pr0xy-s3cret"


def clear_proxy_env(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.mark.parametrize(("environ", "scheme", "host", "port", "expected"), [
    ({"https": "http://p:3128"}, "https", "api.example.com", 443, "p:3128"),
    ({"https": "http://p:3128"}, "http", "api.example.com", 80, None),  # no HTTP_PROXY: http goes direct
    ({"http": "p2:8080", "all": "http://p3:1"}, "http", "h", 80, "p2:8080"),  # no scheme given: http://
    ({"all": "http://p3:1"}, "https", "h", 443, "p3:1"),
    ({"https": "http://p", "no": "*"}, "https", "h", 443, None),
    ({"https": "http://p", "no": "localhost, .example.com"}, "https", "api.example.com", 443, None),
    ({"https": "http://p", "no": "example.com"}, "https", "api.example.com", 443, None),
    ({"https": "http://p", "no": "example.com"}, "https", "notexample.com", 443, "p:80"),
    ({"https": "http://p", "no": "10.0.0.0/8"}, "https", "10.2.3.4", 443, None),
    ({"https": "http://p", "no": "10.0.0.0/8"}, "https", "11.2.3.4", 443, "p:80"),
    ({"http": "http://p", "no": "vllm:8000"}, "http", "vllm", 8000, None),
    ({"http": "http://p", "no": "vllm:8000"}, "http", "vllm", 9000, "p:80"),
])
def test_the_proxy_is_the_one_curl_and_httpx_would_use(environ, scheme, host, port, expected):
    proxy = proxy_for(scheme, host, port, environ)
    assert (proxy.name if proxy else None) == expected


def test_proxy_credentials_go_in_a_header_and_nowhere_else(monkeypatch):
    clear_proxy_env(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", f"http://user%40corp:{SECRET}@proxy.corp:3128")
    proxy = proxy_for("https", "api.openai.com", 443)
    assert base64.b64decode(proxy.authorization.split()[1]).decode() == f"user@corp:{SECRET}"
    assert SECRET not in repr(proxy) + proxy.name and proxy.name == "proxy.corp:3128"
    monkeypatch.setenv("HTTPS_PROXY", f"socks5://user:{SECRET}@proxy.corp:1080")
    with pytest.raises(UnsupportedProxy, match="http:// proxies only") as info:
        proxy_for("https", "api.openai.com", 443)
    assert SECRET not in str(info.value)


def test_an_http_endpoint_is_reached_through_the_proxy_on_one_kept_alive_connection(monkeypatch):
    clear_proxy_env(monkeypatch)
    with ForwardProxy(credentials=("u", SECRET)) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url("u", SECRET))
        chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'
        responses, seen = run(lambda n: (chunked if n == 1 else OK, False), requests=3)
    assert [r.json() for r in responses] == [{"a": 1}, {}, {}]
    assert seen["bodies"] == [{"n": 0}, {"n": 1}, {"n": 2}] and seen["connections"] == 1
    assert proxy.connections == 1  # kept alive through the proxy
    methods, targets, auths = zip(*proxy.requests)
    assert set(methods) == {"POST"} and len(targets) == 3
    assert all(t.startswith("http://127.0.0.1:") and t.endswith("/v1/chat/completions?x=1") for t in targets)
    assert set(auths) == {proxy.expected}


def test_an_https_endpoint_is_reached_through_a_proxy_tunnel_and_still_verified(monkeypatch, tls):
    clear_proxy_env(monkeypatch)
    with ForwardProxy(credentials=("u", SECRET)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url("u", SECRET))
        assert post_over_tls(*tls, trust=True).json() == {"tls": True}
        with pytest.raises(HttpTransportError, match="CERTIFICATE_VERIFY_FAILED") as info:
            post_over_tls(*tls, trust=False)  # the tunnel does not weaken the endpoint's certificate check
        assert f"via proxy 127.0.0.1:{proxy.port}" in str(info.value)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url("u", "wrong-password"))
        with pytest.raises(HttpTransportError, match="refused a tunnel to 127.0.0.1:[0-9]+: HTTP/1.1 407") as info:
            post_over_tls(*tls, trust=True)
        assert "wrong-password" not in str(info.value)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        before = len(proxy.requests)
        assert post_over_tls(*tls, trust=True).json() == {"tls": True}
        assert len(proxy.requests) == before  # exempted: straight to the server
    assert [m for m, _, _ in proxy.requests] == ["CONNECT"] * 3
    assert proxy.requests[0][2] == proxy.expected and proxy.requests[2][2] != proxy.expected

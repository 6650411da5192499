"""The caption stages' HTTP/1.1 client (stages/caption/http.py) against a raw TCP server that answers the ways real
servers do: Content-Length, chunked, until close, a kept-alive connection the server drops, no answer at all."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

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


def test_https_verifies_the_server_certificate(tmp_path):
    import ssl
    import subprocess

    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days",
                    "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def main(trust: bool):
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
            return await client.post_json(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", {})
        finally:
            await client.aclose()
            server.close()

    with pytest.raises(HttpTransportError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(main(trust=False))
    assert asyncio.run(main(trust=True)).json() == {"tls": True}

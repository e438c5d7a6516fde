"""The pooled h11 transport under httpx (mesh/shell/http_client.py): reuse,
bounds, expiry, and httpx's exception types for every failure."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from mesh.shell.http_client import H11Transport, PeerHttpClient
from mesh.shell.http_server import serve


@asynccontextmanager
async def server(ports: list[int]) -> AsyncIterator[str]:
    """A server that records each request's client port; ``/hang`` never
    answers, ``/close`` answers with ``connection: close``, ``/big`` sends
    100 kB, ``/len`` the size of the request body it read."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ports.append(scope["client"][1])
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/hang":
            await trio.sleep_forever()
        headers = [(b"connection", b"close")] if path == "/close" else []
        if path == "/big":
            body = b"x" * 100_000
        elif path == "/len":
            body = str(size).encode()
        else:
            body = b"ok:" + path.encode()
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    stop = trio.Event()
    with sock:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve(
                    app, sock, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            try:
                yield f"http://127.0.0.1:{sock.getsockname()[1]}"
            finally:
                stop.set()


def client(transport: H11Transport, timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, timeout=timeout)


async def test_requests_reuse_one_keep_alive_connection() -> None:
    ports: list[int] = []
    transport = H11Transport(max_connections=4, keepalive_expiry=60)
    async with server(ports) as url, client(transport) as http:
        for i in range(5):
            response = await http.post(f"{url}/p{i}", content=b"body")
            assert response.text == f"ok:/p{i}"
        assert len(set(ports)) == 1
        assert transport.open_connections == 1
        assert transport.idle_connections == 1
    assert transport.open_connections == 0


async def test_expired_and_closed_connections_are_not_reused() -> None:
    ports: list[int] = []
    async with server(ports) as url:
        expiring = H11Transport(max_connections=4, keepalive_expiry=0)
        async with client(expiring) as http:
            for _ in range(3):
                assert (await http.get(f"{url}/a")).status_code == 200
        assert len(set(ports)) == 3
        ports.clear()
        closing = H11Transport(max_connections=4, keepalive_expiry=60)
        async with client(closing) as http:
            for _ in range(3):
                assert (await http.get(f"{url}/close")).status_code == 200
            assert closing.open_connections == 0
        assert len(set(ports)) == 3


async def test_a_body_not_read_to_the_end_closes_its_connection() -> None:
    ports: list[int] = []
    transport = H11Transport(max_connections=4, keepalive_expiry=60)
    async with server(ports) as url, client(transport) as http:
        async with http.stream("GET", f"{url}/big") as response:
            # the caller gives up on the body (its size limit), unread
            assert response.headers["content-length"] == "100000"
        assert transport.open_connections == 0
        assert (await http.get(f"{url}/a")).text == "ok:/a"
        assert len(set(ports)) == 2


async def test_a_connection_is_pooled_as_soon_as_its_body_is_read() -> None:
    ports: list[int] = []
    transport = H11Transport(max_connections=4, keepalive_expiry=60)
    async with server(ports) as url, client(transport) as http:
        async with http.stream("GET", f"{url}/a") as response:
            stream = response.stream
            assert isinstance(stream, httpx.AsyncByteStream)
            assert [chunk async for chunk in stream] == [b"ok:/a"]
            # back in the pool before the caller closes the response
            assert transport.idle_connections == 1
        assert transport.idle_connections == 1
        assert (await http.get(f"{url}/b")).text == "ok:/b"
        assert len(set(ports)) == 1


async def test_bodies_larger_than_one_socket_write_or_read() -> None:
    """A request body past the socket buffer (the direct send is partial, the
    rest goes through trio) and a response in many reads; the connection is
    reused after both."""
    ports: list[int] = []
    transport = H11Transport(max_connections=4, keepalive_expiry=60)
    big = b"y" * 8_000_000
    async with server(ports) as url, client(transport) as http:
        assert (await http.post(f"{url}/len", content=big)).text == str(len(big))
        assert (await http.get(f"{url}/big")).content == b"x" * 100_000
        assert (await http.post(f"{url}/len", content=b"z")).text == "1"
        assert len(set(ports)) == 1
        assert transport.open_connections == 1


async def test_the_pool_bound_evicts_idle_connections_of_other_origins() -> None:
    ports_a: list[int] = []
    ports_b: list[int] = []
    transport = H11Transport(max_connections=1, keepalive_expiry=60)
    async with (
        server(ports_a) as url_a,
        server(ports_b) as url_b,
        client(transport) as http,
    ):
        for url in (url_a, url_b, url_a):
            assert (await http.get(f"{url}/x")).status_code == 200
            assert transport.open_connections == 1
        assert len(set(ports_a)) == 2  # a's connection was closed to reach b


async def test_idle_connections_to_an_origin_never_asked_again_expire() -> None:
    # A peer restarted on another port (or dead) is never asked again: its
    # pooled connection used to keep its socket until the pool filled.
    ports_a: list[int] = []
    ports_b: list[int] = []
    transport = H11Transport(max_connections=8, keepalive_expiry=0.2)
    async with (
        server(ports_a) as url_a,
        server(ports_b) as url_b,
        client(transport) as http,
    ):
        assert (await http.get(f"{url_a}/x")).status_code == 200
        assert transport.idle_connections == 1
        await trio.sleep(0.3)  # a's connection is now past keepalive_expiry
        assert (await http.get(f"{url_b}/x")).status_code == 200
        assert transport.idle_connections == 1  # b's only
        assert transport.open_connections == 1


async def test_the_sweeper_closes_expired_connections_without_requests() -> None:
    # A quiet pusher asks nobody: its connections to a peer gone elsewhere
    # must still be closed (they sat in CLOSE-WAIT, 2 per restart of a peer).
    ports: list[int] = []
    transport = H11Transport(max_connections=8, keepalive_expiry=0.2)
    async with server(ports) as url, client(transport) as http:
        assert (await http.get(f"{url}/x")).status_code == 200
        assert transport.open_connections == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.sweep_forever)
            with trio.fail_after(5):
                while transport.open_connections:  # noqa: ASYNC110 - polled gauge
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert transport.idle_connections == 0


async def test_failures_are_httpx_exceptions() -> None:
    # refused: nothing listens on a port we bound and closed
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead = probe.getsockname()[1]
    probe.close()
    transport = H11Transport(max_connections=2, keepalive_expiry=60)
    async with client(transport, timeout=0.3) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{dead}/")
        ports: list[int] = []
        async with server(ports) as url:
            with pytest.raises(httpx.ReadTimeout):
                await http.get(f"{url}/hang")
            assert transport.open_connections == 0
            # the transport goes on working after a failure
            assert (await http.get(f"{url}/a")).text == "ok:/a"
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")
        with pytest.raises(httpx.ConnectError, match="ssl_context"):
            await http.get(f"https://127.0.0.1:{dead}/")


async def test_a_server_closing_a_pooled_connection_is_a_transient_error() -> None:
    # A raw server: answers one request on each connection, then closes it
    # without saying so (what an expired keep-alive looks like to a client).
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await stream.aclose()

    transport = H11Transport(max_connections=2, keepalive_expiry=60)
    async with trio.open_nursery() as nursery, client(transport) as http:
        nursery.start_soon(trio.serve_listeners, handle, [listener])
        assert (await http.get(f"http://127.0.0.1:{port}/")).text == "ok"
        # EOF or a reset, depending on how far the close got: both say the
        # request may be resent (the pusher retries them as connect errors).
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await http.get(f"http://127.0.0.1:{port}/")
        assert (await http.get(f"http://127.0.0.1:{port}/")).text == "ok"
        nursery.cancel_scope.cancel()


def _threaded_http_server() -> tuple[socket.socket, Any]:
    """A keep-alive HTTP server in a thread that answers every request at
    once: its answer is in our kernel buffer while our loop still runs."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd.socket, httpd


async def test_a_fan_out_sends_every_request_before_reading_any_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A route write is pushed to every peer at once. If a request's answer is
    # already there when the task turns to read it (on one machine the peer
    # may run while we send), the task must still let the other requests go
    # out first, or the fan-out runs one peer at a time.
    import select

    events: list[str] = []
    original = H11Transport._send_all

    async def send_all(
        self: H11Transport, conn: Any, data: bytes, request: httpx.Request
    ) -> None:
        await original(self, conn, data, request)
        events.append(f"sent {request.url.path}")
        # Block the loop until the peer's answer is in our kernel buffer, as
        # when the peer ran on our core while we sent.
        readable, _, _ = select.select([conn.raw], [], [], 5.0)
        assert readable

    monkeypatch.setattr(H11Transport, "_send_all", send_all)
    sock, httpd = _threaded_http_server()
    port = sock.getsockname()[1]
    transport = H11Transport(max_connections=8, keepalive_expiry=60)
    try:
        async with client(transport) as http:

            async def one(name: str) -> None:
                response = await http.post(f"http://127.0.0.1:{port}/{name}")
                assert response.text == "ok"
                events.append(f"answer /{name}")

            async with trio.open_nursery() as nursery:
                for name in ("a", "b", "c"):
                    nursery.start_soon(one, name)
    finally:
        httpd.shutdown()
        httpd.server_close()
    sent = [i for i, e in enumerate(events) if e.startswith("sent")]
    answers = [i for i, e in enumerate(events) if e.startswith("answer")]
    assert len(sent) == 3
    assert len(answers) == 3
    assert max(sent) < min(answers), events


async def test_the_peer_client_keeps_no_cookies() -> None:
    """Peers set none; reading every answer for them costs the writer CPU."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "a=b; Path=/"})

    async with PeerHttpClient(transport=httpx.MockTransport(handler)) as client:
        await client.get("http://127.0.0.2:1/")
        await client.get("http://127.0.0.2:1/")
        assert not client.cookies
    assert seen == [None, None]

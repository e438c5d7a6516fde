"""The h11 server (mesh/shell/http_server.py) at the byte level: framing, limits,
keep-alive, pipelining, slow and vanishing clients, graceful shutdown, TLS."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing

from mesh.shell.asgi import HttpError, Request, Response, Route, Router
from mesh.shell.http_server import ServerLimits, serve

App = Callable[[Any, Any, Any], Awaitable[None]]


def _bound() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def running(
    app: App,
    limits: ServerLimits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    on_drop: Callable[[str], object] | None = None,
) -> AsyncIterator[tuple[int, trio.Event]]:
    """Serve ``app`` on a free port: yields (port, shutdown trigger)."""
    sock = _bound()
    port = sock.getsockname()[1]
    stop = trio.Event()
    with sock:
        async with trio.open_nursery() as nursery:

            async def run(task_status: trio.TaskStatus[None]) -> None:
                await serve(
                    app,
                    sock,
                    shutdown_trigger=stop.wait,
                    limits=limits or ServerLimits(),
                    ssl_context=ssl_context,
                    on_drop=on_drop,
                    task_status=task_status,
                )

            await nursery.start(run)
            try:
                yield port, stop
            finally:
                stop.set()


async def echo_handler(request: Request) -> Response:
    body = await request.body(1000)
    text = f"{request.method} {request.params.get('key', '')} {len(body)}"
    return Response(200, text.encode(), content_type="text/plain")


async def ignore_body(request: Request) -> Response:
    return Response(200, b"ignored", content_type="text/plain")


def router() -> Router:
    return Router(
        [
            Route("POST", "/echo/{key}", echo_handler),
            Route("GET", "/echo/{key}", echo_handler),
            Route("POST", "/ignore", ignore_body),
        ]
    )


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes; then closes our end."""
    chunks = []
    try:
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        await stream.aclose()
    return b"".join(chunks)


async def read_responses(stream: trio.abc.Stream, count: int) -> list[bytes]:
    """``count`` whole responses (each framed by content-length)."""
    buf = b""
    out: list[bytes] = []
    while len(out) < count:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end].decode()
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(buf) >= end:
                out.append(buf[:end])
                buf = buf[end:]
                continue
        data = await stream.receive_some(65536)
        assert data, f"closed after {len(out)} responses"
        buf += data
    return out


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with (
        running(router()) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        for i in range(5):
            response = await client.post(f"/echo/k{i}", content=b"x" * i)
            assert response.status_code == 200
            assert response.text == f"POST k{i} {i}"
        # one pooled connection did it all
        assert response.headers.get("connection") != "close"


async def test_requests_without_a_body_keep_the_connection_open() -> None:
    # A GET carries no content-length; the app never reads its (empty) body.
    # Found by wrk: every such answer used to say "connection: close".
    app = Router([Route("GET", "/ignore", ignore_body)])
    async with running(app) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            for _ in range(3):
                await stream.send_all(b"GET /ignore HTTP/1.1\r\nhost: x\r\n\r\n")
                (response,) = await read_responses(stream, 1)
                assert response.startswith(b"HTTP/1.1 200")
                assert b"connection: close" not in response.lower()
        finally:
            await stream.aclose()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with running(router()) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /echo/a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
            b"GET /echo/b HTTP/1.1\r\nhost: x\r\n\r\n"
            b"POST /echo/c HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nz"
        )
        responses = await read_responses(stream, 3)
        assert [r.rsplit(b"\r\n\r\n", 1)[1] for r in responses] == [
            b"POST a 3",
            b"GET b 0",
            b"POST c 1",
        ]
        await stream.aclose()


@pytest.mark.parametrize(
    ("garbage", "status", "reason"),
    [
        (b"NOT-HTTP\r\n\r\n", b"400", "bad_request"),
        (b"GET / HTTP/9.9\r\n\r\n", b"505", "bad_version"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400", "bad_request"),  # no host
        (b"GET /\x00 HTTP/1.1\r\nhost: x\r\n\r\n", b"400", "bad_request"),
        (
            b"POST /echo/a HTTP/1.1\r\nhost: x\r\ncontent-length: no\r\n\r\n",
            b"400",
            "bad_request",
        ),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", b"400", "bad_request"),
    ],
)
async def test_a_bad_request_is_refused_counted_and_the_connection_closes(
    garbage: bytes, status: bytes, reason: str
) -> None:
    dropped: list[str] = []
    async with running(router(), on_drop=dropped.append) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(garbage)
        answer = await read_until_closed(stream)
        assert answer.startswith(b"HTTP/1.1 " + status + b" ")
        assert answer.endswith(b"}")  # a JSON error body
    # counted, as no app (and so no request metric) saw it (audit 11)
    assert dropped == [reason]


async def test_oversized_request_head_is_431() -> None:
    limits = ServerLimits(max_header_bytes=1024)
    dropped: list[str] = []
    async with running(router(), limits, on_drop=dropped.append) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"GET /echo/a HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 4000 + b"\r\n\r\n"
        )
        answer = await read_until_closed(stream)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        # a long request line is refused the same way
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /" + b"a" * 4000 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await read_until_closed(stream)).startswith(b"HTTP/1.1 431 ")
    assert dropped == ["head_too_large", "head_too_large"]


async def test_body_limit_is_the_apps_and_unread_bodies_are_drained() -> None:
    limits = ServerLimits(max_drain_bytes=100)
    async with (
        running(router(), limits) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        too_big = await client.post("/echo/a", content=b"x" * 5000)
        assert too_big.status_code == 413
        # An app that ignores a small body: the server drains it, and the
        # connection serves the next request.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /ignore HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n0123456789"
            b"GET /echo/b HTTP/1.1\r\nhost: x\r\n\r\n"
        )
        first, second = await read_responses(stream, 2)
        assert first.endswith(b"ignored")
        assert second.endswith(b"GET b 0")
        await stream.aclose()
        # Past max_drain_bytes the connection is closed instead.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /ignore HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n"
            + b"y" * 1000
        )
        answer = await read_until_closed(stream)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b"ignored")
        # ... and the response says so, so a keep-alive client opens a new
        # connection for its next request instead of losing it.
        assert b"connection: close" in answer.lower()


async def test_a_keep_alive_client_survives_refused_large_bodies() -> None:
    limits = ServerLimits(max_drain_bytes=100)
    async with (
        running(router(), limits) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        for i in range(20):
            too_big = await client.post("/echo/a", content=b"x" * 5000)
            assert too_big.status_code == 413
            ok = await client.get(f"/echo/k{i}")
            assert ok.status_code == 200


async def test_chunked_request_body_is_read() -> None:
    async with running(router()) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /echo/a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        (response,) = await read_responses(stream, 1)
        assert response.endswith(b"POST a 5")
        await stream.aclose()


async def test_a_slow_client_is_dropped_after_the_header_timeout() -> None:
    limits = ServerLimits(header_timeout=0.2, keep_alive_timeout=30)
    async with running(router(), limits) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        # Starts a request, never finishes its head.
        await stream.send_all(b"GET /echo/a HTTP/1.1\r\nhost: x\r\n")
        with trio.fail_after(10):
            assert await read_until_closed(stream) == b""


async def test_a_head_trickled_in_is_cut_at_the_header_timeout_overall() -> None:
    # A header line every 0.05 s keeps each read well inside the timeout; the
    # head as a whole must still be done within it, or the connection closes.
    limits = ServerLimits(header_timeout=0.3, keep_alive_timeout=30)
    async with running(router(), limits) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /echo/a HTTP/1.1\r\nhost: x\r\n")
        closed = False
        with trio.fail_after(10):
            for i in range(200):  # 10 s of trickling if never cut
                await trio.sleep(0.05)
                try:
                    await stream.send_all(b"x-%d: y\r\n" % i)
                except trio.BrokenResourceError:
                    closed = True
                    break
        await stream.aclose()
        assert closed, "the server kept reading a head trickled in for 10 s"


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    limits = ServerLimits(keep_alive_timeout=0.2)
    async with running(router(), limits) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /echo/a HTTP/1.1\r\nhost: x\r\n\r\n")
        (response,) = await read_responses(stream, 1)
        assert response.endswith(b"GET a 0")
        with trio.fail_after(10):
            assert await read_until_closed(stream) == b""


async def test_client_disconnect_mid_body_reaches_the_app_and_server_goes_on() -> None:
    seen: list[str] = []
    got_disconnect = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect":
                got_disconnect.set()
                return
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with running(app) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly-part"
        )
        await stream.aclose()
        with trio.fail_after(10):
            await got_disconnect.wait()
        assert seen == ["http.request", "http.disconnect"]
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{port}/x", content=b"ok")
            assert response.status_code == 200


async def test_app_error_is_500_and_missing_response_is_500() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/raise":
            raise RuntimeError("bug")

    async with (
        running(broken) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        assert (await client.get("/raise")).status_code == 500
        assert (await client.get("/silent")).status_code == 500


async def test_path_is_decoded_and_raw_path_kept() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with running(app) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /a%2Fb%20c?x=1&y HTTP/1.1\r\nhost: h\r\n\r\n")
        head = await stream.receive_some(65536)
        assert head.startswith(b"HTTP/1.1 204 No Content\r\n")
        await stream.aclose()
    (scope,) = scopes
    assert scope["path"] == "/a/b c"
    assert scope["raw_path"] == b"/a%2Fb%20c"
    assert scope["query_string"] == b"x=1&y"
    assert scope["method"] == "GET"
    assert (b"host", b"h") in scope["headers"]
    assert scope["client"][0] == "127.0.0.1"


# --- connection slots: silent connections, eviction of idle ones ---


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout() -> (
    None
):
    # Not at the keep-alive timeout: the head's clock starts at the accept,
    # not at a first byte that never comes.
    dropped: list[str] = []
    limits = ServerLimits(header_timeout=0.2, keep_alive_timeout=60)
    async with running(router(), limits, on_drop=dropped.append) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(10):
            assert await read_until_closed(stream) == b""
    assert dropped == ["header_timeout"]


async def test_a_tls_client_that_sends_no_request_is_closed_at_the_header_timeout() -> (
    None
):
    server_ctx, client_ctx = _self_signed()
    limits = ServerLimits(header_timeout=0.5, keep_alive_timeout=60)
    async with running(router(), limits, ssl_context=server_ctx) as (port, _):
        # handshakes, then says nothing
        stream = await _client(port, client_ctx)
        # closed without close_notify (BrokenResourceError) is closed too
        with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
            assert await stream.receive_some(65536) == b""
        await stream.aclose()


async def test_silent_connections_holding_every_slot_make_room_for_a_client() -> None:
    # Timeouts far past the test's deadline: only eviction can admit the client.
    dropped: list[str] = []
    limits = ServerLimits(max_connections=3, header_timeout=60, keep_alive_timeout=60)
    async with running(router(), limits, on_drop=dropped.append) as (port, _):
        silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        with trio.fail_after(10):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"GET /echo/a HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await read_responses(client, 1))[0].endswith(b"GET a 0")
            # the oldest silent one made room
            assert await read_until_closed(silent[0]) == b""
        assert dropped == ["evicted"]
        for stream in [client, *silent[1:]]:
            await stream.aclose()


async def test_silent_connections_are_evicted_before_keep_alive_ones() -> None:
    limits = ServerLimits(max_connections=2, header_timeout=60, keep_alive_timeout=60)
    async with running(router(), limits) as (port, _):
        kept = await trio.open_tcp_stream("127.0.0.1", port)
        await kept.send_all(b"GET /echo/a HTTP/1.1\r\nhost: x\r\n\r\n")
        await read_responses(kept, 1)  # now idle between requests, the older
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(10):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"GET /echo/b HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await read_responses(client, 1))[0].endswith(b"GET b 0")
            assert await read_until_closed(silent) == b""
            # the keep-alive connection still serves
            await kept.send_all(b"GET /echo/c HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await read_responses(kept, 1))[0].endswith(b"GET c 0")
            # and, idle again, makes room in turn: longest idle first
            other = await trio.open_tcp_stream("127.0.0.1", port)
            await other.send_all(b"GET /echo/d HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await read_responses(other, 1))[0].endswith(b"GET d 0")
            assert await read_until_closed(client) == b""
        await kept.aclose()
        await other.aclose()


async def test_bodies_trickled_on_every_slot_make_room_for_a_client() -> None:
    """Slowloris with bodies: each trickling connection is bounded by the
    app's body timeout, but a client reopening them could hold every slot
    for good. Past header_timeout a body still arriving is evictable, oldest
    first, once idle connections are gone (audit 10's leftover)."""
    dropped: list[str] = []
    limits = ServerLimits(
        max_connections=2, header_timeout=0.5, keep_alive_timeout=60, io_timeout=60
    )
    async with running(router(), limits, on_drop=dropped.append) as (port, _):
        slow = []
        for key in "ab":
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(
                f"POST /echo/{key} HTTP/1.1\r\nhost: x\r\ncontent-length: 100"
                "\r\n\r\n0123456789".encode()
            )
            slow.append(stream)
        with trio.fail_after(10):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"GET /echo/c HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await read_responses(client, 1))[0].endswith(b"GET c 0")
            assert await read_until_closed(slow[0]) == b""  # the oldest body
        assert dropped == ["slow_body"]
        # the other one may still finish its body and get its answer
        await slow[1].send_all(b"x" * 90)
        with trio.fail_after(10):
            assert (await read_responses(slow[1], 1))[0].endswith(b"POST b 100")
        for stream in (client, slow[1]):
            await stream.aclose()


def _slow_app() -> tuple[Router, trio.Event, trio.Event]:
    """``/slow`` answers once ``release`` is set (``started`` tells it is in
    the app), ``/echo/{key}`` at once."""
    release = trio.Event()
    started = trio.Event()

    async def slow(request: Request) -> Response:
        started.set()
        await release.wait()
        return Response(200, b"done", content_type="text/plain")

    app = Router(
        [Route("GET", "/slow", slow), Route("GET", "/echo/{key}", echo_handler)]
    )
    return app, started, release


async def test_a_request_in_flight_is_not_evicted_and_new_ones_wait() -> None:
    app, started, release = _slow_app()
    dropped: list[str] = []
    limits = ServerLimits(max_connections=1, header_timeout=60, keep_alive_timeout=60)
    async with running(app, limits, on_drop=dropped.append) as (port, _):
        busy = await trio.open_tcp_stream("127.0.0.1", port)
        await busy.send_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await started.wait()
        # The kernel completes the second handshake, but the server does not
        # accept it while the only slot is busy.
        second = await trio.open_tcp_stream("127.0.0.1", port)
        await second.send_all(b"GET /echo/b HTTP/1.1\r\nhost: x\r\n\r\n")
        with trio.move_on_after(0.3) as waited:
            await second.receive_some(65536)
        assert waited.cancelled_caught
        release.set()
        with trio.fail_after(10):
            # the request in flight was answered whole...
            assert (await read_responses(busy, 1))[0].endswith(b"done")
            # ...then, idle, it made room for the waiting one
            assert (await read_responses(second, 1))[0].endswith(b"GET b 0")
            assert await read_until_closed(busy) == b""
        assert dropped == ["evicted"]
        await second.aclose()


async def test_graceful_shutdown_finishes_in_flight_and_closes_idle() -> None:
    app, started, release = _slow_app()
    sock = _bound()
    port = sock.getsockname()[1]
    stop = trio.Event()
    served = trio.Event()
    results: dict[str, Any] = {}

    async with trio.open_nursery() as nursery:

        async def run(task_status: trio.TaskStatus[None]) -> None:
            await serve(app, sock, shutdown_trigger=stop.wait, task_status=task_status)
            served.set()

        await nursery.start(run)
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        await idle.send_all(b"GET /echo/a HTTP/1.1\r\nhost: x\r\n\r\n")
        await read_responses(idle, 1)

        async def in_flight() -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            results["slow"] = await read_until_closed(stream)

        nursery.start_soon(in_flight)
        await started.wait()
        stop.set()
        # The idle connection is closed at once...
        with trio.fail_after(10):
            assert await read_until_closed(idle) == b""
        # ...new connections are refused...
        with pytest.raises(OSError, match="connect"):
            await trio.open_tcp_stream("127.0.0.1", port)
        assert not served.is_set()
        # ...and the request in progress completes, then its connection closes.
        release.set()
    answer = results["slow"]
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")  # with its reason phrase
    assert b"connection: close" in answer.lower()
    assert answer.endswith(b"done")
    sock.close()


async def test_graceful_shutdown_cuts_requests_past_the_graceful_timeout() -> None:
    async def hang(request: Request) -> Response:
        await trio.sleep_forever()
        raise HttpError(500, "unreachable")

    limits = ServerLimits(graceful_timeout=0.1)
    async with running(Router([Route("GET", "/hang", hang)]), limits) as (port, stop):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
        stop.set()
        with trio.fail_after(10):
            assert await read_until_closed(stream) == b""


def _self_signed() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for a throwaway certificate of 127.0.0.1."""
    import ipaddress
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = f"{tmp}/cert.pem", f"{tmp}/key.pem"
        with open(cert_path, "wb") as f:
            f.write(cert_pem)
        with open(key_path, "wb") as f:
            f.write(key_pem)
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cert_path, key_path)
        client = ssl.create_default_context(cafile=cert_path)
    return server, client


async def test_tls_serves_https_with_an_ssl_context() -> None:
    server_ctx, client_ctx = _self_signed()
    scopes: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope["scheme"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"secure"})

    async with (
        running(app, ssl_context=server_ctx) as (port, _),
        httpx.AsyncClient(verify=client_ctx) as client,
    ):
        for _ in range(2):
            response = await client.get(f"https://127.0.0.1:{port}/")
            assert response.text == "secure"
        # a plaintext client gets no answer, and the server goes on
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        with trio.fail_after(10):
            answer = await read_until_closed(stream)
        assert not answer.startswith(b"HTTP/1.1 200")
        assert (await client.get(f"https://127.0.0.1:{port}/")).text == "secure"
    assert scopes == ["https"] * 3


async def test_streamed_response_to_a_vanished_client_ends_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ended: list[BaseException] = []
    done = trio.Event()

    async def stream_forever(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"x" * 4096,
                        "more_body": True,
                    }
                )
                await trio.lowlevel.checkpoint()
        except OSError as exc:  # ASGI: send to a closed connection
            ended.append(exc)
            raise
        finally:
            done.set()

    async with running(stream_forever) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /watch HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await stream.receive_some(65536)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"transfer-encoding: chunked" in head.lower()
        await stream.aclose()
        with trio.fail_after(10):
            await done.wait()
    assert len(ended) == 1
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def _fixed(body: bytes) -> App:
    """An app answering every request with ``body`` (one send)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_a_response_larger_than_the_socket_buffer_arrives_whole() -> None:
    # The first write goes straight to the socket and is cut short by the
    # kernel; the rest must follow, byte for byte, and keep-alive go on.
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB
    async with running(_fixed(body)) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            for _ in range(2):
                await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                with trio.fail_after(10):
                    (response,) = await read_responses(stream, 1)
                assert response.split(b"\r\n\r\n", 1)[1] == body
        finally:
            await stream.aclose()


async def test_a_client_that_stops_reading_is_dropped_after_the_io_timeout() -> None:
    big = b"x" * (16 * 1024 * 1024)  # more than both socket buffers hold

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = big if scope["path"] == "/big" else b"small"
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    limits = ServerLimits(io_timeout=0.3)
    async with running(app, limits) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        await trio.sleep(1.0)  # not reading: the server's write times out
        with trio.fail_after(10):
            received = len(await read_until_closed(stream))
        assert 0 < received < len(big)
        # and the server goes on serving others
        other = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await other.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            with trio.fail_after(10):
                (response,) = await read_responses(other, 1)
            assert response.endswith(b"\r\n\r\nsmall")
        finally:
            await other.aclose()


async def test_a_pipelining_client_does_not_starve_other_connections() -> None:
    # Requests that are already buffered are served without waiting on the
    # socket; the server must still yield between them.
    order: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        order.append(scope["path"])
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    count = 50
    async with running(app) as (port, _):
        flood = await trio.open_tcp_stream("127.0.0.1", port)
        single = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await trio.sleep(0.2)  # both connections idle in the server
            await flood.send_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n" * count)
            await single.send_all(b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n")
            with trio.fail_after(10):
                await read_responses(single, 1)
                await read_responses(flood, count)
        finally:
            await flood.aclose()
            await single.aclose()
    assert order.count("/a") == count
    assert order.index("/b") < count - 1


async def test_a_whole_content_length_body_comes_in_one_message() -> None:
    messages: list[list[Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got = []
        while True:
            message = await receive()
            got.append((message.get("body"), message.get("more_body")))
            if message["type"] != "http.request" or not message["more_body"]:
                break
        messages.append(got)
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async with running(app) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await stream.send_all(
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
            )
            await read_responses(stream, 1)
            # the body split across reads: the end comes with its last part
            await stream.send_all(
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nab"
            )
            await trio.sleep(0.1)
            await stream.send_all(b"cde")
            await read_responses(stream, 1)
            await stream.send_all(
                b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n"
            )
            await read_responses(stream, 1)
        finally:
            await stream.aclose()
    assert messages == [
        [(b"abc", False)],
        [(b"ab", True), (b"cde", False)],
        [(b"abc", True), (b"", False)],
    ]


# --- disconnect detection while the app waits (ASGI "http.disconnect") ---


async def _client(port: int, tls: ssl.SSLContext | None) -> trio.abc.Stream:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    if tls is None:
        return tcp
    stream = trio.SSLStream(tcp, tls, server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


async def _vanish(stream: trio.abc.Stream) -> None:
    """Close like a killed process: the TCP connection, no TLS close_notify."""
    if isinstance(stream, trio.SSLStream):
        await stream.transport_stream.aclose()
    else:
        await stream.aclose()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_receive_after_the_body_returns_once_the_client_is_gone(
    tls: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # A long wait (blocking query, stream) races receive(): it must hear the
    # disconnect when the client goes, not at once and not never.
    server_ctx, client_ctx = _self_signed() if tls else (None, None)
    waiting = trio.Event()
    done = trio.Event()
    client_gone = False
    heard: list[tuple[str, bool]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        first = await receive()
        assert first == {"type": "http.request", "body": b"", "more_body": False}
        waiting.set()
        message = await receive()
        heard.append((message["type"], client_gone))
        done.set()
        # answering a client that is gone fails quietly (an OSError, per ASGI)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    async with running(app, ssl_context=server_ctx) as (port, _):
        stream = await _client(port, client_ctx)
        await stream.send_all(b"GET /wait HTTP/1.1\r\nhost: x\r\n\r\n")
        with trio.fail_after(10):
            await waiting.wait()
        client_gone = True
        await _vanish(stream)
        with trio.fail_after(5):
            await done.wait()
    assert heard == [("http.disconnect", True)]
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("when", ["with_the_first", "while_waiting"])
async def test_a_pipelined_request_is_no_disconnect_and_is_served_next(
    tls: bool, when: str
) -> None:
    # The next request may arrive (or already be buffered) while the app
    # waits: that is not a disconnect, those bytes must not be lost, and the
    # server must not spin on the readable socket.
    server_ctx, client_ctx = _self_signed() if tls else (None, None)
    waiting = trio.Event()
    release = trio.Event()
    heard: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/wait":
            await receive()
            async with trio.open_nursery() as nursery:

                async def listen() -> None:
                    heard.append((await receive())["type"])
                    nursery.cancel_scope.cancel()

                nursery.start_soon(listen)
                waiting.set()
                await release.wait()
                nursery.cancel_scope.cancel()
        body = scope["path"].encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    first = b"GET /wait HTTP/1.1\r\nhost: x\r\n\r\n"
    second = b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n"
    async with running(app, ssl_context=server_ctx) as (port, _):
        stream = await _client(port, client_ctx)
        try:
            await stream.send_all(first + second if when == "with_the_first" else first)
            with trio.fail_after(10):
                await waiting.wait()
            if when == "while_waiting":
                await stream.send_all(second)
            # Every task blocked: the server saw the bytes and is not spinning
            # on them (a busy loop would never let this return).
            with trio.fail_after(10):
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert heard == []
            release.set()
            with trio.fail_after(10):
                responses = await read_responses(stream, 2)
        finally:
            await stream.aclose()
    assert [r.rsplit(b"\r\n\r\n", 1)[1] for r in responses] == [b"/wait", b"/next"]
    assert heard == []


# --- HEAD ---


async def test_head_answers_with_gets_status_and_headers_and_no_body() -> None:
    async def fixed(request: Request) -> Response:
        headers = (("x-a", "1"),)
        return Response(200, b"hello", content_type="text/plain", headers=headers)

    app = Router([Route("GET", "/fixed", fixed), Route("POST", "/fixed", fixed)])
    async with running(app) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            # HEAD then GET on one keep-alive connection: the HEAD answer is
            # exactly the GET head, and no body bytes come between them.
            await stream.send_all(
                b"HEAD /fixed HTTP/1.1\r\nhost: x\r\n\r\n"
                b"GET /fixed HTTP/1.1\r\nhost: x\r\n\r\n"
            )
            buf = b""
            with trio.fail_after(10):
                while buf.count(b"\r\n\r\n") < 2 or not buf.endswith(b"hello"):
                    data = await stream.receive_some(65536)
                    assert data, buf
                    buf += data
            # a wrong method lists HEAD wherever GET is allowed
            await stream.send_all(b"PUT /fixed HTTP/1.1\r\nhost: x\r\n\r\n")
            with trio.fail_after(10):
                (refused,) = await read_responses(stream, 1)
        finally:
            await stream.aclose()
    head_end = buf.index(b"\r\n\r\n") + 4
    head, get = buf[:head_end], buf[head_end:]
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 5\r\n" in head
    assert get == head + b"hello"
    assert refused.startswith(b"HTTP/1.1 405 ")
    assert b"allow: GET, HEAD, POST\r\n" in refused


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        # RFC 9112 6.3: content-length with transfer-encoding is how requests
        # are smuggled past a proxy; the server must close after it (audit 10:
        # it answered 200 and kept the connection)
        (
            b"POST /echo/k HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
            b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "bad_request",
        ),
        # a bad chunk header is a malformed request like a bad head: answered
        # 400, not just closed (audit 10)
        (
            b"POST /echo/k HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
            b"\r\nzz\r\nabc\r\n0\r\n\r\n",
            "bad_body",
        ),
    ],
    ids=["framed-two-ways", "malformed-chunk"],
)
async def test_a_badly_framed_body_is_400_then_closed(
    request_bytes: bytes, reason: str
) -> None:
    dropped: list[str] = []
    async with running(router(), on_drop=dropped.append) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(request_bytes)
        with trio.fail_after(5):
            answer = await read_until_closed(stream)
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert answer.count(b"HTTP/1.1") == 1
    assert dropped == [reason]


async def test_a_body_trickled_past_the_apps_deadline_is_408_and_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A per-read timeout alone let a byte every few seconds hold a connection
    for good (audit 10 blocked the client API with 50 such): the router's
    body_timeout bounds the whole body."""
    app = Router([Route("POST", "/echo/{key}", echo_handler)], body_timeout=2.0)
    async with running(app) as (port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /echo/k HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nab"
        )
        start = trio.current_time()

        async def trickle() -> None:  # a byte a second: each read in time
            for _ in range(20):
                await trio.sleep(1)
                try:
                    await stream.send_all(b"x")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            with trio.fail_after(10):
                answer = await read_until_closed(stream)  # the server closes
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in answer.lower()
        assert elapsed <= 3.0

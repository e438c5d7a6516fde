"""Route watching: blocking queries and the NDJSON stream, against a real agent
(open_agent on 127.0.0.1, port 0), plus the change log's bounds in isolation.
Waits are on conditions under ``trio.fail_after``, never fixed sleeps."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing

from mesh.core.routes import Route, Version, Write
from mesh.shell.agent import Agent
from mesh.shell.asgi import Message
from mesh.shell.net import format_address
from mesh.shell.runner import RunningAgent, open_agent
from mesh.shell.watch_api import (
    LIST_SLICE_ROUTES,
    SEND_PIECE_BYTES,
    STREAM_PATH,
    RouteWatchHub,
    _line,
    _pieces,
    _with_index,
    parse_wait,
    serve_stream,
    snapshot_line,
)

from .conftest import MakeAgent, local_config

DEADLINE = 10.0


async def wait_for(check: Callable[[], bool], deadline: float = DEADLINE) -> None:
    """Until ``check`` holds: state another task (the server's handler)
    changes, with no event of its own to await."""
    with trio.fail_after(deadline):
        while not check():  # noqa: ASYNC110 - no event to await, see docstring
            await trio.sleep(0.01)


Open = Callable[..., Awaitable[tuple[RunningAgent, httpx.AsyncClient]]]


def first_index(running: RunningAgent) -> int:
    """The agent's change index before any change: wall-clock microseconds at
    its start (above any index of an earlier run), not 0."""
    return running.agent.core.routes.index


@pytest.fixture
async def node() -> AsyncIterator[Open]:
    async with trio.open_nursery() as nursery:
        stops: list[trio.Event] = []

        async def start(**overrides: Any) -> tuple[RunningAgent, httpx.AsyncClient]:
            config = local_config("w", **overrides)

            async def run(task_status: trio.TaskStatus[RunningAgent]) -> None:
                stop = trio.Event()
                stops.append(stop)
                async with open_agent(config) as running:
                    running.agent.hurry.set()
                    task_status.started(running)
                    await stop.wait()

            running: RunningAgent = await nursery.start(run)
            base = f"http://{format_address(running.addresses.http)}"
            client = httpx.AsyncClient(base_url=base, trust_env=False, timeout=10)
            return running, client

        yield start
        for stop in stops:
            stop.set()


async def test_list_carries_index(node: Open) -> None:
    running, client = await node()
    b = first_index(running)
    async with client:
        first = await client.get("/v1/routes")
        assert first.json()["index"] == b
        assert first.headers["x-mesh-index"] == str(b)
        await client.put("/v1/routes/a", json={"target": "t"})
        second = await client.get("/v1/routes")
    assert second.json()["index"] == b + 1 == running.agent.core.routes.index
    assert second.headers["x-mesh-index"] == str(b + 1)
    assert [r["key"] for r in second.json()["routes"]] == ["a"]


async def test_blocking_query_returns_on_change(node: Open) -> None:
    running, client = await node()
    b = first_index(running)
    async with client, trio.open_nursery() as nursery:
        answer: list[httpx.Response] = []

        async def query() -> None:
            answer.append(await client.get(f"/v1/routes?index={b}&wait=30s"))

        nursery.start_soon(query)
        hub = running.watch
        await wait_for(lambda: hub.clients == 1)  # the query is parked
        assert not answer
        await client.put("/v1/routes/k", json={"target": "t"})
        await wait_for(lambda: bool(answer))
    document = answer[0].json()
    assert document["index"] == b + 1
    assert [r["key"] for r in document["routes"]] == ["k"]
    assert hub.clients == 0


async def test_blocking_query_on_a_long_list_answers_the_same_bytes(
    node: Open,
) -> None:
    running, client = await node()
    agent = running.agent
    n = 2 * LIST_SLICE_ROUTES + 3
    agent.write_routes([Write(f"k{i:04d}", f"http://t{i}") for i in range(n)])
    start = agent.core.routes.index
    async with client, trio.open_nursery() as nursery:
        answer: list[httpx.Response] = []

        async def query() -> None:
            answer.append(await client.get(f"/v1/routes?index={start}&wait=30s"))

        nursery.start_soon(query)
        await wait_for(lambda: running.watch.clients == 1)
        agent.write_routes([Write("k0001", "http://changed")])
        await wait_for(lambda: bool(answer))
        listed = await client.get("/v1/routes?prefix=k000")
    # What the answer was before lists were encoded in slices.
    routes = [r.to_json() for r in agent.core.routes.live()]
    document = {"routes": routes, "count": n, "index": start + 1}
    assert answer[0].content == json.dumps(document, separators=(",", ":")).encode()
    assert answer[0].headers["x-mesh-index"] == str(start + 1)
    assert [r["key"] for r in listed.json()["routes"]] == [
        f"k{i:04d}" for i in range(10)
    ]


@pytest.mark.parametrize(
    ("wait", "zeros"),
    # a wait and an index as any ASCII decimal and integer (audit, session 14)
    [("300ms", ""), (".3s", ""), ("0.3000000000000s", "000"), ("0.3", "0" * 30)],
)
async def test_blocking_query_times_out_unchanged(
    node: Open, wait: str, zeros: str
) -> None:
    running, client = await node()
    b = first_index(running)
    async with client:
        start = trio.current_time()
        response = await client.get(f"/v1/routes?index={zeros}{b}&wait={wait}")
        elapsed = trio.current_time() - start
    assert response.status_code == 200
    assert response.json()["index"] == b
    assert 0.25 <= elapsed < DEADLINE


async def test_blocking_query_answers_at_once_when_behind_or_ahead(
    node: Open,
) -> None:
    running, client = await node()
    b = first_index(running)
    async with client:
        await client.put("/v1/routes/k", json={"target": "t"})
        with trio.fail_after(5):  # wait=30s would exceed this if it blocked
            behind = await client.get(f"/v1/routes?index={b}&wait=30s")
            ahead = await client.get(f"/v1/routes?index={b + 99}&wait=30s")
    assert behind.json()["index"] == b + 1
    assert ahead.json()["index"] == b + 1


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("index=-1", "index must be an integer in 0..2**64-1"),
        ("index=x", "index must be an integer in 0..2**64-1"),
        ("index=" + "9" * 21, "index must be an integer in 0..2**64-1"),
        (f"index={2**64}", "index must be an integer in 0..2**64-1"),
        ("index=%201", "index must be an integer in 0..2**64-1"),
        ("index=0&wait=soon", "wait must be a duration"),
        ("wait=10d", "wait must be a duration"),
        # no spaces, as for every number of the query (audit, session 14)
        ("wait=%201s", "wait must be a duration"),
        ("wait=1s%20", "wait must be a duration"),
        ("wait=.s", "wait must be a duration"),
    ],
)
async def test_bad_watch_parameters_are_400(
    node: Open, query: str, message: str
) -> None:
    running, client = await node()
    async with client:
        response = await client.get(f"/v1/routes?{query}")
        assert response.status_code == 400
        assert message in response.json()["error"]
        if "wait" not in query:  # the stream takes no wait
            stream = await client.get(f"{STREAM_PATH}?{query}")
            assert stream.status_code == 400
            assert message in stream.json()["error"]
    counted = 'mesh_api_requests_total{code="400",method="GET",path="/v1/routes"}'
    await wait_for(lambda: counted in running.agent.metrics.render().decode())


async def test_watchers_are_bounded(node: Open) -> None:
    running, client = await node(watch_max_clients=1)
    b = first_index(running)
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(client.get, f"/v1/routes?index={b}&wait=30s")
        await wait_for(lambda: running.watch.clients == 1)
        refused = await client.get(f"/v1/routes?index={b}&wait=30s")
        refused_stream = await client.get(STREAM_PATH)
        assert refused.status_code == 429
        assert refused_stream.status_code == 429
        assert "watch_max_clients=1" in refused.json()["error"]
        await client.put("/v1/routes/k", json={"target": "t"})  # frees the slot
    scrape = running.agent.metrics.render().decode()
    assert 'mesh_route_watch_dropped_total{reason="too_many"} 2.0' in scrape


#: "promptly": a disconnect must free its slot well within this (the old
#: behaviour held it for the whole wait, or until the next heartbeat)
PROMPTLY = 2.0


def watchers_gauge(running: RunningAgent) -> float | None:
    return running.agent.metrics.registry.get_sample_value("mesh_route_watchers")


@pytest.mark.parametrize(
    "target", ["/v1/routes?index={b}&wait=60s", "/v1/routes?wait=60s", STREAM_PATH]
)
async def test_a_watcher_whose_client_left_frees_its_slot_at_once(
    node: Open, target: str
) -> None:
    running, client = await node(watch_max_clients=1)
    b = first_index(running)
    target = target.format(b=b)
    host, port = running.addresses.http
    sock = await trio.open_tcp_stream(host, port)
    await sock.send_all(f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await wait_for(lambda: running.watch.clients == 1)
    assert watchers_gauge(running) == 1
    async with client:
        refused = await client.get(f"/v1/routes?index={b}&wait=1ms")
        assert refused.status_code == 429
        await sock.aclose()  # the client goes (killed, timed out)
        await wait_for(lambda: running.watch.clients == 0, PROMPTLY)
        assert watchers_gauge(running) == 0
        again = await client.get(f"/v1/routes?index={b}&wait=1ms")
        assert again.status_code == 200
    if target.startswith("/v1/routes"):
        gone = running.agent.metrics.registry.get_sample_value(
            "mesh_api_requests_total",
            {"method": "GET", "path": "/v1/routes", "code": "499"},
        )
        assert gone == 1


async def test_a_watcher_with_a_pipelined_request_keeps_its_slot(node: Open) -> None:
    # The next request on the connection is not a disconnect: the query goes
    # on waiting, then both are answered in order.
    running, client = await node()
    b = first_index(running)
    host, port = running.addresses.http
    sock = await trio.open_tcp_stream(host, port)
    try:
        await sock.send_all(
            f"GET /v1/routes?index={b}&wait=30s HTTP/1.1\r\nhost: x\r\n\r\n".encode()
        )
        await wait_for(lambda: running.watch.clients == 1)
        await sock.send_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        with trio.fail_after(DEADLINE):
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert running.watch.clients == 1
        async with client:
            await client.put("/v1/routes/k", json={"target": "t"})
        with trio.fail_after(DEADLINE):
            bodies = await read_json_responses(sock, 2)
    finally:
        await sock.aclose()
    assert [r["key"] for r in bodies[0]["routes"]] == ["k"]
    assert bodies[1]["status"] == "ok"


async def read_json_responses(
    sock: trio.SocketStream, count: int
) -> list[dict[str, Any]]:
    """``count`` JSON bodies from a keep-alive connection, in order."""
    conn = h11.Connection(h11.CLIENT)
    bodies: list[dict[str, Any]] = []
    body = b""
    while len(bodies) < count:
        if conn.our_state is h11.IDLE:  # h11 parses what answers a request
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            conn.send(h11.EndOfMessage())
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await sock.receive_some(65536))
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            bodies.append(json.loads(body))
            body = b""
            conn.start_next_cycle()
    return bodies


async def test_head_on_watch_endpoints_answers_at_once(node: Open) -> None:
    running, client = await node(watch_max_clients=1)
    b = first_index(running)
    async with client:
        with trio.fail_after(5):  # a HEAD that waited would take 60 s
            stream = await client.head(STREAM_PATH)
            query = await client.head(f"/v1/routes?index={b}&wait=60s")
            listing = await client.get("/v1/routes")
            bad = await client.head(f"{STREAM_PATH}?index=x")
        assert running.watch.clients == 0  # no slot taken
        assert stream.status_code == 200
        assert stream.headers["content-type"] == "application/x-ndjson"
        assert stream.headers["x-mesh-index"] == str(b)
        assert stream.headers["transfer-encoding"] == "chunked"  # as GET's
        assert query.status_code == 200
        assert query.headers == listing.headers
        assert bad.status_code == 400
        # full: HEAD gets the 429 a GET would, without being counted a watcher
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.get, f"/v1/routes?index={b}&wait=30s")
            await wait_for(lambda: running.watch.clients == 1)
            assert (await client.head(STREAM_PATH)).status_code == 429
            assert (await client.head("/v1/routes?wait=5s")).status_code == 429
            await client.put("/v1/routes/k", json={"target": "t"})  # frees it
    scrape = running.agent.metrics.render().decode()
    assert 'mesh_route_watch_dropped_total{reason="too_many"}' not in scrape
    assert 'method="HEAD",path="/v1/watch/routes"' in scrape


class NdjsonStream:
    """A raw HTTP/1.1 client for one stream, on h11: httpx's nested async
    generators cannot all be closed, and trio warns (an error here) when one
    is collected unfinished."""

    def __init__(self, sock: trio.SocketStream) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)
        self.buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        #: bytes asked of the socket per read, and the pause before each
        #: (a client reading slowly but steadily)
        self.read_size = 65536
        self.pace = 0.0

    @classmethod
    async def open(
        cls, running: RunningAgent, target: str, *, receive_buffer: int = 0
    ) -> NdjsonStream:
        """The stream of ``target``, its head read; ``receive_buffer``: the
        SO_RCVBUF to connect with (0: the system's), so that the kernel does
        not read ahead for a slow client."""
        host, port = running.addresses.http
        if receive_buffer:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            raw = trio.socket.socket(family, socket.SOCK_STREAM)
            # before connecting: the window is announced in the handshake
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            await raw.connect((host, port))
            stream = cls(trio.SocketStream(raw))
        else:
            stream = cls(await trio.open_tcp_stream(host, port))
        request = h11.Request(
            method="GET", target=target, headers=[("host", f"{host}:{port}")]
        )
        data = stream.conn.send(request) or b""
        data += stream.conn.send(h11.EndOfMessage()) or b""
        await stream.sock.send_all(data)
        while True:
            event = await stream._event()
            if isinstance(event, h11.Response):
                stream.status = event.status_code
                stream.headers = {k.decode(): v.decode() for k, v in event.headers}
                return stream

    async def _event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                if self.pace:
                    await trio.sleep(self.pace)  # the pacing under test
                data = await self.sock.receive_some(self.read_size)
                self.conn.receive_data(data)
                continue
            return event

    async def next_event(self) -> dict[str, Any]:
        """The next NDJSON document, within the test's deadline."""
        with trio.fail_after(DEADLINE):
            while b"\n" not in self.buffer:
                event = await self._event()
                assert isinstance(event, h11.Data), event
                self.buffer += bytes(event.data)
        line, self.buffer = self.buffer.split(b"\n", 1)
        document: dict[str, Any] = json.loads(line)
        return document

    async def aclose(self) -> None:
        await self.sock.aclose()


async def test_stream_snapshot_then_changes(node: Open) -> None:
    running, client = await node()
    b = first_index(running)
    async with client:
        await client.put("/v1/routes/a", json={"target": "ta"})
        stream = await NdjsonStream.open(running, STREAM_PATH)
        try:
            assert stream.status == 200
            assert stream.headers["content-type"] == "application/x-ndjson"
            snapshot = await stream.next_event()
            assert snapshot["event"] == "snapshot"
            assert snapshot["index"] == b + 1
            assert [r["key"] for r in snapshot["routes"]] == ["a"]
            await client.put("/v1/routes/b", json={"target": "tb"})
            put = await stream.next_event()
            await client.delete("/v1/routes/a")
            delete = await stream.next_event()
        finally:
            await stream.aclose()
    assert put["event"] == "put"
    assert put["index"] == b + 2
    assert put["route"]["key"] == "b"
    assert put["route"]["target"] == "tb"
    assert delete["event"] == "delete"
    assert delete["key"] == "a"
    assert delete["index"] == b + 3


async def test_stream_resumes_from_index(node: Open) -> None:
    running, client = await node()
    b = first_index(running)
    async with client:
        for key in ("a", "b", "c"):
            await client.put(f"/v1/routes/{key}", json={"target": "t"})
    stream = await NdjsonStream.open(running, f"{STREAM_PATH}?index={b + 1}")
    try:
        events = [await stream.next_event() for _ in range(2)]
    finally:
        await stream.aclose()
    # The changes after the first (no snapshot), each with its own index.
    assert [(e["event"], e["index"], e["route"]["key"]) for e in events] == [
        ("put", b + 2, "b"),
        ("put", b + 3, "c"),
    ]


async def test_a_stream_resumed_at_the_current_index_answers_at_once(
    node: Open,
) -> None:
    # Nothing to send yet: the head used to wait for the first line (the
    # next change or heartbeat), and clients with a header timeout gave up.
    running, client = await node(watch_heartbeat_interval=60.0)
    b = first_index(running)
    async with client:
        await client.put("/v1/routes/a", json={"target": "t"})
    with trio.move_on_after(5.0):
        stream = await NdjsonStream.open(running, f"{STREAM_PATH}?index={b + 1}")
        try:
            assert stream.status == 200
            assert stream.headers["x-mesh-index"] == str(b + 1)
        finally:
            await stream.aclose()
        return
    pytest.fail("no response head within 5 s")


async def test_stream_prefix_and_heartbeat(node: Open) -> None:
    running, client = await node(watch_heartbeat_interval=0.2)
    b = first_index(running)
    async with client:
        stream = await NdjsonStream.open(running, f"{STREAM_PATH}?prefix=svc.")
        try:
            assert (await stream.next_event())["event"] == "snapshot"
            await client.put("/v1/routes/other", json={"target": "t"})
            await client.put("/v1/routes/svc.a", json={"target": "t"})
            event = await stream.next_event()
            while event["event"] == "heartbeat":
                event = await stream.next_event()
            assert event["route"]["key"] == "svc.a"
            heartbeat = await stream.next_event()
        finally:
            await stream.aclose()
    assert heartbeat == {"event": "heartbeat", "index": b + 2}


async def test_stream_refuses_a_repeated_query_parameter(node: Open) -> None:
    _, client = await node()
    async with client:
        response = await client.get(f"{STREAM_PATH}?prefix=a&prefix=b")
    assert response.status_code == 400
    assert "given twice: prefix" in response.json()["error"]


async def test_stream_ends_when_agent_leaves(node: Open) -> None:
    running, _ = await node()
    stream = await NdjsonStream.open(running, STREAM_PATH)
    try:
        assert (await stream.next_event())["event"] == "snapshot"
        running.agent.request_shutdown()
        with trio.fail_after(DEADLINE):
            event = await stream._event()
            while isinstance(event, h11.Data):
                event = await stream._event()
        assert isinstance(event, h11.EndOfMessage)
    finally:
        await stream.aclose()


def slow_drops(agent: Agent) -> float | None:
    return agent.metrics.registry.get_sample_value(
        "mesh_route_watch_dropped_total", {"reason": "slow"}
    )


#: a batch far bigger than what the sockets' buffers hold (300 puts of
#: ~1.1 KB: ~330 KB, once all sent to the client in writes of 256 lines)
BIG_BATCH = [Write(f"k{i:03d}", "http://" + "t" * 1000) for i in range(300)]


async def test_a_stream_reading_slowly_but_steadily_is_not_dropped(
    node: Open,
) -> None:
    # watch_send_timeout bounded one write of a whole batch (256 lines), so a
    # client reading all along, but taking longer than it for the batch, was
    # dropped as "slow" (one that stops reading is: the test below). Through
    # real sockets: the stream's pieces must be the socket's writes. (How
    # much a kernel buffers for a client with a full window varies; the
    # virtual-time test below does not depend on it.)
    running, _ = await node(watch_send_timeout=1.0, watch_heartbeat_interval=60.0)
    agent = running.agent
    stream = await NdjsonStream.open(running, STREAM_PATH, receive_buffer=4096)
    try:
        assert (await stream.next_event())["event"] == "snapshot"
        start = agent.core.routes.index
        # 4 KiB at a time, steadily: a batch's worth takes longer than the
        # timeout, a piece's worth far less.
        stream.read_size, stream.pace = 4096, 0.02
        agent.write_routes(BIG_BATCH)
        events = [await stream.next_event() for _ in BIG_BATCH]
    finally:
        await stream.aclose()
    assert [(e["event"], e["index"], e["route"]["key"]) for e in events] == [
        ("put", start + 1 + i, w.key) for i, w in enumerate(BIG_BATCH)
    ]
    assert slow_drops(agent) is None


async def test_a_stream_whose_client_stopped_reading_is_dropped(
    node: Open,
) -> None:
    running, _ = await node(watch_send_timeout=0.5, watch_heartbeat_interval=60.0)
    stream = await NdjsonStream.open(running, STREAM_PATH, receive_buffer=4096)
    try:
        assert (await stream.next_event())["event"] == "snapshot"
        assert running.watch.clients == 1
        running.agent.write_routes(BIG_BATCH)  # and the client reads no more
        await wait_for(lambda: running.watch.clients == 0)
    finally:
        await stream.aclose()
    assert slow_drops(running.agent) == 1


# --- the change log in isolation ---


def test_parse_wait() -> None:
    assert parse_wait("30s", 300) == 30
    assert parse_wait("500ms", 300) == 0.5
    assert parse_wait("2m", 300) == 120
    assert parse_wait("1h", 300) == 300  # clamped
    assert parse_wait("1.5", 300) == 1.5
    assert parse_wait(None, 300) == 300


async def test_log_overflow_forces_resync(make_agent: MakeAgent) -> None:
    agent = make_agent(watch_log_max=2)
    hub = RouteWatchHub(agent)
    watcher = hub.watcher()
    assert (await watcher.next()).snapshot
    for key in ("a", "b", "c"):
        agent.put_route(key, "t", {}, None)
    assert hub.events_after(0) is None  # three changes past a log of two
    assert [e.index for e in hub.events_after(1) or []] == [2, 3]
    batch = await watcher.next()
    assert batch.snapshot
    assert [r.key for r in batch.routes] == ["a", "b", "c"]
    assert batch.index == 3
    scrape = agent.metrics.render().decode()
    assert 'mesh_route_watch_dropped_total{reason="resync"} 1.0' in scrape


async def test_tombstone_reaped_is_a_delete(make_agent: MakeAgent) -> None:
    agent = make_agent()
    hub = RouteWatchHub(agent)
    table = agent.core.routes
    agent.put_route("a", "t", {}, None)
    table.write("a", "", {}, revision=None, wall_ms=1, deleted=True)
    # A reaped tombstone disappears from the table: the log reports it
    # deleted (with no route).
    assert table.collect(horizon_ms=2**62) == 1
    events = hub.events_after(2)
    assert events is not None
    assert [(e.index, e.key, e.deleted, e.route) for e in events] == [
        (3, "a", True, None)
    ]


async def test_every_event_of_a_batch_has_its_own_index(make_agent: MakeAgent) -> None:
    # Each event carried its batch's last index, so a client resuming after
    # the 10th event of 100 (as documented) lost the other 90.
    agent = make_agent()
    hub = RouteWatchHub(agent)
    agent.write_routes([Write(f"k{i:03d}", "http://t") for i in range(100)])
    events = hub.events_after(0)
    assert events is not None
    assert [e.index for e in events] == list(range(1, 101))
    resumed = hub.events_after(events[9].index)
    assert resumed is not None
    assert [e.key for e in resumed] == [f"k{i:03d}" for i in range(10, 100)]
    watcher = hub.watcher(index=events[9].index)
    batch = await watcher.next()
    assert not batch.snapshot
    assert [e.index for e in batch.events] == list(range(11, 101))


async def test_slow_stream_is_dropped(make_agent: MakeAgent) -> None:
    agent = make_agent(watch_send_timeout=0.2)
    hub = RouteWatchHub(agent)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message["body"]:
            await trio.sleep_forever()  # a client that never reads

    async def receive() -> Message:
        await trio.sleep_forever()
        raise AssertionError

    scope = {"type": "http", "method": "GET", "path": STREAM_PATH, "query_string": b""}
    with trio.fail_after(DEADLINE):
        status = await serve_stream(hub, scope, receive, send)
    assert status == 200
    assert hub.clients == 0
    scrape = agent.metrics.render().decode()
    assert 'mesh_route_watch_dropped_total{reason="slow"} 1.0' in scrape


def test_a_stream_is_sent_in_bounded_pieces() -> None:
    # The same bytes, in pieces of SEND_PIECE_BYTES but the last: short lines
    # share a piece, a long one (a snapshot) spans several.
    size = SEND_PIECE_BYTES
    cases: list[list[bytes]] = [
        [],
        [b"a\n"],
        [b"x" * (size - 1) + b"\n"],
        [b"x" * size + b"\n", b"y\n"],
        [b"s" * (3 * size + 7) + b"\n"],
        [b"%d\n" % i * 97 for i in range(2000)],
    ]
    for lines in cases:
        pieces = list(_pieces(lines, size))
        assert b"".join(pieces) == b"".join(lines)
        assert all(len(p) == size for p in pieces[:-1])
        assert all(0 < len(p) <= size for p in pieces[-1:])


async def test_a_stream_is_timed_by_what_its_client_takes_in(
    make_agent: MakeAgent, autojump_clock: trio.testing.MockClock
) -> None:
    # A client taking in 64 KiB/s all along, whatever the size of the writes
    # (virtual time: the same pace on any machine and kernel). With a 1 s
    # watch_send_timeout, a 300 KB batch handed over in one write took it
    # more than 4 s, and it was dropped as "slow" while reading all along.
    agent = make_agent(watch_send_timeout=1.0, watch_heartbeat_interval=600.0)
    hub = RouteWatchHub(agent)
    rate = 64 * 1024
    body = bytearray()
    biggest = 0
    done = trio.Event()
    ended: list[int] = []

    async def send(message: Message) -> None:
        nonlocal biggest
        if message["type"] == "http.response.body":
            piece = message.get("body", b"")
            biggest = max(biggest, len(piece))
            await trio.sleep(len(piece) / rate)
            body.extend(piece)
            if body.count(b"\n") == 1 + len(BIG_BATCH):
                done.set()

    async def receive() -> Message:
        await done.wait()  # the client leaves once it has every event
        return {"type": "http.disconnect"}

    async def serve() -> None:
        ended.append(await serve_stream(hub, scope, receive, send))

    scope = {"type": "http", "method": "GET", "path": STREAM_PATH, "query_string": b""}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await wait_for(lambda: body.count(b"\n") == 1)  # the snapshot
        start = agent.core.routes.index
        agent.write_routes(BIG_BATCH)
        await wait_for(lambda: bool(ended))
    assert slow_drops(agent) is None
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines[0]["event"] == "snapshot"
    assert [(e["index"], e["route"]["key"]) for e in lines[1:]] == [
        (start + 1 + i, w.key) for i, w in enumerate(BIG_BATCH)
    ]
    assert biggest <= SEND_PIECE_BYTES


def test_an_index_is_added_to_a_list_answer_that_lacks_it() -> None:
    body = b'{"routes":[{"key":"a"}],"count":1}'
    assert _with_index(body, 7) == b'{"routes":[{"key":"a"}],"count":1,"index":7}'
    assert _with_index(b"{}", 0) == b'{"index":0}'
    assert json.loads(_with_index(b'{"count": 0}', 2)) == {"count": 0, "index": 2}


@pytest.mark.parametrize("n", [0, 1, LIST_SLICE_ROUTES, 2 * LIST_SLICE_ROUTES + 5])
async def test_the_snapshot_line_is_the_documents_encoding_in_slices(n: int) -> None:
    # A stream opened on a big table encoded its whole snapshot in one go
    # (100,000 routes: most of a second with the loop held).
    routes = [
        Route(f"k{i}", f"http://t/{i}\u00e9", {"m": "\u2603"}, Version(1, i, "n1"))
        for i in range(n)
    ]
    expected = _line(
        {
            "event": "snapshot",
            "index": 9,
            "routes": [r.to_json() for r in routes],
        }
    )
    ticks = 0
    running = True

    async def other_task() -> None:
        nonlocal ticks
        while running:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        await trio.lowlevel.checkpoint()  # it has started
        before = ticks
        line = await snapshot_line(9, routes)
        others_ran = ticks > before
        running = False
    assert line == expected
    # Between slices, and only then, the loop runs other tasks.
    assert others_ran is (n > LIST_SLICE_ROUTES)

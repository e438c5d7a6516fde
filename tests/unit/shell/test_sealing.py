"""Sealing in the shell: the peer app behind authentication (in-process ASGI),
the peer client talking to it, sealed UDP on real loopback sockets, the API
token wrapper and the keyring API."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator

import httpx
import msgpack
import pytest
import trio

from mesh.codec import decode_packet, encode_packet, encode_push_pull
from mesh.messages import Ack, MemberState, MemberStatus, Ping, PushPull
from mesh.security import Kind, decode_key, encode_key, fingerprint
from mesh.shell.agent import Agent
from mesh.shell.api import make_api_app
from mesh.shell.asgi import ASGIApp, Message, Scope
from mesh.shell.auth import require_token
from mesh.shell.keyring_api import keyring_endpoints, peer_keyring_route
from mesh.shell.peer_http import (
    EXCHANGE_PATH,
    KEYRING_PATH,
    PING_PATH,
    PeerClient,
    make_peer_app,
)
from mesh.shell.udp import UdpEndpoint

from .conftest import MakeAgent, local_config

K1 = encode_key(bytes(range(32)))
K2 = encode_key(bytes(range(100, 116)))
OTHER = encode_key(bytes(range(50, 82)))


def failures(agent: Agent, channel: str, reason: str) -> float:
    value = agent.metrics.registry.get_sample_value(
        "mesh_auth_failures_total", {"channel": channel, "reason": reason}
    )
    return value or 0.0


def peer_app(agent: Agent) -> ASGIApp:
    app = make_peer_app(
        name=agent.core.name,
        handle_exchange=agent.handle_exchange,
        metrics=agent.metrics,
        log=agent.log,
        max_members=100,
    )
    app.routes.append(peer_keyring_route(agent))
    return agent.sealer.wrap_peer_app(app)


def client_for(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://peer.test"
    )


def peer_client(agent: Agent, http: httpx.AsyncClient) -> PeerClient:
    return PeerClient(
        http,
        metrics=agent.metrics,
        log=agent.log,
        tcp_timeout=agent.config.tcp_timeout,
        max_members=100,
        sealer=agent.sealer,
    )


REQUEST = PushPull(
    join=True,
    members=(MemberState("b", ("127.0.0.2", 7946), 3, MemberStatus.ALIVE, {}),),
)


# --- peer HTTP ---


async def test_unsealed_peer_request_is_401_and_never_parsed(
    make_agent: MakeAgent,
) -> None:
    server = make_agent("a", encrypt=K1)
    async with client_for(peer_app(server)) as http:
        response = await http.post(EXCHANGE_PATH, content=encode_push_pull(REQUEST))
    assert response.status_code == 401
    assert "error" in response.json()
    assert failures(server, "peer_http", "unsealed") == 1
    assert "b" not in {v.name for v in server.core.members()}


async def test_wrong_key_is_401(make_agent: MakeAgent) -> None:
    server = make_agent("a", encrypt=K1)
    stranger = make_agent("b", encrypt=OTHER)
    async with client_for(peer_app(server)) as http:
        replies = await peer_client(stranger, http).exchange(("127.0.0.1", 1), REQUEST)
    assert replies == []
    assert failures(server, "peer_http", "auth_failed") == 1
    assert "b" not in {v.name for v in server.core.members()}


async def test_sealed_exchange_works_and_answer_is_bound(make_agent: MakeAgent) -> None:
    server = make_agent("a", encrypt=K1)
    client = make_agent("b", encrypt=K1)
    seen: list[httpx.Response] = []

    async def record(response: httpx.Response) -> None:
        await response.aread()
        seen.append(response)

    app = peer_app(server)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://peer.test",
        event_hooks={"response": [record]},
    ) as http:
        replies = await peer_client(client, http).exchange(("127.0.0.1", 1), REQUEST)
    assert len(replies) == 1
    assert "a" in {m.name for m in replies[0].members}
    assert "b" in {v.name for v in server.core.members()}
    # The answer is sealed: opening it as the answer to another request fails.
    body = seen[0].content
    with pytest.raises(Exception, match="no installed key"):
        client.sealer.keyring.open(body, kind=Kind.RESPONSE, bind=b"\x00" * 12)  # type: ignore[union-attr]


async def test_replayed_request_is_401(make_agent: MakeAgent) -> None:
    server = make_agent("a", encrypt=K1)
    client = make_agent("b", encrypt=K1)
    body, _ = client.sealer.seal_request(
        "POST", EXCHANGE_PATH, encode_push_pull(REQUEST)
    )
    async with client_for(peer_app(server)) as http:
        first = await http.post(EXCHANGE_PATH, content=body)
        again = await http.post(EXCHANGE_PATH, content=body)
        # The same sealed body sent to another path is refused too.
        moved = await http.post("/mesh/v1/routes", content=body)
    assert first.status_code == 200
    assert again.status_code == 401
    assert moved.status_code == 401
    assert failures(server, "peer_http", "replay") == 1
    assert failures(server, "peer_http", "auth_failed") == 1


async def test_tcp_probe_needs_a_sealed_answer(make_agent: MakeAgent) -> None:
    server = make_agent("a", encrypt=K1)
    client = make_agent("b", encrypt=K1)
    plain = make_agent("a")  # answers 200 in plaintext: not a key holder
    async with client_for(peer_app(server)) as http:
        ok = await peer_client(client, http).probe(("127.0.0.1", 1), "a", 1e9)
    async with client_for(peer_app(plain)) as http:
        fake = await peer_client(client, http).probe(("127.0.0.1", 1), "a", 1e9)
    assert ok.value == "ack"
    assert fake.value == "failed"
    assert failures(client, "peer_response", "unsealed") == 1


async def test_peer_app_bounds_concurrent_requests(make_agent: MakeAgent) -> None:
    """Past peer_http_concurrency requests at once, more are refused (503) at
    once instead of buffering more bodies."""
    server = make_agent("a", encrypt=K1, peer_http_concurrency=1)
    app = peer_app(server)
    release = trio.Event()
    statuses: list[int] = []

    async def slow_receive() -> Message:
        await release.wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": EXCHANGE_PATH,
        "headers": [],
    }
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, scope, slow_receive, send)
        await trio.testing.wait_all_tasks_blocked()
        await app(scope, slow_receive, send)
        assert statuses == [503]
        release.set()
    assert statuses == [503, 401]
    assert failures(server, "peer_http", "busy") == 1


async def test_without_key_peer_app_passes_plaintext(make_agent: MakeAgent) -> None:
    server = make_agent("a")
    async with client_for(peer_app(server)) as http:
        response = await http.get(PING_PATH, params={"name": "a"})
    assert response.status_code == 200
    assert response.json() == {"name": "a"}


# --- UDP ---


@pytest.fixture
async def sealed_udp() -> AsyncIterator[
    tuple[Agent, trio.socket.SocketType, tuple[str, int]]
]:
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    addr = raw.getsockname()
    agent = Agent(
        local_config("udp-node", encrypt=K1), addr=addr, now=trio.current_time()
    )
    udp = UdpEndpoint(
        raw, metrics=agent.metrics, log=agent.log, max_messages=128, sealer=agent.sealer
    )
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        await peer.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            agent.attach(nursery=nursery, udp=udp, peers=None)
            nursery.start_soon(udp.serve, agent.receive)
            yield agent, peer, addr
            nursery.cancel_scope.cancel()
    udp.close()


async def test_udp_sealed_ping_gets_sealed_ack_and_replay_is_dropped(
    sealed_udp: tuple[Agent, trio.socket.SocketType, tuple[str, int]],
) -> None:
    agent, peer, addr = sealed_udp
    me = make_sealer_agent("peer", K1)
    ping = Ping(seq=7, target="udp-node", source="peer")
    sealed = me.sealer.seal_datagram(encode_packet([ping]))
    await peer.sendto(sealed, addr)
    assert await recv_ack(me, peer) == 7
    # The captured ping replayed, and a plaintext one: dropped and counted, not
    # answered. A fresh sealed ping after them is answered, and loopback keeps
    # order, so by its ack the two before it were handled.
    await peer.sendto(sealed, addr)
    await peer.sendto(encode_packet([ping]), addr)
    fresh = Ping(seq=8, target="udp-node", source="peer")
    await peer.sendto(me.sealer.seal_datagram(encode_packet([fresh])), addr)
    assert await recv_ack(me, peer) == 8
    assert failures(agent, "udp", "replay") == 1
    assert failures(agent, "udp", "unsealed") == 1


async def recv_ack(me: Agent, peer: trio.socket.SocketType) -> int:
    with trio.fail_after(5):
        data, _ = await peer.recvfrom(65535)
    opened = me.sealer.keyring.open(data, kind=Kind.DATAGRAM)  # type: ignore[union-attr]
    assert opened.sender == "udp-node"
    messages, _ = decode_packet(opened.payload)
    assert isinstance(messages[0], Ack)
    return messages[0].seq


def make_sealer_agent(name: str, key: str) -> Agent:
    return Agent(local_config(name, encrypt=key), addr=("127.0.0.1", 1), now=0.0)


# --- API token ---


async def test_api_token(make_agent: MakeAgent) -> None:
    agent = make_agent("a")
    app = require_token(make_api_app(agent), "s3cret", metrics=agent.metrics)
    async with client_for(app) as http:
        missing = await http.get("/v1/members")
        wrong = await http.get("/v1/members", headers={"authorization": "Bearer nope"})
        basic = await http.get("/v1/members", headers={"authorization": "Basic s3cret"})
        good = await http.get("/v1/members", headers={"authorization": "Bearer s3cret"})
        health = await http.get("/v1/health")
        leave = await http.post("/v1/leave")
    assert [r.status_code for r in (missing, wrong, basic, leave)] == [401] * 4
    assert missing.json() == {"error": "missing or invalid API token"}
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert good.status_code == 200
    assert health.status_code == 200
    assert not agent.shutdown_requested.is_set()
    assert failures(agent, "api", "missing_token") == 2
    assert failures(agent, "api", "bad_token") == 2


# --- keyring API ---


async def test_keyring_api_rotation_on_one_node(make_agent: MakeAgent) -> None:
    agent = make_agent("a", encrypt=K1)
    app = make_api_app(agent, routes=keyring_endpoints(agent))
    fp1, fp2 = fingerprint(decode_key(K1)), fingerprint(decode_key(K2))
    async with client_for(app) as http:
        listed = (await http.get("/v1/keyring")).json()
        assert listed == {"keys": [{"fingerprint": fp1, "primary": True}]}
        assert K1 not in json.dumps(listed)
        install = await http.post("/v1/keyring/install", json={"key": K2})
        assert install.status_code == 200
        assert install.json() == {"fingerprint": fp2, "results": {"a": "ok"}}
        remove_primary = await http.post("/v1/keyring/remove", json={"key": K1})
        assert remove_primary.status_code == 409
        use_unknown = await http.post("/v1/keyring/use", json={"key": OTHER})
        assert use_unknown.status_code == 409
        bad = await http.post("/v1/keyring/install", json={"key": "zz"})
        assert bad.status_code == 400
        extra = await http.post("/v1/keyring/install", json={"key": K2, "x": 1})
        assert extra.status_code == 400
        assert (await http.post("/v1/keyring/use", json={"key": K2})).status_code == 200
        assert (
            await http.post("/v1/keyring/remove", json={"key": K1})
        ).status_code == 200
        listed = (await http.get("/v1/keyring")).json()
    assert listed == {"keys": [{"fingerprint": fp2, "primary": True}]}
    assert all("error" in r.json() for r in (remove_primary, use_unknown, bad, extra))


async def test_keyring_api_without_encryption_is_409(make_agent: MakeAgent) -> None:
    agent = make_agent("a")
    app = make_api_app(agent, routes=keyring_endpoints(agent))
    async with client_for(app) as http:
        listed = await http.get("/v1/keyring")
        response = await http.post("/v1/keyring/install", json={"key": K2})
    assert response.status_code == 409
    assert (listed.status_code, listed.json()) == (409, response.json())


async def test_keyring_distributed_to_a_peer(make_agent: MakeAgent) -> None:
    server = make_agent("b", encrypt=K1)
    sender = make_agent("a", encrypt=K1)
    async with client_for(peer_app(server)) as http:
        client = peer_client(sender, http)
        assert (
            await client.keyring_op(("127.0.0.1", 1), "install", decode_key(K2)) == "ok"
        )
        result = await client.keyring_op(("127.0.0.1", 1), "remove", decode_key(K1))
        stranger = peer_client(make_agent("c", encrypt=OTHER), http)
        refused = await stranger.keyring_op(("127.0.0.1", 1), "use", decode_key(K2))
    assert decode_key(K2) in server.sealer.keyring  # type: ignore[operator]
    assert result.startswith("error 409")
    assert refused.startswith("unauthorized")
    assert server.sealer.keyring.primary == decode_key(K1)  # type: ignore[union-attr]


async def test_peer_keyring_body_is_checked(make_agent: MakeAgent) -> None:
    server = make_agent("b", encrypt=K1)
    sender = make_agent("a", encrypt=K1)
    async with client_for(peer_app(server)) as http:
        for plain in (
            b"\xc1",
            msgpack.packb({"op": "drop", "key": b"x" * 16}),
            msgpack.packb({"op": "install", "key": "text"}),
            msgpack.packb([1, 2]),
        ):
            body, _ = sender.sealer.seal_request("POST", KEYRING_PATH, plain)
            response = await http.post(KEYRING_PATH, content=body)
            assert response.status_code == 400
    assert len(server.sealer.keyring) == 1  # type: ignore[arg-type]


async def test_peer_app_bounds_buffered_bytes(make_agent: MakeAgent) -> None:
    """Bodies are held before they are authenticated: their total over all
    requests at once is bounded (503), a declared size over the limit is
    refused before reading (413)."""
    server = make_agent("a", encrypt=K1, peer_http_buffer_max=100)
    app = peer_app(server)
    assert await call(app, [b"x" * 60, b"x" * 60]) == 503
    assert await call(app, [b"x" * 50]) == 401  # read, then refused: not sealed
    assert failures(server, "peer_http", "busy") == 1
    assert server.sealer._buffered == 0
    # A declared 1 TiB body is refused before a byte is read.
    assert await call(app, [], content_length=2**40) == 413
    assert server_refused(server, "too_large") == 1  # counted (audit 15)


def server_refused(agent: Agent, reason: str) -> float:
    labels = {"side": "server", "reason": reason}
    value = agent.metrics.registry.get_sample_value(
        "mesh_exchange_errors_total", labels
    )
    return value or 0.0


async def call(app: ASGIApp, chunks: list[bytes], content_length: int = 0) -> int:
    """One POST straight through the ASGI app; the response status."""
    pending = list(chunks)
    statuses: list[int] = []

    async def receive() -> Message:
        if not pending:
            raise AssertionError("read past the body")
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))

    headers = [(b"content-length", str(content_length).encode())]
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": EXCHANGE_PATH,
        "headers": headers,
    }
    await app(scope, receive, send)
    return statuses[0]


def test_sealed_datagrams_fit_the_configured_size() -> None:
    """The core packs gossip into udp_buffer_size minus the envelope, so a
    sealed compound datagram stays within udp_buffer_size."""
    import trio

    from mesh.codec import encode_packet
    from mesh.config import Config
    from mesh.messages import Alive
    from mesh.security import overhead
    from mesh.shell.agent import Agent

    key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    name = "a-member-with-a-rather-long-name-of-48-characters"
    config = Config.local(name=name, encrypt=key)

    async def main() -> None:
        agent = Agent(config, addr=("127.0.0.1", 1), now=0.0)
        assert agent.core.datagram_budget == config.udp_buffer_size - overhead(name)
        m = agent.core.membership
        for i in range(200):  # far more gossip than one datagram holds
            m.on_alive(Alive(1, f"member-{i:04d}", ("127.0.0.2", 1000 + i), {}), 0.0)
        effects = agent.core.tick(1.0)
        sends = [e for e in effects if type(e).__name__ == "Send"]
        assert sends
        for send in sends:
            packet = encode_packet(send.messages)  # type: ignore[attr-defined]
            assert len(packet) + overhead(name) <= config.udp_buffer_size

    trio.run(main)


async def test_a_peer_body_too_slow_is_408_and_the_connection_closes(
    make_agent: MakeAgent,
) -> None:
    """The 408 came at tcp_timeout, but the connection stayed open for the
    server to drain the rest of the body, until http_io_timeout (audit 10:
    31 s for a 1 s bound): errors sent before the body was read close it."""
    from mesh.shell.http_server import ServerLimits, serve

    agent = make_agent(tcp_timeout=0.5)
    app = peer_app(agent)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = trio.Event()
    with sock:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve(
                    app,
                    sock,
                    shutdown_trigger=stop.wait,
                    limits=ServerLimits(io_timeout=30.0),
                    task_status=task_status,
                )
            )
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(
                b"POST /mesh/v1/routes HTTP/1.1\r\nhost: x\r\n"
                b"content-length: 100\r\n\r\n12345"
            )
            answer = b""
            with trio.fail_after(5):  # well under the io timeout
                while data := await stream.receive_some(65536):
                    answer += data
            await stream.aclose()
            stop.set()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer.lower()
    assert server_refused(agent, "body_timeout") == 1

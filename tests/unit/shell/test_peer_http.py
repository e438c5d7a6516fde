"""PeerClient: every peer failure becomes a result value, never an exception.

httpx.MockTransport stands in for peers (httpx's transport seam); a refused
connection needs a real closed port on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx
import pytest
import trio

from mesh.codec import encode_push_pull
from mesh.core.effects import TcpProbeResult
from mesh.messages import MemberState, MemberStatus, PushPull
from mesh.shell.agent import Agent
from mesh.shell.peer_http import EXCHANGE_PATH, PING_PATH, PeerClient

from .conftest import MakeAgent

Handler = Callable[[httpx.Request], httpx.Response]

REPLY = PushPull(
    join=False,
    members=(MemberState("peer", ("127.0.0.2", 7946), 4, MemberStatus.ALIVE, {}),),
)


def make_client(agent: Agent, handler: Handler | None = None) -> httpx.AsyncClient:
    if handler is None:
        return httpx.AsyncClient(trust_env=False, timeout=agent.config.tcp_timeout)
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def peer_client(agent: Agent, http: httpx.AsyncClient) -> PeerClient:
    return PeerClient(
        http,
        metrics=agent.metrics,
        log=agent.log,
        tcp_timeout=agent.config.tcp_timeout,
        max_members=agent.config.max_members,
    )


def errors(agent: Agent, reason: str) -> float:
    labels = {"side": "client", "reason": reason}
    value = agent.metrics.registry.get_sample_value(
        "mesh_exchange_errors_total", labels
    )
    return value or 0.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_probe_ack_only_on_200(make_agent: MakeAgent) -> None:
    agent = make_agent()
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        ok = request.url.params.get("name") == "there"
        return httpx.Response(200 if ok else 404)

    async with make_client(agent, handler) as http:
        client = peer_client(agent, http)
        deadline = trio.current_time() + 5
        ack = await client.probe(("127.0.0.2", 7946), "there", deadline)
        other = await client.probe(("127.0.0.2", 7946), "elsewhere", deadline)
    assert ack is TcpProbeResult.ACK
    assert other is TcpProbeResult.FAILED
    assert seen[0].path == PING_PATH
    assert seen[0].host == "127.0.0.2"


async def test_probe_refused_when_nothing_listens(make_agent: MakeAgent) -> None:
    agent = make_agent()
    async with make_client(agent) as http:
        result = await peer_client(agent, http).probe(
            ("127.0.0.1", closed_port()), "gone", trio.current_time() + 5
        )
    assert result is TcpProbeResult.REFUSED


async def test_probe_failed_at_deadline(
    make_agent: MakeAgent, autojump_clock: trio.testing.MockClock
) -> None:
    agent = make_agent()

    async def never(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with httpx.AsyncClient(transport=httpx.MockTransport(never)) as http:
        start = trio.current_time()
        result = await peer_client(agent, http).probe(
            ("127.0.0.2", 7946), "slow", start + 0.25
        )
        assert trio.current_time() == pytest.approx(start + 0.25)
    assert result is TcpProbeResult.FAILED


async def test_exchange_returns_decoded_reply(make_agent: MakeAgent) -> None:
    agent = make_agent()
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        assert request.url.path == EXCHANGE_PATH
        return httpx.Response(200, content=encode_push_pull(REPLY))

    request = PushPull(join=True, members=(), sender="self")
    async with make_client(agent, handler) as http:
        replies = await peer_client(agent, http).exchange(("127.0.0.2", 7946), request)
    assert [m.name for r in replies for m in r.members] == ["peer"]
    assert bodies == [encode_push_pull(request)]


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(500), "status_5xx"),
        (httpx.Response(404), "status_4xx"),
        (httpx.Response(200, content=b"\xc1"), "malformed"),
        (httpx.Response(200, content=b"\x93\x02\xc2\x90"), "bad_version"),
        (
            httpx.Response(200, headers={"content-length": str(2**40)}),
            "too_large",
        ),
    ],
)
async def test_exchange_failures_are_empty_and_counted(
    make_agent: MakeAgent, response: httpx.Response, reason: str
) -> None:
    agent = make_agent()
    async with make_client(agent, lambda request: response) as http:
        replies = await peer_client(agent, http).exchange(
            ("127.0.0.2", 7946), PushPull(join=False, members=())
        )
    assert replies == []
    assert errors(agent, reason) == 1


async def test_exchange_refused(make_agent: MakeAgent) -> None:
    agent = make_agent()
    async with make_client(agent) as http:
        replies = await peer_client(agent, http).exchange(
            ("127.0.0.1", closed_port()), PushPull(join=False, members=())
        )
    assert replies == []
    assert errors(agent, "refused") == 1


async def test_seed_name_exchanges_with_every_address(make_agent: MakeAgent) -> None:
    agent = make_agent()
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(200, content=encode_push_pull(REPLY))

    infos = await trio.socket.getaddrinfo("localhost", 7946, type=socket.SOCK_STREAM)
    expected = {str(info[4][0]) for info in infos}
    async with make_client(agent, handler) as http:
        replies = await peer_client(agent, http).exchange(
            "localhost:7946", PushPull(join=True, members=())
        )
    assert set(hosts) == expected
    assert len(replies) == len(expected)


async def test_unresolvable_seed_is_a_failure(make_agent: MakeAgent) -> None:
    agent = make_agent()
    async with make_client(agent, lambda request: httpx.Response(200)) as http:
        client = peer_client(agent, http)
        bad_name = await client.exchange(
            "no-such-host.invalid:7946", PushPull(join=True, members=())
        )
        bad_form = await client.exchange(
            "not an address", PushPull(join=True, members=())
        )
    assert bad_name == bad_form == []
    assert errors(agent, "resolve") == 2


async def test_a_seed_name_resolves_to_every_address(make_agent: MakeAgent) -> None:
    # What the core compares with its live members once a reconnect interval
    # (islands formed while members restarted merge through DNS seeds too).
    agent = make_agent()
    infos = await trio.socket.getaddrinfo("localhost", 7946, type=socket.SOCK_STREAM)
    expected = {(str(info[4][0]), 7946) for info in infos}
    async with make_client(agent) as http:
        client = peer_client(agent, http)
        assert set(await client.resolve("localhost:7946")) == expected
        assert await client.resolve("no-such-host.invalid:7946") == []

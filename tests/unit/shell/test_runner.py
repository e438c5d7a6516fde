"""Several run_agent instances in one trio process, on 127.0.0.1 with port 0:
they join, see each other alive, and see a graceful leave as ``left`` and a
crash as ``dead``. Conditions are polled through the client API under
``trio.fail_after``; nothing waits a fixed time and hopes."""

from __future__ import annotations

import io
import re
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import httpx
import pytest
import trio

from mesh.shell.net import format_address
from mesh.shell.runner import AgentAddresses, run_agent

from .conftest import local_config

#: generous: these run on a shared 2-core machine
DEADLINE = 15.0


@attrs.define
class Running:
    addresses: AgentAddresses
    stop: trio.Event
    done: trio.Event
    scope: trio.CancelScope

    @property
    def url(self) -> str:
        return f"http://{format_address(self.addresses.http)}"

    @property
    def seed(self) -> str:
        return format_address(self.addresses.advertise)


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start agents in the background; whatever is left is cancelled at the end."""
    async with trio.open_nursery() as nursery:

        async def start_agent(name: str, **overrides: Any) -> Running:
            config = local_config(name, **overrides)
            stop, done, scope = trio.Event(), trio.Event(), trio.CancelScope()

            async def run(task_status: trio.TaskStatus[AgentAddresses]) -> None:
                try:
                    with scope:
                        await run_agent(
                            config,
                            shutdown_trigger=stop,
                            handle_signals=False,
                            announce=None,
                            task_status=task_status,
                        )
                finally:
                    done.set()

            addresses: AgentAddresses = await nursery.start(run)
            return Running(addresses, stop, done, scope)

        yield start_agent
        nursery.cancel_scope.cancel()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as c:
        yield c


async def statuses(client: httpx.AsyncClient, agent: Running) -> dict[str, str]:
    response = await client.get(f"{agent.url}/v1/members")
    return {m["name"]: m["status"] for m in response.json()["members"]}


async def wait_until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll an agent's API until ``check`` holds (what a client can observe;
    the state lives behind HTTP, so there is no event to await)."""
    with trio.fail_after(DEADLINE):
        while not await check():  # noqa: ASYNC110 - polling a remote API
            await trio.sleep(0.05)


async def wait_statuses(
    client: httpx.AsyncClient, agents: list[Running], expected: dict[str, str]
) -> None:
    async def check() -> bool:
        for agent in agents:
            if await statuses(client, agent) != expected:
                return False
        return True

    await wait_until(check)


async def test_three_agents_join_and_see_each_other(
    start: Start, client: httpx.AsyncClient
) -> None:
    a = await start("a")
    b = await start("b", join=(a.seed,))
    c = await start("c", join=(a.seed,))
    everyone = {"a": "alive", "b": "alive", "c": "alive"}
    await wait_statuses(client, [a, b, c], everyone)
    for agent in (a, b, c):
        health = (await client.get(f"{agent.url}/v1/health")).json()
        assert health["joined"] is True
        assert health["members_alive"] == 3


async def test_graceful_leave_is_seen_as_left(
    start: Start, client: httpx.AsyncClient
) -> None:
    a = await start("a")
    b = await start("b", join=(a.seed,))
    c = await start("c", join=(a.seed,))
    await wait_statuses(client, [a, b, c], {"a": "alive", "b": "alive", "c": "alive"})
    c.stop.set()
    with trio.fail_after(DEADLINE):
        await c.done.wait()
    await wait_statuses(client, [a, b], {"a": "alive", "b": "alive", "c": "left"})


async def test_post_leave_stops_the_agent(
    start: Start, client: httpx.AsyncClient
) -> None:
    a = await start("a")
    b = await start("b", join=(a.seed,))
    await wait_statuses(client, [a, b], {"a": "alive", "b": "alive"})
    response = await client.post(f"{b.url}/v1/leave")
    assert response.json() == {"status": "leaving"}
    with trio.fail_after(DEADLINE):
        await b.done.wait()
    await wait_statuses(client, [a], {"a": "alive", "b": "left"})


async def test_crash_is_detected_as_dead(
    start: Start, client: httpx.AsyncClient
) -> None:
    a = await start("a")
    b = await start("b", join=(a.seed,))
    c = await start("c", join=(a.seed,))
    await wait_statuses(client, [a, b, c], {"a": "alive", "b": "alive", "c": "alive"})
    c.scope.cancel()  # no leave: sockets just close, as with SIGKILL
    with trio.fail_after(DEADLINE):
        await c.done.wait()
    await wait_statuses(client, [a, b], {"a": "alive", "b": "alive", "c": "dead"})


async def test_seed_by_dns_name(start: Start, client: httpx.AsyncClient) -> None:
    """``localhost:PORT`` resolves to every record; the one that answers wins."""
    a = await start("a")
    b = await start("b", join=(f"localhost:{a.addresses.advertise[1]}",))
    await wait_statuses(client, [a, b], {"a": "alive", "b": "alive"})


async def test_unreachable_seed_serves_and_reports_not_joined(
    start: Start, client: httpx.AsyncClient
) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    a = await start("a", join=(f"127.0.0.1:{port}",))
    health = (await client.get(f"{a.url}/v1/health")).json()
    assert health["joined"] is False
    assert health["status"] == "ok"


async def test_ready_line_and_started_record() -> None:
    out = io.StringIO()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        addresses: AgentAddresses = await nursery.start(
            lambda task_status: run_agent(
                local_config("ready"),
                shutdown_trigger=stop,
                handle_signals=False,
                announce=out,
                task_status=task_status,
            )
        )
        stop.set()
    assert addresses.mesh[1] != 0
    assert addresses.http[1] != 0
    assert addresses.advertise == addresses.mesh
    lines = out.getvalue().splitlines()
    assert lines == [
        f"mesh agent ready name=ready mesh=127.0.0.1:{addresses.mesh[1]} "
        f"http=127.0.0.1:{addresses.http[1]}"
    ]
    assert re.fullmatch(r"mesh agent ready name=\S+ mesh=\S+ http=\S+", lines[0])


class _ReadyWitness(io.StringIO):
    """Records SIGTERM's handler at the moment the ready line is written."""

    handler: object = None

    def write(self, text: str) -> int:
        self.handler = signal.getsignal(signal.SIGTERM)
        return super().write(text)


async def test_sigterm_is_handled_by_the_time_the_ready_line_is_out() -> None:
    """A supervisor may send SIGTERM as soon as it reads the ready line (mesh
    up's start-up stop does): SIGTERM's default action then would kill the
    agent without its graceful leave."""
    out = _ReadyWitness()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_agent(
                local_config("ready"),
                shutdown_trigger=stop,
                announce=out,
                task_status=task_status,
            )
        )
        stop.set()
    assert out.getvalue().startswith("mesh agent ready")
    assert out.handler not in (signal.SIG_DFL, signal.SIG_IGN, None)


async def test_udp_and_tcp_share_the_port(start: Start) -> None:
    a = await start("a")
    port = a.addresses.mesh[1]
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with (
            socket.socket(socket.AF_INET, kind) as probe,
            pytest.raises(OSError, match="in use"),
        ):
            probe.bind(("127.0.0.1", port))


async def test_port_in_use_raises_oserror(start: Start) -> None:
    a = await start("a")
    config = local_config("b", bind=("127.0.0.1", a.addresses.mesh[1]))
    with pytest.raises(OSError, match="in use"):
        await run_agent(config, handle_signals=False, announce=None)

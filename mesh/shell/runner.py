"""run_agent: bind, wire the shell around one core, serve until told to leave.

Start-up: bind the mesh port (TCP, then UDP on the same number) and the client
API port ourselves, so port 0 resolves before anything is announced; choose the
advertised address; create the core; start the UDP loop, the peer HTTP server,
the client API server and the timer loop; send the join; print the ready line.

Shutdown (SIGTERM/SIGINT, ``POST /v1/leave`` or the caller's ``shutdown_trigger``)
is a graceful leave: ``core.leave`` broadcasts our ``left``, and we keep serving
(gossiping it on probes and gossip rounds) until the core reports it transmitted
enough or ``tcp_timeout`` has passed; meanwhile, and at most ``push_deadline``
(the longest any batch may take), pending route pushes are flushed. Then we stop
the servers (in-flight requests get hypercorn's graceful timeout) and return. A
second signal skips both waits.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from functools import partial
from typing import TextIO, cast

import attrs
import hypercorn.trio
import trio
from hypercorn.typing import ASGIFramework

from ..config import Config
from ..messages import Address
from .agent import Agent
from .api import make_api_app
from .net import (
    advertise_address,
    bind_mesh_sockets,
    bind_tcp,
    format_address,
    resolve_bind,
)
from .peer_http import (
    SERVER_KEEP_ALIVE,
    hypercorn_config,
    make_peer_app,
    open_peer_client,
)
from .pusher import open_pusher
from .routes_api import routes_endpoints
from .udp import UdpEndpoint

__all__ = ["AgentAddresses", "ready_line", "run_agent"]


@attrs.frozen
class AgentAddresses:
    """Where a started agent listens; what ``task_status.started()`` hands back."""

    name: str
    #: the bound mesh port (UDP and TCP)
    mesh: Address
    #: the mesh address peers are told to use
    advertise: Address
    #: the bound client API address
    http: Address


def ready_line(addresses: AgentAddresses) -> str:
    """``mesh agent ready name=NAME mesh=HOST:PORT http=HOST:PORT``.

    ``mesh`` is the advertised address (what another agent passes to --join),
    ``http`` the bound API address; both carry the real ports when 0 was asked.
    Integration tests and ``mesh up`` parse this line: change it only on purpose.
    """
    return (
        f"mesh agent ready name={addresses.name} "
        f"mesh={format_address(addresses.advertise)} "
        f"http={format_address(addresses.http)}"
    )


async def run_agent(
    config: Config,
    *,
    shutdown_trigger: trio.Event | None = None,
    handle_signals: bool = True,
    announce: TextIO | None = sys.stdout,
    task_status: trio.TaskStatus[AgentAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one mesh agent until it has left the mesh.

    Args:
        config: the node's configuration.
        shutdown_trigger: set it to leave gracefully and return.
        handle_signals: leave on SIGTERM/SIGINT (main thread only; pass False
            when several agents share a process, as in tests).
        announce: where the ready line is printed (None: nowhere).
        task_status: receives the :class:`AgentAddresses` once listening.

    Raises:
        OSError: a port could not be bound.
    """
    with _naming("mesh", config.bind):
        family, mesh_addr = await resolve_bind(*config.bind)
        tcp_sock, udp_sock = bind_mesh_sockets(family, mesh_addr)
    try:
        with _naming("http", config.http):
            http_family, http_addr = await resolve_bind(*config.http)
            api_sock = bind_tcp(http_family, http_addr)
    except BaseException:
        tcp_sock.close()
        udp_sock.close()
        raise
    mesh_bound: Address = tcp_sock.getsockname()[:2]
    http_bound: Address = api_sock.getsockname()[:2]
    advertise = advertise_address(config.advertise, mesh_bound, family=family)
    # Wall-clock seconds as the first incarnation: a restarted process must
    # outrank gossip about its previous life (alive, suspect or dead at that
    # life's incarnation) at once, or peers would ignore its alive and keep it
    # dead until it refuted an accusation. The previous life started earlier
    # and bumped its incarnation only on refutation (rarely more than once a
    # second), so "now" is larger, without storing anything on disk.
    agent = Agent(
        config, addr=advertise, now=trio.current_time(), incarnation=int(time.time())
    )
    udp = UdpEndpoint(
        udp_sock,
        metrics=agent.metrics,
        log=agent.log,
        max_messages=config.max_compound_messages,
    )
    peer_app = make_peer_app(
        name=config.name,
        handle_exchange=agent.handle_exchange,
        metrics=agent.metrics,
        log=agent.log,
        max_members=config.max_members,
        handle_routes=agent.receive_routes,
        max_routes=config.push_batch_max,
    )
    api_app = make_api_app(agent, routes=routes_endpoints(agent))
    # Peers pool connections to our mesh port for push_keepalive_expiry; we keep
    # them open longer, so a peer never reuses one we are closing at that moment.
    peer_keep_alive = max(SERVER_KEEP_ALIVE, config.push_keepalive_expiry + 15.0)
    addresses = AgentAddresses(config.name, mesh_bound, advertise, http_bound)
    try:
        async with (
            open_peer_client(config, metrics=agent.metrics, log=agent.log) as peers,
            open_pusher(agent),
            trio.open_nursery() as nursery,
        ):
            agent.attach(nursery=nursery, udp=udp, peers=peers)
            nursery.start_soon(udp.serve, agent.receive)
            nursery.start_soon(agent.run_timers)
            if handle_signals:
                nursery.start_soon(_watch_signals, agent)
            if shutdown_trigger is not None:
                nursery.start_soon(_forward, shutdown_trigger, agent)
            stop_servers = trio.Event()
            async with trio.open_nursery() as servers:
                for app, sock, keep_alive in (
                    (peer_app, tcp_sock, peer_keep_alive),
                    (api_app, api_sock, SERVER_KEEP_ALIVE),
                ):
                    await servers.start(
                        partial(
                            hypercorn.trio.serve,
                            cast(ASGIFramework, app),
                            # hypercorn now owns sock
                            hypercorn_config(sock, keep_alive_timeout=keep_alive),
                            shutdown_trigger=stop_servers.wait,
                        )
                    )
                agent.start()
                agent.log.info(
                    "agent started",
                    mesh=format_address(mesh_bound),
                    advertise=format_address(advertise),
                    http=format_address(http_bound),
                    incarnation=agent.core.incarnation,
                    profile=config.profile,
                )
                if announce is not None:
                    print(ready_line(addresses), file=announce, flush=True)
                task_status.started(addresses)
                await agent.shutdown_requested.wait()
                agent.leave()
                await _wind_down(agent)
                stop_servers.set()
            nursery.cancel_scope.cancel()
    finally:
        udp.close()
        # No-ops once detached to hypercorn; closes them if we never got there.
        tcp_sock.close()
        api_sock.close()
    agent.log.info("agent stopped")


async def _wind_down(agent: Agent) -> None:
    """Let our leave spread and flush route pushes, both bounded, at once; a
    second signal (``agent.hurry``) cuts both short."""
    config = agent.config

    async def spread_leave() -> None:
        with trio.move_on_after(config.tcp_timeout):
            await agent.leave_done.wait()

    async def flush_pushes() -> None:
        with trio.move_on_after(config.push_deadline):
            await agent.flush_pushes()
        pushes = agent.core.pushes
        if pushes.depth() or pushes.in_flight():
            agent.log.info(
                "leaving with route pushes unflushed",
                queued=pushes.depth(),
                in_flight=pushes.in_flight(),
            )

    async with trio.open_nursery() as nursery:

        async def cut_short() -> None:
            await agent.hurry.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(cut_short)
        async with trio.open_nursery() as waits:
            waits.start_soon(spread_leave)
            waits.start_soon(flush_pushes)
        nursery.cancel_scope.cancel()


@contextlib.contextmanager
def _naming(what: str, addr: Address) -> Iterator[None]:
    """Say which address could not be bound: errno text alone does not."""
    try:
        yield
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot bind {what} address {format_address(addr)}: {exc.strerror or exc}",
        ) from exc


async def _forward(trigger: trio.Event, agent: Agent) -> None:
    await trigger.wait()
    agent.request_shutdown()


async def _watch_signals(agent: Agent) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not agent.shutdown_requested.is_set():
                agent.log.info(
                    "signal received; leaving", signal=signal.Signals(signum).name
                )
                agent.request_shutdown()
            else:
                # Impatient operator: stop waiting for the leave to spread
                # and for pushes to flush.
                agent.hurry.set()

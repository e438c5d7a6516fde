"""open_agent, run_agent: bind, wire the shell around one core, serve, leave.

:func:`open_agent` is the agent's whole life as an async context manager (the
embedding API builds on it); :func:`run_agent` adds signals, the ready line and
waiting for a shutdown request.

Start-up: bind the mesh port (TCP, then UDP on the same number) and the client
API port ourselves, so port 0 resolves before anything is announced; choose the
advertised address; create the core; start the UDP loop, the peer HTTP server,
the client API server and the timer loop; send the join; print the ready line.

Shutdown (SIGTERM/SIGINT, ``POST /v1/leave`` or the caller's ``shutdown_trigger``)
is a graceful leave: ``core.leave`` broadcasts our ``left``, and we keep serving
(gossiping it on probes and gossip rounds) until the core reports it transmitted
enough or ``tcp_timeout`` has passed; meanwhile, and at most ``push_deadline``
(the longest any batch may take), pending route pushes are flushed. Then we stop
the servers (in-flight requests get the server's graceful timeout) and return. A
second signal skips both waits.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import TextIO

import attrs
import trio

from ..config import Config
from ..messages import Address
from ..security import SourceThrottle
from . import http_server
from .ae_http import ae_route
from .agent import Agent
from .api import make_api_app
from .auth import load_api_token, require_token, server_ssl_context
from .http_server import ServerLimits
from .keyring_api import keyring_endpoints, peer_keyring_route
from .metrics import Metrics
from .net import (
    advertise_address,
    bind_mesh_sockets,
    bind_tcp,
    format_address,
    is_loopback_fallback,
    resolve_bind,
)
from .peer_http import make_peer_app, open_peer_client
from .pusher import open_pusher
from .routes_api import routes_endpoints
from .udp import UdpEndpoint
from .watch_api import RouteWatchHub

__all__ = ["AgentAddresses", "RunningAgent", "open_agent", "ready_line", "run_agent"]


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


@attrs.frozen
class RunningAgent:
    """A started agent, as :func:`open_agent` yields it."""

    agent: Agent
    addresses: AgentAddresses
    #: runs tasks for as long as the agent, through its graceful leave (the
    #: CLI's signal watcher must still hear a second signal then)
    nursery: trio.Nursery
    #: the route change log shared by the API's streams and the embedding API
    watch: RouteWatchHub


@contextlib.asynccontextmanager
async def open_agent(config: Config) -> AsyncIterator[RunningAgent]:
    """Bind, start and join; on exit, leave gracefully and stop everything.

    The whole life of an agent (sockets, servers, pusher, timers) as one async
    context manager, so the CLI (:func:`run_agent`) and an embedding trio
    application (:func:`mesh.open_node`) share the same start-up and the same
    graceful leave. Leaving the block normally runs the graceful leave (bounded
    by ``tcp_timeout`` and ``push_deadline``; set ``agent.hurry`` to cut it
    short); leaving it with an exception stops at once.

    Raises:
        OSError: a port could not be bound.
    """
    # Before binding: a bad token or TLS file fails clean.
    api_token = load_api_token(config)
    peer_tls = server_ssl_context(config, require_client_cert=True)
    api_tls = server_ssl_context(config, require_client_cert=False)
    with _naming("mesh", config.bind):
        family, mesh_addr = await resolve_bind(*config.bind)
        tcp_sock, udp_sock = bind_mesh_sockets(family, mesh_addr)
    try:
        # Listening at once: with SO_REUSEADDR the API's socket could bind
        # the mesh port too (``--bind localhost:P --http 127.0.0.1:P``; the
        # config refuses the plain spellings) and only its listen() would
        # fail, deep inside the servers' start-up. This way its bind fails,
        # and says which address.
        with _naming("mesh", config.bind):
            tcp_sock.listen()
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
    # The route change index starts at wall-clock microseconds for the same
    # reason: a watcher resuming with an index from the previous life is then
    # behind this life's change log and gets a snapshot, instead of this
    # life's changes after that number (which would skip what it missed). The
    # previous life would have to have applied over a million changes a second
    # to get ahead of it.
    wall = time.time_ns()
    agent = Agent(
        config,
        addr=advertise,
        now=trio.current_time(),
        incarnation=wall // 1_000_000_000,
        index_base=wall // 1000,
    )
    udp = UdpEndpoint(
        udp_sock,
        metrics=agent.metrics,
        log=agent.log,
        max_messages=config.max_compound_messages,
        sealer=agent.sealer,
        recv_batch=config.udp_recv_batch,
        recv_buffer=config.udp_recv_buffer,
        throttle=SourceThrottle(
            config.udp_refused_rate,
            config.udp_refused_burst,
            config.udp_throttle_sources,
        ),
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
    peer_app.routes.append(peer_keyring_route(agent))
    peer_app.routes.append(ae_route(agent))
    hub = RouteWatchHub(agent)
    api_app = make_api_app(
        agent, routes=[*routes_endpoints(agent), *keyring_endpoints(agent)], hub=hub
    )
    addresses = AgentAddresses(config.name, mesh_bound, advertise, http_bound)
    try:
        async with (
            open_peer_client(
                config, metrics=agent.metrics, log=agent.log, sealer=agent.sealer
            ) as peers,
            open_pusher(agent),
            trio.open_nursery() as nursery,
        ):
            agent.attach(nursery=nursery, udp=udp, peers=peers)
            nursery.start_soon(udp.serve, agent.receive)
            nursery.start_soon(agent.run_timers)
            stop_servers = trio.Event()
            async with trio.open_nursery() as servers:
                for server, app, sock, tls in (
                    # Sealing wraps the whole peer app: every endpoint, even
                    # one added later, is behind authentication and bounds.
                    (
                        "mesh",
                        agent.sealer.wrap_peer_app(peer_app),
                        tcp_sock,
                        peer_tls,
                    ),
                    (
                        "api",
                        api_app
                        if api_token is None
                        else require_token(
                            api_app,
                            api_token,
                            metrics=agent.metrics,
                            log=agent.log,
                            on_refused=api_app.observe_refusal,
                        ),
                        api_sock,
                        api_tls,
                    ),
                ):
                    await servers.start(
                        partial(
                            http_server.serve,
                            app,
                            sock,
                            shutdown_trigger=stop_servers.wait,
                            limits=ServerLimits(
                                keep_alive_timeout=config.http_keepalive_timeout,
                                header_timeout=config.http_header_timeout,
                                io_timeout=config.http_io_timeout,
                                max_header_bytes=config.http_max_header_bytes,
                                max_connections=config.http_max_connections,
                            ),
                            ssl_context=tls,
                            on_drop=partial(_count_drop, agent.metrics, server),
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
                if config.advertise is None and is_loopback_fallback(
                    mesh_bound, advertise
                ):
                    agent.log.warning(
                        "advertising a loopback address: members on other hosts "
                        "cannot reach this one (no other address found); set "
                        "--advertise",
                        advertise=format_address(advertise),
                    )
                try:
                    yield RunningAgent(agent, addresses, nursery, hub)
                except BaseException:
                    # The caller failed (or was cancelled): no graceful leave,
                    # the nurseries cancel what is left.
                    stop_servers.set()
                    nursery.cancel_scope.cancel()
                    raise
                agent.request_shutdown()
                agent.leave()
                await _wind_down(agent)
                stop_servers.set()
            nursery.cancel_scope.cancel()
    finally:
        agent.stop()
        udp.close()
        # The servers never close the sockets they serve: we do.
        tcp_sock.close()
        api_sock.close()
    agent.log.info("agent stopped")


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
    async with open_agent(config) as running:
        agent = running.agent
        if handle_signals:
            # Installed before the ready line: a supervisor may stop us the
            # moment it reads it, and SIGTERM's default action would kill the
            # agent without its leave (mesh up's start-up stop did, 1 run in 3).
            await running.nursery.start(_watch_signals, agent)
        if shutdown_trigger is not None:
            running.nursery.start_soon(_forward, shutdown_trigger, agent)
        if announce is not None:
            print(ready_line(running.addresses), file=announce, flush=True)
        task_status.started(running.addresses)
        await agent.shutdown_requested.wait()


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
            # A warning: peers that missed these get them by anti-entropy
            # from members that have them, but a write no other member got
            # leaves with this process (audit, session 14: it was at info)
            agent.log.warning(
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


async def _watch_signals(
    agent: Agent, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
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


def _count_drop(metrics: Metrics, server: str, reason: str) -> None:
    """A connection the server closed to keep its slots (http_server.serve)."""
    metrics.http_dropped.labels(server, reason).inc()

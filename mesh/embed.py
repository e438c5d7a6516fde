"""The embedding API: a mesh node inside a trio application.

``async with mesh.open_node(config) as node:`` runs exactly what ``mesh agent``
runs (:func:`mesh.shell.runner.open_agent`: the mesh port, the peer and client
HTTP servers, the pusher and the timers), in the caller's trio run, and leaves
the mesh gracefully when the block ends. So the guarantees are the agent's: a
write returns once committed here and queued for every peer, never waiting on
one unless asked (``sync_timeout``), deletes are tombstones, and the client API
stays available on ``node.http_address`` for the CLI, ``curl`` and
``/metrics``.

Reads are plain method calls on the node's own table (no HTTP, no await);
writes are ``async`` so the caller yields to the pusher and can wait for peers.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
import msgspec
import structlog
import trio

from .config import Config
from .core.routes import Outcome, OutcomeStatus, Route
from .errors import MeshError
from .logs import configure_logging
from .messages import MemberStatus
from .shell.agent import Agent
from .shell.net import format_address
from .shell.runner import RunningAgent, open_agent
from .shell.watch_api import RouteEvent, RouteWatcher, WatchBatch

__all__ = [
    "Member",
    "Node",
    "RouteEvent",
    "RouteError",
    "RouteWatch",
    "SyncResult",
    "WatchBatch",
    "open_node",
]


class RouteError(MeshError):
    """A write or delete the table refused: ``status`` is ``invalid``,
    ``conflict`` (``current`` is the stored route; None for the others),
    ``full`` or ``unavailable`` (the node has not joined or caught up yet, is
    in a name conflict, is leaving or has stopped); the HTTP API answers the
    same cases 400, 409, 507 and 503."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason or outcome.status.value)
        self.status = outcome.status.value
        conflict = outcome.status is OutcomeStatus.CONFLICT
        route = outcome.route
        self.current = _frozen(route) if conflict and route is not None else None


def _frozen(route: Route) -> Route:
    """``route`` as the caller may keep it: its meta a read-only view. The
    table's own entry is handed out, and its meta is a plain dict; changed
    in place, it changed the stored route under an unchanged version, so no
    round could ever repair the replicas (audit, session 14)."""
    if type(route.meta) is not dict:
        return route
    return msgspec.structs.replace(route, meta=types.MappingProxyType(route.meta))


def _frozen_event(event: RouteEvent) -> RouteEvent:
    if event.route is None:
        return event
    return RouteEvent(event.index, event.key, _frozen(event.route))


def _unavailable(reason: str) -> RouteError:
    return RouteError(Outcome(OutcomeStatus.UNAVAILABLE, None, reason))


_STOPPED = "this node has stopped: its open_node block is over"


def _check_str(name: str, value: object) -> None:
    """A TypeError that names the argument, rather than one from deep
    inside the table's comparisons."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


@attrs.frozen
class Member:
    """One member as this node sees it (``GET /v1/members`` as a record)."""

    name: str
    address: str
    status: MemberStatus
    incarnation: int
    tags: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class SyncResult:
    """Who acknowledged a write within ``sync_timeout`` (``?sync=all``)."""

    acked: list[str]
    pending: list[str]


class Node:
    """A running mesh node; get one from :func:`open_node`."""

    def __init__(self, running: RunningAgent) -> None:
        self._running = running
        self._agent = running.agent
        addresses = running.addresses
        self.name = addresses.name
        #: the mesh address peers use (pass it to another node's ``join``)
        self.address = format_address(addresses.advertise)
        #: the client API address (``mesh members --http ...``)
        self.http_address = format_address(addresses.http)
        #: who acknowledged the last write made with ``sync_timeout``
        self.last_sync: SyncResult | None = None
        #: a client asked the node to leave (``POST /v1/leave``): that is what
        #: ended the ``async with`` block
        self.leave_requested = False

    # --- reads ---

    def members(self) -> list[Member]:
        """Every member this node knows, sorted by name (itself included)."""
        return [
            Member(v.name, format_address(v.addr), v.status, v.incarnation, v.tags)
            for v in sorted(self._agent.core.members(), key=lambda v: v.name)
        ]

    def get_route(self, key: str) -> Route | None:
        """The live route under ``key``, None if absent or deleted."""
        _check_str("key", key)
        route = self._agent.core.routes.get(key)
        return None if route is None or route.deleted else _frozen(route)

    def routes(self, prefix: str = "") -> list[Route]:
        """Live routes whose key starts with ``prefix``, sorted by key."""
        _check_str("prefix", prefix)
        return list(map(_frozen, self._agent.core.routes.live(prefix)))

    @property
    def index(self) -> int:
        """This node's route change index (as ``X-Mesh-Index``)."""
        return self._agent.core.routes.index

    def health(self) -> dict[str, Any]:
        """``GET /v1/health``'s document, readiness included."""
        from .shell.api import readiness

        return {**self._agent.health(), **readiness(self._agent)}

    async def wait_ready(self) -> None:
        """Return once the node is ready (``health()["ready"]``): joined, its
        route table caught up with the mesh, no name conflict, not leaving.

        Writes before that raise :class:`RouteError` (``unavailable``): a
        node that has not pulled the mesh's table cannot know the revision a
        write inherits. Woken by every input the node handles, no polling;
        bound the wait with ``trio.fail_after``: a node none of whose seeds
        answers never gets ready.

        Raises:
            RouteError: ``unavailable``, once the node is leaving (or has
                left): it will not be ready again, so the wait would not end.
        """
        from .shell.api import readiness

        agent = self._agent
        while not readiness(agent)["ready"]:
            if agent.stopped:
                raise _unavailable(_STOPPED)
            if agent.shutdown_requested.is_set():
                raise _unavailable(
                    "this node is leaving the mesh: it will not be ready again"
                )
            await agent.wait_dispatch()

    # --- writes ---

    async def put_route(
        self,
        key: str,
        target: str,
        *,
        meta: Mapping[str, str] | None = None,
        revision: int | None = None,
        sync_timeout: float | None = None,
    ) -> Route:
        """Write a route: committed here and queued for every peer on return.

        With ``sync_timeout``, also wait at most that long for every member
        alive at the write to acknowledge it; :meth:`last_sync` tells who did.

        Raises:
            RouteError: invalid, an older ``revision`` than stored, or full.
        """
        self._check_write(sync_timeout)
        # A mapping is copied (the caller keeps theirs); anything else goes
        # to the table as given, which refuses it as the HTTP API does.
        fields: Any = {} if meta is None else meta
        if isinstance(fields, Mapping):
            fields = dict(fields)
        outcome = self._agent.put_route(key, target, fields, revision)
        return await self._after_write(outcome, sync_timeout)

    async def delete_route(
        self,
        key: str,
        *,
        revision: int | None = None,
        sync_timeout: float | None = None,
    ) -> Route:
        """Delete a route (a tombstone, replicated like a write); returns it.

        Raises:
            RouteError: invalid key, or an older ``revision`` than stored.
        """
        self._check_write(sync_timeout)
        outcome = self._agent.delete_route(key, revision)
        return await self._after_write(outcome, sync_timeout)

    def _check_write(self, sync_timeout: float | None) -> None:
        """Refuse a write to a stopped node (its table would change with
        nobody to push it), and a bad ``sync_timeout`` before writing, as the
        HTTP API does (400): raised after the commit, it would report a write
        that stands as failed (audit 11)."""
        if self._agent.stopped:
            raise _unavailable(_STOPPED)
        if sync_timeout is None:
            return
        maximum = self._agent.config.sync_timeout_max
        value: object = sync_timeout  # callers without a type checker pass anything
        if not (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and 0 < value <= maximum
        ):
            raise RouteError(
                Outcome(
                    OutcomeStatus.INVALID,
                    None,
                    f"sync_timeout must be a number of seconds in (0, {maximum}],"
                    f" got {sync_timeout!r}",
                )
            )

    async def _after_write(self, outcome: Outcome, sync_timeout: float | None) -> Route:
        if outcome.status is not OutcomeStatus.APPLIED or outcome.route is None:
            raise RouteError(outcome)
        agent = self._agent
        route = _frozen(outcome.route)
        if sync_timeout is None:
            self.last_sync = None
            await trio.lowlevel.checkpoint()  # let the pusher start
            return route
        # No checkpoint since the write: the ticket covers exactly it.
        ticket = agent.core.sync_ticket()
        with trio.move_on_after(sync_timeout):
            while agent.core.sync_status(ticket)[1] and not agent.stopped:
                await agent.wait_push_progress()
        self.last_sync = SyncResult(*agent.core.sync_status(ticket))
        return route

    # --- watching ---

    def watch_routes(self, prefix: str = "", *, index: int | None = None) -> RouteWatch:
        """An async iterator of :class:`WatchBatch`: first a snapshot (every
        live route under ``prefix``), then the changes, as the stream API
        sends them (a slow consumer gets larger batches or a fresh snapshot,
        never an unbounded backlog). Ends when the node leaves or stops."""
        _check_str("prefix", prefix)
        if index is not None and (type(index) is not int or index < 0):
            raise TypeError(f"index must be a non-negative int or None, got {index!r}")
        return RouteWatch(self._running.watch.watcher(index, prefix), self._agent)


class RouteWatch:
    """Async iterator over one watcher (see :meth:`Node.watch_routes`)."""

    def __init__(self, watcher: RouteWatcher, agent: Agent) -> None:
        self._watcher = watcher
        self._agent = agent

    def __aiter__(self) -> RouteWatch:
        return self

    async def __anext__(self) -> WatchBatch:
        # No nursery racing the leave: a cancelled ``anext`` raises a plain
        # Cancelled (with one, a group of two; audit, session 14). A leave
        # and a stop wake route watchers, as a change does. A checkpoint
        # first, never between taking a batch and handing it over (a cancel
        # there would lose it: the watcher has moved past it).
        agent = self._agent
        await trio.lowlevel.checkpoint()
        while True:
            if agent.shutdown_requested.is_set():
                raise StopAsyncIteration
            batch = self._watcher.poll()
            if batch is not None:
                break
            await agent.wait_routes_changed()
        return WatchBatch(
            batch.index,
            batch.snapshot,
            list(map(_frozen, batch.routes)),
            [_frozen_event(e) for e in batch.events],
        )


def open_node(config: Config) -> contextlib.AbstractAsyncContextManager[Node]:
    """Start a mesh node in the current trio run; leave gracefully on exit.

    Binds ``config.bind`` (UDP and TCP) and ``config.http``, joins
    ``config.join``, and serves until the ``async with`` block ends: then it
    announces its leave and flushes pending route pushes (bounded by
    ``tcp_timeout`` and ``push_deadline``) before returning. An exception out
    of the block skips the graceful part, and comes out of ``open_node`` as
    raised (not wrapped in exception groups by the node's nurseries).
    ``POST /v1/leave`` on the client API (``mesh leave``) ends the node as it
    ends ``mesh agent``: the block is cancelled at its next checkpoint, the
    node leaves gracefully, and ``open_node`` returns normally
    (:attr:`Node.leave_requested` tells the code after the block why).

    Raises:
        OSError: a port could not be bound.
    """
    return _open_node(config)


@contextlib.asynccontextmanager
async def _open_node(config: Config) -> AsyncIterator[Node]:
    if not structlog.is_configured():
        # structlog's unconfigured default prints every level, per-datagram
        # debug lines included; an application that configured structlog
        # itself keeps its own setup.
        configure_logging(log_format=config.log_format, log_level=config.log_level)
    failure: BaseException | None = None
    try:
        async with open_agent(config) as running, trio.open_nursery() as nursery:
            # Inside open_agent: the block cancelled by a leave request ends
            # here, and the agent sees a normal exit (its graceful leave).
            node = Node(running)
            nursery.start_soon(_end_on_leave, node, nursery.cancel_scope)
            try:
                yield node
            except BaseException as exc:
                failure = exc
                raise
            nursery.cancel_scope.cancel()  # the block ended: stop watching
    except BaseExceptionGroup as group:
        # The block's own exception comes back wrapped once per nursery it
        # crossed (trio's strict exception groups: four deep). Alone, it is
        # the caller's, and is given back as raised: ``except RuntimeError``
        # around ``async with open_node(...)`` works (audit 7). Anything else
        # in the group (a failure of the node itself) keeps the group. The
        # block's exception may be a group itself (a nursery of the caller's).
        if failure is None or not _wraps_only(group, failure):
            raise
    else:
        return
    # Raised outside the handler, so its own __cause__ and __context__ stay
    # as the application left them (not the group's).
    raise failure


async def _end_on_leave(node: Node, block: trio.CancelScope) -> None:
    """``POST /v1/leave`` (``mesh leave``) ends an embedded node as it ends
    ``mesh agent``: cancel the block, so the node leaves gracefully. Left
    running, the node said "leaving" but never left (audit 11): unready for
    good, still alive to every peer, still taking writes."""
    await node._agent.shutdown_requested.wait()
    node.leave_requested = True
    block.cancel()


def _wraps_only(
    group: BaseExceptionGroup[BaseException], failure: BaseException
) -> bool:
    """``group`` holds ``failure`` and nothing else, once or more wrapped.
    Compared leaf by leaf: a group the block raised may come back as a copy
    (trio's nurseries split and derive groups), its exceptions the same."""
    return _leaves(group) == _leaves(failure)


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]

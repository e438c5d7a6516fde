"""Agent: one node's core plus the executor of its effects.

Every input reaches the core through a method here and every list of effects it
returns goes through :meth:`Agent._dispatch`, the one place effects are executed:

* ``Send``: a datagram, sent at once on the non-blocking UDP socket;
* ``Exchange`` / ``ProbeTcp``: need a round trip, so they run as tasks in the
  agent's nursery and report back as new inputs (``exchange_done``,
  ``tcp_probe_done``);
* ``MemberEvent``: logged at info and counted;
* ``Reconcile``: an anti-entropy request, run as a task like an exchange,
  reporting back through ``reconcile_done``;
* ``Push``: handed to :attr:`Agent.push_handler` (the pusher runs it as a task
  and reports back through :meth:`Agent.push_done`).

Dispatch is synchronous and never yields, so core calls never interleave and
effects run in the order the core gave them. Effects produced while dispatching
(a task refused for lack of capacity reports failure at once) are queued behind
the current ones rather than run re-entrantly.

One timer loop sleeps until ``core.next_deadline()``; an input that moves the
deadline earlier wakes it through an event, so nothing is polled.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
import trio

from ..config import Config
from ..core.antientropy import AeReply, AeRequest, Reconcile
from ..core.effects import (
    Effect,
    EventKind,
    Exchange,
    ExchangePurpose,
    MemberEvent,
    ProbeTcp,
    Push,
    ResolveSeeds,
    Send,
    TcpProbeResult,
)
from ..core.membership import Conflict
from ..core.node import NodeCore
from ..core.routes import Outcome, Route, Write
from ..core.sync import Batch
from ..logs import get_logger
from ..messages import Address, MemberStatus, Message, PushPull
from ..security import overhead as envelope_overhead
from .ae_http import reconcile
from .metrics import Metrics
from .net import format_address
from .peer_http import PeerClient
from .sealing import Sealer
from .udp import UdpEndpoint

__all__ = ["Agent"]

#: seconds between two "route table full" warnings (a full table refuses the
#: same routes every anti-entropy round)
_FULL_WARNING_INTERVAL = 60.0

_EVENT_MESSAGES = {
    EventKind.JOIN: "member joined",
    EventKind.UPDATE: "member updated",
    EventKind.SUSPECT: "member suspect",
    EventKind.ALIVE: "member alive",
    EventKind.DEAD: "member dead",
    EventKind.LEFT: "member left",
    EventKind.REAP: "member reaped",
    EventKind.REFUTE: "refuted suspicion of us",
    EventKind.JOINED: "joined the mesh",
}


class Agent:
    """One node: its :class:`NodeCore` and the I/O that executes its effects.

    Usable without I/O attached (API tests): sends are then dropped and
    exchanges and TCP probes fail at once.

    Args:
        config: the node's configuration.
        addr: the advertised mesh address.
        now: ``trio.current_time()`` at creation.
        incarnation: the starting incarnation (see :func:`run_agent`).
        index_base: the route table's first change index (see :func:`run_agent`).
        rng: randomness for the core; a fresh ``random.Random()`` by default.
    """

    def __init__(
        self,
        config: Config,
        *,
        addr: Address,
        now: float,
        incarnation: int = 0,
        index_base: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.core = NodeCore(
            config,
            addr=addr,
            rng=rng if rng is not None else random.Random(),
            now=now,
            incarnation=incarnation,
            index_base=index_base,
            # sealed datagrams must still fit udp_buffer_size
            datagram_overhead=envelope_overhead(config.name) if config.encrypt else 0,
        )
        self.metrics = Metrics(self.core)
        self.log: structlog.typing.FilteringBoundLogger = get_logger(config.name)
        #: the gossip keyring and replay window, shared by UDP, peer HTTP (both
        #: sides) and the keyring API; disabled (plaintext) without a key
        self.sealer = Sealer.from_config(config, metrics=self.metrics, log=self.log)
        self.udp: UdpEndpoint | None = None
        self.peers: PeerClient | None = None
        self._nursery: trio.Nursery | None = None
        # Bound on concurrent exchange/probe tasks; past it an effect fails at
        # once, so a burst (many seeds, a flood of dead members) cannot pile up
        # tasks. max_pending_probes already bounds the indirect probes we run
        # for others, the same kind of work.
        self._io_limit = config.max_pending_probes
        self._io_inflight = 0
        self._queue: deque[Effect] = deque()
        self._dispatching = False
        self._timer_at = math.inf
        self._wake = trio.Event()
        # the table's last refusal for lack of room we logged, and when the
        # next such warning may be logged
        self._missed_ms = self.core.routes.missed_ms
        self._next_full_warning = -math.inf
        #: executes route pushes (the pusher, when wired); without one a push is
        #: reported failed at once and anti-entropy carries the routes instead
        self.push_handler: Callable[[Push], None] | None = None
        # Replaced on every push_done: waiters (sync=all, the leave flush)
        # re-check their condition when a push ends instead of polling.
        self._push_progress = trio.Event()
        # seed -> the join failure last logged for it (at most one per seed
        # in config.join): the same failure again goes to debug
        self._join_failures: dict[str, str] = {}
        # member name -> when we saw it dead (for the "dead member is back" log)
        self._dead_since: dict[str, float] = {}
        # Replaced each time core.routes.index moves: route watchers (blocking
        # queries, streams, the embedding API) wake on it instead of polling.
        self._routes_index = self.core.routes.index
        self._routes_changed = trio.Event()
        # Created by a waiter, set and dropped after the core's next input:
        # readiness waiters (the embedding API) re-check on every state
        # change instead of polling, and nobody pays for it when none waits.
        self._dispatched: trio.Event | None = None
        #: set to begin the graceful leave (signal, API, embedding caller)
        self.shutdown_requested = trio.Event()
        #: set once our leave has been gossiped enough (or there is nobody to tell)
        self.leave_done = trio.Event()
        #: set to cut the graceful leave's waits short (a second signal)
        self.hurry = trio.Event()
        #: the agent's life is over (see :meth:`stop`)
        self.stopped = False

    def attach(
        self,
        *,
        nursery: trio.Nursery,
        udp: UdpEndpoint | None,
        peers: PeerClient | None,
    ) -> None:
        """Give the agent its I/O: where tasks run, the UDP socket, the client."""
        self._nursery = nursery
        self.udp = udp
        self.peers = peers

    # --- inputs: each is one core call, its effects dispatched ---

    def start(self) -> None:
        self._dispatch(self.core.start(trio.current_time()))

    def receive(self, src: Address, messages: list[Message]) -> None:
        """One decoded datagram (the UDP loop's callback)."""
        self._dispatch(self.core.receive(src, messages, trio.current_time()))

    def handle_exchange(self, request: PushPull) -> PushPull:
        """A peer's member-table exchange (the peer HTTP app's callback)."""
        reply, effects = self.core.handle_exchange(request, trio.current_time())
        self._dispatch(effects)
        return reply

    def handle_reconcile(self, request: AeRequest) -> AeReply:
        """A peer's anti-entropy request (the peer HTTP app's callback)."""
        reply, effects = self.core.handle_reconcile(
            request, trio.current_time(), time.time()
        )
        self._dispatch(effects)
        return reply

    def leave(self) -> None:
        """Announce our leave; :attr:`leave_done` is set when it has spread."""
        held = self.core.membership.local_conflict
        effects = self.core.leave(trio.current_time())
        if held is not None and self.core.leave_unannounced:  # see NodeCore.leave
            self.log.warning(
                "leaving without announcing it: peers hold our name at another "
                "address, and our leave would read as that process's",
                held_at=format_address(held),
            )
        else:
            self.log.info("leaving the mesh")
        self._dispatch(effects)

    def put_route(
        self, key: str, target: str, meta: dict[str, str], revision: int | None
    ) -> Outcome:
        """A client's write: committed and queued for peers when this returns."""
        outcome, effects = self.core.put_route(
            key, target, meta, revision, trio.current_time(), time.time()
        )
        self.metrics.route_write(outcome.status.value)
        self._dispatch(effects)
        return outcome

    def delete_route(self, key: str, revision: int | None) -> Outcome:
        """A client's delete (a tombstone), queued for peers like a write."""
        outcome, effects = self.core.delete_route(
            key, revision, trio.current_time(), time.time()
        )
        self.metrics.route_write(outcome.status.value)
        self._dispatch(effects)
        return outcome

    def write_routes(self, writes: Sequence[Write]) -> list[Outcome]:
        """A batch of client writes, in order: committed and queued for peers
        when this returns (one dispatch for the lot)."""
        outcomes, effects = self.core.write_routes(
            writes, trio.current_time(), time.time()
        )
        # one count per outcome status, not per write: a batch call's 1,000
        for status, count in Counter(o[0] for o in outcomes).items():
            self.metrics.route_write(status.value, count)
        self._dispatch(effects)
        return outcomes

    def expedite_pushes(self) -> None:
        """Push what is queued now, whatever the push rate limit: a client
        waits for it (``sync=all``)."""
        self._dispatch(self.core.expedite_pushes(trio.current_time()))

    def receive_routes(
        self, routes: list[Route], sender: str | None = None
    ) -> dict[str, int]:
        """Deltas a peer pushed (the peer HTTP app's callback): counts by outcome."""
        counts, effects = self.core.receive_routes(
            routes, trio.current_time(), time.time(), sender
        )
        for outcome, count in counts.items():
            self.metrics.routes_received.labels(outcome).inc(count)
        self._dispatch(effects)
        return counts

    def push_done(self, batch: Batch, ok: bool, reason: str) -> None:
        """A push batch ended (the pusher's callback); wakes push waiters."""
        self._dispatch(
            self.core.push_done(batch.peer, batch.id, ok, reason, trio.current_time())
        )
        self._push_progress.set()
        self._push_progress = trio.Event()

    async def wait_push_progress(self) -> None:
        """Return when the next push batch ends. Check the condition you wait
        for before calling, with no checkpoint in between, and again after."""
        await self._push_progress.wait()

    async def flush_pushes(self) -> None:
        """Return once nothing is queued or in flight for any peer."""
        pushes = self.core.pushes
        while pushes.depth() or pushes.in_flight():
            await self.wait_push_progress()

    async def wait_routes_changed(self) -> None:
        """Return when ``core.routes.index`` next moves. Check the index before
        calling, with no checkpoint in between, and again after."""
        await self._routes_changed.wait()

    async def wait_dispatch(self) -> None:
        """Return after the core's next input has been handled. Check the
        condition you wait for before calling, with no checkpoint in between,
        and again after."""
        if self._dispatched is None:
            self._dispatched = trio.Event()
        await self._dispatched.wait()

    def request_shutdown(self) -> None:
        self.shutdown_requested.set()
        # route watchers (the embedding API's) end on it: wake them
        self._routes_changed.set()
        self._routes_changed = trio.Event()

    def stop(self) -> None:
        """The agent's life is over (its :func:`open_agent` block ended, by a
        leave or by a failure): wake every waiter, which then finds it
        stopped. An embedding application's own tasks (``wait_ready``,
        watches, ``sync_timeout`` waits) would otherwise wait for good on a
        node whose block raised (audit, session 14)."""
        self.stopped = True
        self.shutdown_requested.set()
        if self._dispatched is not None:
            self._dispatched.set()
            self._dispatched = None
        self._push_progress.set()
        self._push_progress = trio.Event()
        self._routes_changed.set()
        self._routes_changed = trio.Event()

    async def run_timers(self) -> None:
        """The one timer loop: tick at each ``next_deadline``, sleep between."""
        while True:
            deadline = self.core.next_deadline()
            target = math.inf if deadline is None else deadline
            now = trio.current_time()
            if now >= target:
                self._timer_at = -math.inf  # ticking: nobody needs to wake us
                self._dispatch(self.core.tick(now, time.time()))
                await trio.lowlevel.checkpoint()
                continue
            self._timer_at = target
            with trio.move_on_at(target) as sleep:
                await self._wake.wait()
            self._wake = trio.Event()
            if sleep.cancelled_caught:  # woken by the deadline: how late?
                self.metrics.timer_lateness.observe(trio.current_time() - target)

    # --- queries for the API ---

    def health(self) -> dict[str, Any]:
        core = self.core
        return {
            "status": "ok",
            "name": core.name,
            "joined": core.joined,
            "members_alive": core.membership.count(MemberStatus.ALIVE),
            "health_score": core.health_score,
        }

    def members(self) -> list[dict[str, Any]]:
        views = sorted(self.core.members(), key=lambda v: v.name)
        return [
            {
                "name": v.name,
                "addr": format_address(v.addr),
                "status": v.status.value,
                "incarnation": v.incarnation,
                "tags": v.tags,
            }
            for v in views
        ]

    # --- effects ---

    def _dispatch(self, effects: list[Effect]) -> None:
        self._queue.extend(effects)
        if self._dispatching:
            return  # the outer call drains the queue, in order
        self._dispatching = True
        try:
            while self._queue:
                self._execute(self._queue.popleft())
        finally:
            self._dispatching = False
        conflicts = self.core.membership.conflicts
        while conflicts:
            self._log_conflict(conflicts.popleft())
        if self.core.routes.missed_ms != self._missed_ms:
            self._table_full()
        if self.core.routes.index != self._routes_index:
            self._routes_index = self.core.routes.index
            self._routes_changed.set()
            self._routes_changed = trio.Event()
        deadline = self.core.next_deadline()
        if deadline is not None and deadline < self._timer_at:
            self._wake.set()
        if self.core.membership.leaving and self._leave_spread():
            self.leave_done.set()
        if self._dispatched is not None:
            self._dispatched.set()
            self._dispatched = None

    def _table_full(self) -> None:
        """The table refused a peer's route for lack of room: members diverge
        until it has room (the route is not lost: docs/antientropy.md). Said
        at most once per _FULL_WARNING_INTERVAL, however many are refused."""
        self._missed_ms = self.core.routes.missed_ms
        now = trio.current_time()
        if now >= self._next_full_warning:
            self._next_full_warning = now + _FULL_WARNING_INTERVAL
            self.log.warning(
                "route table full: refusing new keys from peers",
                max_routes=self.core.routes.max_routes,
            )

    def _log_conflict(self, c: Conflict) -> None:
        """Two processes under one name: an operator error worth a warning
        (once per episode: the core queues only an episode's first refusal)."""
        self.log.warning(
            "name conflict: our name is claimed at another address"
            if c.local
            else "name conflict: alive at another address refused",
            peer=c.member.name,
            addr=format_address(c.member.addr),
            other=format_address(c.other),
            status=c.member.status.value,
            incarnation=c.member.incarnation,
            other_incarnation=c.incarnation,
        )

    def _leave_spread(self) -> bool:
        # Done when the core has gossiped our leave enough, or has nobody
        # alive to tell and no join exchange in flight (whose seed may hold
        # us alive already): core.leave_pending() says both.
        return not self.core.leave_pending()

    def _execute(self, effect: Effect) -> None:
        if isinstance(effect, Send):
            if self.udp is not None:
                self.udp.send(effect.addr, effect.messages)
            else:
                self.metrics.drop("send_no_socket")
        elif isinstance(effect, Exchange):
            self._spawn(
                functools.partial(self._run_exchange, effect),
                lambda: self.core.exchange_done(effect.token, [], trio.current_time()),
            )
        elif isinstance(effect, ProbeTcp):
            self._spawn(
                functools.partial(self._run_probe, effect),
                lambda: self.core.tcp_probe_done(
                    effect.seq, TcpProbeResult.FAILED, trio.current_time()
                ),
            )
        elif isinstance(effect, Reconcile):
            self._spawn(
                functools.partial(self._run_reconcile, effect),
                lambda: self.core.reconcile_done(
                    effect.token, None, trio.current_time(), time.time()
                ),
            )
        elif isinstance(effect, ResolveSeeds):
            self._spawn(
                functools.partial(self._run_resolve, effect),
                lambda: self.core.seeds_resolved([], trio.current_time()),
            )
        elif isinstance(effect, Push):
            if self.push_handler is not None:
                self.push_handler(effect)
            else:
                batch = effect.batch
                self._queue.extend(
                    self.core.push_done(
                        batch.peer, batch.id, False, "unsupported", trio.current_time()
                    )
                )
        else:
            self._on_member_event(effect)

    def _spawn(
        self,
        task: Callable[[], Awaitable[None]],
        failed: Callable[[], list[Effect]],
    ) -> None:
        """Run a round-trip effect as a task, or, past the I/O bound (or with
        no I/O attached), report it failed at once."""
        if self._start_io():
            assert self._nursery is not None
            self._nursery.start_soon(task)
        else:
            self._queue.extend(failed())

    def _start_io(self) -> bool:
        if self._nursery is None or self.peers is None:
            return False
        if self._io_inflight >= self._io_limit:
            self.metrics.exchange_errors.labels("client", "busy").inc()
            return False
        self._io_inflight += 1
        return True

    async def _run_exchange(self, effect: Exchange) -> None:
        assert self.peers is not None
        join = effect.purpose is ExchangePurpose.JOIN
        # Why a join failed is the operator's first question (a TLS
        # verification error, a refused port): the reasons go in the log line.
        errors: list[str] | None = [] if join else None
        try:
            replies = await self.peers.exchange(
                effect.target, effect.request, errors=errors
            )
        finally:
            self._io_inflight -= 1
        if join:
            target = effect.target
            seed = target if isinstance(target, str) else format_address(target)
            if replies:
                self._join_failures.pop(seed, None)
            else:
                error = "; ".join(errors or ()) or "no answer"
                # Once per seed and reason at info: a member cut off for an
                # hour knocks every few seconds (audit 17: a line each time).
                said = self._join_failures.get(seed) == error
                self._join_failures[seed] = error
                (self.log.debug if said else self.log.info)(
                    "join attempt failed; will retry", seed=seed, error=error
                )
        self._dispatch(
            self.core.exchange_done(effect.token, replies, trio.current_time())
        )

    async def _run_resolve(self, effect: ResolveSeeds) -> None:
        assert self.peers is not None
        addrs: dict[Address, None] = {}
        try:
            with trio.move_on_after(self.config.tcp_timeout):
                for seed in effect.seeds:
                    addrs.update(dict.fromkeys(await self.peers.resolve(seed)))
        finally:
            self._io_inflight -= 1
        self._dispatch(self.core.seeds_resolved(list(addrs), trio.current_time()))

    async def _run_reconcile(self, effect: Reconcile) -> None:
        assert self.peers is not None
        try:
            reply = await reconcile(self, self.peers, effect)
        finally:
            self._io_inflight -= 1
        stats = self.core.ae.stats
        before = stats.copy()
        self._dispatch(
            self.core.reconcile_done(
                effect.token, reply, trio.current_time(), time.time()
            )
        )
        # What each step did (a round's outcome, routes repaired, refused as
        # expired, dropped): audit 17 could diagnose a race between rounds
        # only by polling metrics, since no round was logged at any level.
        self.log.debug(
            "anti-entropy step",
            peer=effect.peer,
            request=type(effect.request).__name__,
            answered=reply is not None,
            **{
                key: count - before[key]
                for key, count in stats.items()
                if count != before[key] and key.startswith(("rounds_", "routes_"))
            },
        )

    async def _run_probe(self, effect: ProbeTcp) -> None:
        assert self.peers is not None
        try:
            result = await self.peers.probe(effect.addr, effect.target, effect.deadline)
        finally:
            self._io_inflight -= 1
        self.log.debug("tcp probe", peer=effect.target, result=result.value)
        self._dispatch(
            self.core.tcp_probe_done(effect.seq, result, trio.current_time())
        )

    def _on_member_event(self, event: MemberEvent) -> None:
        view = event.member
        self.metrics.member_events.labels(event.kind.value).inc()
        self.log.info(
            _EVENT_MESSAGES.get(event.kind, event.kind.value),
            peer=view.name,
            addr=format_address(view.addr),
            status=view.status.value,
            incarnation=view.incarnation,
        )
        # "dead member is back": a member we held dead is alive again. It may
        # have refuted after a partition or a pause, merged back through
        # push-pull, or restarted (a crash, a rescheduled pod): from here these
        # look alike, so the message names none of them. The core's ALIVE
        # event does not say what it came back from, so the shell remembers
        # who is dead; entries go on reap, so this is bounded by the member
        # table.
        kind = event.kind
        if kind is EventKind.DEAD:
            self._dead_since[view.name] = trio.current_time()
        elif kind in (EventKind.ALIVE, EventKind.JOIN):
            since = self._dead_since.pop(view.name, None)
            if since is not None:
                self.log.info(
                    "dead member is back",
                    peer=view.name,
                    addr=format_address(view.addr),
                    dead_for=round(trio.current_time() - since, 3),
                )
        elif kind in (EventKind.LEFT, EventKind.REAP):
            self._dead_since.pop(view.name, None)

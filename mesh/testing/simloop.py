"""The simulator's engine: one event heap on virtual time, and the network.

Why a module of its own: this is the hot, exact part of the simulator (every
wake-up, datagram and TCP round trip of a 1000-node run goes through it), kept
apart from the harness in :mod:`mesh.testing.simnet` that builds clusters,
injects faults and answers questions about them. The model it implements is
described in simnet's docstring; :class:`~mesh.testing.simnet.SimNet`, which
subclasses :class:`SimLoop`, is the class to use.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from ..config import parse_address
from ..core.effects import (
    Effect,
    Exchange,
    MemberEvent,
    ProbeTcp,
    Push,
    Reconcile,
    ResolveSeeds,
    Send,
    TcpProbeResult,
)
from ..errors import ConfigError
from ..messages import Address, Message, PushPull
from .simnode import SimEvent, SimNode

__all__ = ["SimLoop"]

# Event kinds; plain ints keep the heap tuples cheap to build and compare.
_WAKE = 0
_DGRAM = 1
_XREQ = 2
_XREPLY = 3
_XFAIL = 4
_TCPRES = 5
_RESUME = 6
_LEAVE_CHECK = 7
_CALL = 8
_PREQ = 9
_PDONE = 10
_AREQ = 11
_ADONE = 12

_KIND_NAMES = (
    "wake",
    "dgram",
    "xreq",
    "xreply",
    "xfail",
    "tcpres",
    "resume",
    "leave_check",
    "call",
    "preq",
    "pdone",
    "areq",
    "adone",
)

# TCP retransmission timeouts (Linux: initial SYN RTO 1 s, minimum data RTO 0.2 s).
_SYN_RTO = 1.0
_DATA_RTO = 0.2
_INF = float("inf")

_Entry = tuple[float, int, int, Any, Any, Any]


class _Link:
    """Network properties of one direction (global, or a per-link extra)."""

    __slots__ = ("delay", "duplicate", "jitter", "loss")

    def __init__(
        self, loss: float, delay: float, jitter: float, duplicate: float
    ) -> None:
        self.loss = loss
        self.delay = delay
        self.jitter = jitter
        self.duplicate = duplicate


class SimLoop:
    """The event heap and the network :class:`~mesh.testing.simnet.SimNet` runs
    on (its constructor's arguments are documented there)."""

    def __init__(
        self,
        seed: int = 0,
        *,
        profile: str = "lan",
        loss: float = 0.0,
        delay: float = 0.001,
        jitter: float = 0.001,
        duplicate: float = 0.0,
        pause_backlog: int = 256,
        leave_timeout: float = 5.0,
        record_trace: bool = False,
        keep_events: bool = True,
        **overrides: Any,
    ) -> None:
        self.seed = seed
        self.profile = profile
        self.overrides = overrides
        self.rng = random.Random(seed)
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self._by_addr: dict[Address, SimNode] = {}
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._net = _Link(loss, delay, jitter, duplicate)
        self._links: dict[tuple[str, str], _Link] = {}
        self._partitioned = False
        self.pause_backlog = pause_backlog
        self.leave_timeout = leave_timeout
        #: seed addresses given to nodes added without explicit seeds
        self.default_seeds: list[Address] = []
        self.keep_events = keep_events
        self.events: list[SimEvent] = []
        #: called for every MemberEvent: ``listener(time, observer, event)``
        self.listeners: list[Callable[[float, str, MemberEvent], None]] = []
        self.trace: list[tuple[Any, ...]] | None = [] if record_trace else None
        self._counts: Counter[str] = Counter()
        #: datagrams handed to the network (before loss): a plain int, hot path
        self.datagrams_sent = 0
        #: heap entries popped (including stale wakes): the work measure of benches
        self.events_processed = 0

    # --- running ---

    def run_until(self, end: float) -> None:
        """Handle every event up to and including virtual time ``end``."""
        heap = self._heap
        pop = heapq.heappop
        trace = self.trace
        processed = 0
        while heap and heap[0][0] <= end:
            t, _, kind, a, b, c = pop(heap)
            self.now = t
            processed += 1
            if kind == _WAKE:
                node: SimNode = a
                if node.wake_at != c or node.gen != b:
                    continue  # stale: rescheduled, crashed or restarted since
                if node.paused:
                    continue  # runs on resume
                node.wake_at = None
                if trace is not None:
                    trace.append((t, "tick", node.name))
                self._after(node, node.core.tick(t, t))
            elif kind == _DGRAM:
                node = self._by_addr[a]
                if not node.up:
                    self._counts["dropped_down"] += 1
                    continue
                if node.paused:
                    self._buffer(node, _DGRAM, b, c)
                    continue
                if trace is not None:
                    trace.append((t, "recv", node.name, b, c))
                self._after(node, node.core.receive(b, c, t))
            else:
                self._dispatch(t, kind, a, b, c)
        self.events_processed += processed
        if end > self.now:
            self.now = end

    def _dispatch(self, t: float, kind: int, a: Any, b: Any, c: Any) -> None:
        trace = self.trace
        if trace is not None and kind != _CALL:
            trace.append((t, _KIND_NAMES[kind], getattr(a, "name", a), repr(c)))
        if kind == _XREQ:
            self._serve_exchange(a, b, c)
        elif kind in (_XREPLY, _XFAIL):
            node: SimNode = a
            token, reply = c
            if not self._claim(node, node.exchanges, token, kind, b, c):
                return
            replies = [reply] if kind == _XREPLY else []
            self._after(node, node.core.exchange_done(token, replies, t))
        elif kind == _TCPRES:
            node = a
            seq, result = c
            if not self._claim(node, node.tcp_probes, seq, kind, b, c):
                return
            self._after(node, node.core.tcp_probe_done(seq, result, t))
        elif kind == _RESUME:
            node = a
            if node.up and node.paused and node.pause_gen == b:
                self._resume(node)
        elif kind == _LEAVE_CHECK:
            node = a
            if node.gen != b or not node.up:
                return
            deadline = node.leave_deadline
            if node.paused or (
                node.core.leave_pending() and deadline is not None and t < deadline
            ):
                self._push(t + node.config.gossip_interval, _LEAVE_CHECK, node, b, None)
                return
            self._stop(node, refuse=True)
            node.left = True
            self._counts["left"] += 1
        elif kind == _CALL:
            a()
        elif kind == _PREQ:
            self._serve_push(a, b)
        elif kind == _PDONE:
            node = a
            batch, ok = c
            if not self._claim(node, node.pushes, batch.id, kind, b, c):
                return
            reason = "" if ok else "deadline"
            self._after(node, node.core.push_done(batch.peer, batch.id, ok, reason, t))
        elif kind == _AREQ:
            self._serve_reconcile(a, b, c)
        elif kind == _ADONE:
            node = a
            token, reply = c
            if not self._claim(node, node.reconciles, token, kind, b, c):
                return
            self._after(node, node.core.reconcile_done(token, reply, t, t))

    def _claim(
        self, node: SimNode, pending: set[int], ident: int, kind: int, gen: Any, c: Any
    ) -> bool:
        """Whether a result for ``node`` is delivered now: it is for this
        process and still awaited; a paused node reads it on resume."""
        if node.gen != gen or ident not in pending:
            return False
        if node.paused:
            self._buffer(node, kind, gen, c)
            return False
        pending.discard(ident)
        return True

    def _resume(self, node: SimNode) -> None:
        node.paused = False
        node.pause_gen += 1
        now = self.now
        # Timers first: they expired during the stop (see the module docstring).
        node.wake_at = None
        self._after(node, node.core.tick(now, now))
        backlog = node.backlog
        node.backlog = deque()
        node.backlog_datagrams = 0
        for kind, a, b in backlog:
            if not node.up or node.paused:
                break
            if kind == _DGRAM:
                if self.trace is not None:
                    self.trace.append((now, "recv", node.name, a, b))
                self._after(node, node.core.receive(a, b, now))
            elif kind == _XREQ:
                self._serve_exchange(node, a, b)
            elif kind == _PREQ:
                self._serve_push(node, a)
            elif kind == _AREQ:
                self._serve_reconcile(node, a, b)
            else:
                self._dispatch(now, kind, node, a, b)

    def _buffer(self, node: SimNode, kind: int, a: Any, b: Any) -> None:
        if kind == _DGRAM:
            if node.backlog_datagrams >= self.pause_backlog:
                self._counts["dropped_backlog"] += 1
                return
            node.backlog_datagrams += 1
        node.backlog.append((kind, a, b))

    def _stop(self, node: SimNode, *, refuse: bool) -> None:
        node.up = False
        node.refuse = refuse
        node.paused = False
        node.gen += 1
        node.wake_at = None
        node.backlog.clear()
        node.backlog_datagrams = 0
        node.exchanges.clear()
        node.tcp_probes.clear()
        node.pushes.clear()
        node.reconciles.clear()
        node.leave_deadline = None

    # --- effects ---

    def _push(self, t: float, kind: int, a: Any, b: Any, c: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, a, b, c))

    def _after(self, node: SimNode, effects: list[Effect]) -> None:
        """Execute ``effects`` of ``node`` and reschedule its wake-up."""
        for effect in effects:
            # Send is nearly every effect: test it first, by exact type (hot path).
            if type(effect) is Send:
                self._send(node, effect.addr, effect.messages)
            elif isinstance(effect, MemberEvent):
                self._record(node, effect)
            elif isinstance(effect, Exchange):
                self._start_exchange(node, effect)
            elif isinstance(effect, ProbeTcp):
                self._tcp_probe(node, effect)
            elif isinstance(effect, Push):
                self._start_push(node, effect)
            elif isinstance(effect, Reconcile):
                self._start_reconcile(node, effect)
            elif isinstance(effect, ResolveSeeds):
                # no DNS in the simulator: seeds are addresses (never asked)
                self._after(node, node.core.seeds_resolved([], self.now))
            else:  # pragma: no cover - a new effect type must be taught here
                raise TypeError(f"unknown effect {effect!r}")
        if not node.up:
            return
        deadline = node.core.next_deadline()
        if deadline is not None and deadline != node.wake_at:
            node.wake_at = deadline
            now = self.now
            heapq.heappush(
                self._heap,
                (
                    deadline if deadline > now else now,
                    next(self._seq),
                    _WAKE,
                    node,
                    node.gen,
                    deadline,
                ),
            )

    def _record(self, node: SimNode, effect: MemberEvent) -> None:
        member = effect.member
        if self.keep_events:
            self.events.append(
                SimEvent(
                    self.now, node.name, effect.kind, member.name, member.incarnation
                )
            )
        for listener in self.listeners:
            listener(self.now, node.name, effect)

    def _send(self, src: SimNode, addr: Address, messages: tuple[Message, ...]) -> None:
        self.datagrams_sent += 1
        dst = self._by_addr.get(addr)
        if dst is None:
            self._counts["dropped_no_host"] += 1
            return
        if self._partitioned and src.group != dst.group:
            self._counts["dropped_partition"] += 1
            return
        net = self._net
        rng = self.rng
        loss, delay = self._link(src, dst)
        if loss and rng.random() < loss:
            self._counts["dropped_loss"] += 1
            return
        t = self.now + delay
        if net.jitter:
            t += net.jitter * rng.random()
        heapq.heappush(
            self._heap, (t, next(self._seq), _DGRAM, addr, src.addr, messages)
        )
        if net.duplicate and rng.random() < net.duplicate:
            self._counts["duplicated"] += 1
            t = self.now + delay + net.jitter * rng.random()
            heapq.heappush(
                self._heap, (t, next(self._seq), _DGRAM, addr, src.addr, messages)
            )

    def _link(self, src: SimNode, dst: SimNode) -> tuple[float, float]:
        """Loss and base delay from ``src`` to ``dst``: the network's, combined
        with any per-link extra."""
        net = self._net
        loss, delay = net.loss, net.delay
        if self._links:
            extra = self._links.get((src.name, dst.name))
            if extra is not None:
                loss = 1.0 - (1.0 - loss) * (1.0 - extra.loss)
                delay += extra.delay
        return loss, delay

    def _trip(self, src: SimNode, dst: SimNode, rto: float) -> float:
        """One TCP segment's one-way time, retransmitted through loss."""
        net = self._net
        loss, delay = self._link(src, dst)
        if loss >= 1.0:
            return _INF
        rng = self.rng
        waited = 0.0
        while loss and rng.random() < loss:
            waited += rto
            rto *= 2
            if waited > 120.0:
                return _INF
        return waited + delay + net.jitter * rng.random()

    def _handshake(self, src: SimNode, dst: SimNode) -> float:
        """SYN out and SYN-ACK (or RST) back: a new TCP connection's cost."""
        return self._trip(src, dst, _SYN_RTO) + self._trip(dst, src, _SYN_RTO)

    def _request_at(self, src: SimNode, dst: SimNode) -> float:
        """When a request on a new connection reaches ``dst``: the handshake,
        then the request's data segment."""
        return self.now + self._handshake(src, dst) + self._trip(src, dst, _DATA_RTO)

    def _reachable(self, src: SimNode, dst: SimNode | None) -> bool:
        return dst is not None and not (self._partitioned and src.group != dst.group)

    def _start_exchange(self, node: SimNode, effect: Exchange) -> None:
        self._counts["exchanges"] += 1
        target = effect.target
        addr: Address | None
        if isinstance(target, str):
            try:
                addr = parse_address(target)
            except ConfigError:
                addr = None
        else:
            addr = target
        dst = self._by_addr.get(addr) if addr is not None else None
        token = effect.token
        node.exchanges.add(token)
        now = self.now
        deadline = now + node.config.tcp_timeout
        fail = (node, node.gen, (token, None))
        if (
            dst is None
            or not self._reachable(node, dst)
            or (not dst.up and not dst.refuse)
        ):
            self._push(deadline, _XFAIL, *fail)
            return
        if not dst.up:
            t = now + self._handshake(node, dst)
            self._push(min(t, deadline), _XFAIL, *fail)
            return
        t = self._request_at(node, dst)
        if t > deadline:
            self._push(deadline, _XFAIL, *fail)
            return
        self._push(t, _XREQ, dst, (node, node.gen, token, deadline), effect.request)

    def _serve_exchange(
        self,
        dst: SimNode,
        origin: tuple[SimNode, int, int, float],
        request: PushPull,
    ) -> None:
        src, gen, token, deadline = origin
        fail = (src, gen, (token, None))
        if not dst.up or not self._reachable(src, dst):
            refused = not dst.up and dst.refuse and self._reachable(src, dst)
            t = self.now + self._trip(dst, src, _DATA_RTO) if refused else deadline
            self._push(min(t, deadline), _XFAIL, *fail)
            return
        if dst.paused:
            # The request waits in the socket; the sender's deadline keeps running.
            self._buffer(dst, _XREQ, origin, request)
            self._push(deadline, _XFAIL, *fail)
            return
        reply, effects = dst.core.handle_exchange(request, self.now)
        self._after(dst, effects)
        t = self.now + self._trip(dst, src, _DATA_RTO)
        if t > deadline:
            self._push(deadline, _XFAIL, *fail)
        else:
            self._push(t, _XREPLY, src, gen, (token, reply))

    def _tcp_probe(self, node: SimNode, effect: ProbeTcp) -> None:
        self._counts["tcp_probes"] += 1
        dst = self._by_addr.get(effect.addr)
        deadline = effect.deadline
        node.tcp_probes.add(effect.seq)
        result = TcpProbeResult.FAILED
        t = deadline
        if dst is not None and self._reachable(node, dst):
            if not dst.up:
                if dst.refuse:
                    rst = self.now + self._handshake(node, dst)
                    if rst <= deadline:
                        result, t = TcpProbeResult.REFUSED, rst
            elif dst.name == effect.target:
                request_at = self._request_at(node, dst)
                if dst.paused:
                    request_at = max(request_at, dst.resume_at)
                answer = request_at + self._trip(dst, node, _DATA_RTO)
                if answer <= deadline:
                    result, t = TcpProbeResult.ACK, answer
        self._push(max(t, self.now), _TCPRES, node, node.gen, (effect.seq, result))

    def _start_push(self, node: SimNode, effect: Push) -> None:
        """A batch of route deltas, one HTTP request over TCP (the shell retries
        within ``batch.deadline``; here TCP retransmission stands for that)."""
        self._counts["pushes"] += 1
        batch = effect.batch
        node.pushes.add(batch.id)
        dst = self._by_addr.get(batch.addr)
        now = self.now
        fail = (node, node.gen, (batch, False))
        if dst is None or not dst.up or not self._reachable(node, dst):
            self._push(max(batch.deadline, now), _PDONE, *fail)
            return
        t = self._request_at(node, dst)
        if t > batch.deadline:
            self._push(max(batch.deadline, now), _PDONE, *fail)
            return
        self._push(t, _PREQ, dst, (node, node.gen, batch), None)

    def _serve_push(self, dst: SimNode, origin: tuple[SimNode, int, Any]) -> None:
        src, gen, batch = origin
        fail = (src, gen, (batch, False))
        deadline = max(batch.deadline, self.now)
        if not dst.up or not self._reachable(src, dst):
            self._push(deadline, _PDONE, *fail)
            return
        if dst.paused:
            self._buffer(dst, _PREQ, origin, None)
            self._push(deadline, _PDONE, *fail)
            return
        # The wall clock (for route versions) is the virtual clock here.
        _, effects = dst.core.receive_routes(
            batch.routes, self.now, self.now, src.core.config.name
        )
        self._after(dst, effects)
        t = self.now + self._trip(dst, src, _DATA_RTO)
        if t > batch.deadline:
            self._push(deadline, _PDONE, *fail)
        else:
            self._push(t, _PDONE, src, gen, (batch, True))

    def _start_reconcile(self, node: SimNode, effect: Reconcile) -> None:
        """One anti-entropy request over a pooled connection: a data trip
        each way, failing at ``antientropy_timeout``."""
        self._counts["reconciles"] += 1
        token = effect.token
        node.reconciles.add(token)
        dst = self._by_addr.get(effect.addr)
        now = self.now
        deadline = now + node.config.antientropy_timeout
        fail = (node, node.gen, (token, None))
        if dst is None or not dst.up or not self._reachable(node, dst):
            self._push(deadline, _ADONE, *fail)
            return
        t = now + self._trip(node, dst, _DATA_RTO)
        if t > deadline:
            self._push(deadline, _ADONE, *fail)
            return
        self._push(t, _AREQ, dst, (node, node.gen, token, deadline), effect.request)

    def _serve_reconcile(
        self, dst: SimNode, origin: tuple[SimNode, int, int, float], request: Any
    ) -> None:
        src, gen, token, deadline = origin
        fail = (src, gen, (token, None))
        if not dst.up or not self._reachable(src, dst):
            self._push(max(deadline, self.now), _ADONE, *fail)
            return
        if dst.paused:
            self._buffer(dst, _AREQ, origin, request)
            self._push(max(deadline, self.now), _ADONE, *fail)
            return
        reply, effects = dst.core.handle_reconcile(request, self.now, self.now)
        self._after(dst, effects)
        t = self.now + self._trip(dst, src, _DATA_RTO)
        if t > deadline:
            self._push(max(deadline, self.now), _ADONE, *fail)
        else:
            self._push(t, _ADONE, src, gen, (token, reply))

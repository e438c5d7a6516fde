"""A deterministic discrete-event simulator for many :class:`NodeCore` s.

Why: the sans-IO core is the code the real agent runs, so driving hundreds of
cores in one synchronous loop on virtual time tests the protocol itself, fast and
exactly reproducibly, without trio, sockets or sleeps (memberlist's own tests need
real sockets and are flaky).

Model
-----
* **Time** is a float of virtual seconds. One heap holds every future event keyed
  by ``(time, seq)``; ``seq`` breaks ties in scheduling order, so nothing depends
  on object ids or hash order. Each node is woken at ``core.next_deadline()``;
  the heap holds lazy wake entries and a stale one (the node rescheduled since) is
  skipped.
* **Randomness**: the network draws from one ``random.Random(seed)``; each core
  gets its own ``random.Random`` seeded from ``(seed, name, restart count)``. The
  same seed and the same calls give the same run: ``trace`` (when recorded) and
  ``trace_digest()`` are equal, event for event.
* **UDP**: a ``Send`` is one datagram handed over as objects (the core already
  sized it; nothing is encoded). It is lost with probability ``loss`` (global,
  combined with any per-link extra loss), otherwise delivered after ``delay +
  jitter * U(0, 1)`` (plus any per-link extra delay), and duplicated with
  probability ``duplicate``. Datagrams to an address nobody holds, to a crashed
  node, or across a partition are dropped. Loss and partitions are decided at send
  time; a datagram in flight when its target crashes is dropped on arrival.
* **TCP** (``Exchange`` and ``ProbeTcp``) is reliable but slow under loss: each of
  its one-way trips (SYN, SYN-ACK, request, response) is lost with the link's loss
  rate and then retried after a retransmission timeout (1 s for the handshake,
  0.2 s for data, doubling), so an exchange fails only on a partition, a dead
  peer, or when retransmissions push it past its deadline (``tcp_timeout``, or
  the probe's deadline).
* **crash(name, refuse=True)**: the process is gone but the host is up: UDP is
  dropped, TCP connections are refused (a TCP probe answers ``REFUSED``, an
  exchange fails after one round trip). With ``refuse=False`` the host is down:
  TCP gets no answer at all (probes ``FAILED`` at their deadline, exchanges fail
  at ``tcp_timeout``).
* **pause(name, duration)**: SIGSTOP. The node runs nothing; datagrams to it wait
  in a bounded socket buffer (``pause_backlog`` datagrams, the rest dropped), TCP
  requests and replies wait too (their senders' deadlines keep running). On
  resume its expired timers fire first, late, then the buffered input is
  handled in arrival order. That is what a trio shell does after SIGCONT (the
  timer task and the reader wake in the same batch, and the reader yields after
  each datagram), and it is the case Lifeguard is about: a slow node accusing
  healthy ones before it reads their refutations.
* **partition(groups)**: nodes talk only within their group; datagrams across
  are dropped at send, TCP across fails at its deadline (no answer).
* **restart(name)**: a new core with the same name and address, at a higher
  incarnation (the old core's + 1 unless given), joining through its seeds
  (its configured ones, or ``seeds=``).
* **leave(name)**: ``core.leave``; the process exits (as a crash with
  ``refuse=True``) once ``leave_pending()`` is false or after ``leave_timeout``.
* ``MemberEvent`` effects go to ``events`` (time, observer, kind, member,
  incarnation) and to ``listeners``, for tests and benches.

Not modelled: bandwidth, queueing, reordering beyond what jitter gives, a TCP
probe's outcome changing after it was issued (it is decided at issue time from
the target's state then).
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import attrs

from ..config import Config, parse_address
from ..core.broadcast import BroadcastQueue
from ..core.effects import (
    Effect,
    EventKind,
    Exchange,
    MemberEvent,
    ProbeTcp,
    Push,
    Reconcile,
    Send,
    TcpProbeResult,
)
from ..core.node import NodeCore
from ..errors import ConfigError
from ..messages import Address, MemberState, MemberStatus, Message, PushPull

__all__ = ["SimEvent", "SimNet", "SimNode", "node_address"]

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


def _ignore(*_args: object, **_kwargs: object) -> None:
    return None


def node_address(index: int) -> Address:
    """The mesh address of the ``index``-th simulated node: ``10.0.x.y:7946``."""
    i = index + 1
    return (f"10.0.{i // 256}.{i % 256}", 7946)


class SimEvent(NamedTuple):
    """One ``MemberEvent`` as an observer emitted it."""

    time: float
    observer: str
    kind: EventKind
    member: str
    incarnation: int


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


class SimNode:
    """The simulator's record of one process slot (name + address).

    ``core`` is the current process's core; after a crash it is kept for
    inspection, and a restart replaces it (``gen`` counts processes, so results
    addressed to an older process are dropped).
    """

    __slots__ = (
        "addr",
        "backlog",
        "backlog_datagrams",
        "config",
        "core",
        "exchanges",
        "gen",
        "group",
        "leave_deadline",
        "left",
        "name",
        "pause_gen",
        "paused",
        "pushes",
        "reconciles",
        "refuse",
        "resume_at",
        "rng",
        "tcp_probes",
        "up",
        "wake_at",
    )

    def __init__(self, name: str, addr: Address, config: Config) -> None:
        self.name = name
        self.addr = addr
        self.config = config
        self.core: NodeCore
        self.rng: random.Random
        self.gen = 0
        self.up = False
        self.refuse = True
        self.left = False
        self.paused = False
        self.pause_gen = 0
        self.resume_at = 0.0
        self.backlog: deque[tuple[int, Any, Any]] = deque()
        self.backlog_datagrams = 0
        self.wake_at: float | None = None
        self.group = 0
        self.exchanges: set[int] = set()
        self.tcp_probes: set[int] = set()
        self.pushes: set[int] = set()
        self.reconciles: set[int] = set()
        self.leave_deadline: float | None = None

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        if self.paused:
            state = "paused"
        return f"<SimNode {self.name} {self.addr[0]} {state} gen={self.gen}>"


class SimNet:
    """Many cores on one virtual network; see the module docstring for the model.

    Args:
        seed: seeds the network's random generator and, with each node's name,
            each core's generator.
        profile: the ``Config`` preset for nodes added without a config.
        loss, delay, jitter, duplicate: the global network (one-way seconds).
        pause_backlog: datagrams a paused node buffers; the rest are dropped.
        leave_timeout: most time a leaving node stays up to spread its leave.
        record_trace: keep every handled event in ``trace`` (slower; for tests).
        keep_events: keep ``MemberEvent`` s in ``events``.
        overrides: ``Config`` fields applied to every node added without a config.
    """

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

    # --- building ---

    @classmethod
    def cluster(
        cls,
        n: int,
        *,
        seed: int = 0,
        profile: str = "lan",
        bootstrap: str = "join",
        num_seeds: int = 3,
        net: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> SimNet:
        """``n`` nodes ``n0..n{n-1}`` at ``node_address(i)``, all started at t=0.

        Args:
            bootstrap: ``"join"``: every node joins the first ``num_seeds`` nodes
                through real exchanges (run the simulation to converge);
                ``"static"``: every table is preloaded with all members alive at
                incarnation 0 and an empty gossip queue, as if the mesh had been
                up a long time (setup in O(n^2) merges, no join traffic; the
                JOIN events of the preload are not recorded).
            net: keyword arguments for :class:`SimNet` (loss, delay, ...).
            overrides: ``Config`` fields for every node.
        """
        if bootstrap not in ("join", "static"):
            raise ValueError(f"bootstrap must be join or static, got {bootstrap!r}")
        sim = cls(seed, profile=profile, **(net or {}), **overrides)
        sim.default_seeds = [node_address(i) for i in range(min(num_seeds, n))]
        if bootstrap == "join":
            # Create every process before any starts, so no seed is missing.
            created = [sim._create(f"n{i}", None, None) for i in range(n)]
            for node in created:
                sim._after(node, node.core.start(sim.now))
            return sim
        nodes = [sim._create(f"n{i}", None, None) for i in range(n)]
        rows = tuple(
            MemberState(node.name, node.addr, 0, MemberStatus.ALIVE, node.config.tags)
            for node in nodes
        )
        gc_was_enabled = gc.isenabled()
        gc.disable()  # n^2 long-lived objects: collections here are pure waste
        try:
            for node in nodes:
                core = node.core
                m = core.membership
                # The preload's gossip entries and JOIN events are thrown away
                # below; shadow the two methods that build them (3x faster).
                shadow = vars(m)
                shadow["_queue"] = shadow["_event"] = _ignore
                try:
                    m.merge(rows, node.name, 0.0)
                finally:
                    shadow.pop("_queue", None)
                    shadow.pop("_event", None)
                m.broadcasts = BroadcastQueue(node.config.broadcast_queue_max)
                m.out.clear()
                core.joined = True
                core.started = True
                sim._after(node, [])
        finally:
            if gc_was_enabled:
                gc.enable()
        return sim

    def make_config(self, name: str, addr: Address, seeds: Sequence[Address]) -> Config:
        """The config a node added without one gets: the profile + overrides."""
        join = tuple(f"{h}:{p}" for h, p in seeds if (h, p) != addr)
        return Config.for_profile(
            self.profile,
            **{
                "name": name,
                "bind": addr,
                "advertise": addr,
                "join": join,
                **self.overrides,
            },
        )

    def add_node(
        self,
        name: str | None = None,
        *,
        seeds: Sequence[Address] | None = None,
        config: Config | None = None,
        addr: Address | None = None,
    ) -> SimNode:
        """Start a new node now; it joins ``seeds`` (default ``default_seeds``).

        Args:
            name: default ``n{index}``.
            config: used as is (its ``join`` are the seeds); default from
                :meth:`make_config`.
            addr: default the next free ``node_address``.
        """
        if name is None:
            name = f"n{len(self.nodes)}"
        node = self._create(name, seeds, config, addr)
        self._after(node, node.core.start(self.now))
        return node

    def _create(
        self,
        name: str,
        seeds: Sequence[Address] | None,
        config: Config | None,
        addr: Address | None = None,
    ) -> SimNode:
        if name in self.nodes:
            raise ValueError(f"node {name!r} already exists")
        if addr is None:
            addr = config.advertise if config is not None else None
        if addr is None:
            index = len(self._by_addr)
            while node_address(index) in self._by_addr:
                index += 1
            addr = node_address(index)
        if addr in self._by_addr:
            raise ValueError(f"address {addr} is taken by {self._by_addr[addr].name}")
        if config is None:
            config = self.make_config(
                name, addr, self.default_seeds if seeds is None else seeds
            )
        node = SimNode(name, addr, config)
        self.nodes[name] = node
        self._by_addr[addr] = node
        self._boot(node, incarnation=0)
        return node

    def _boot(self, node: SimNode, incarnation: int) -> None:
        # A str seed is hashed with SHA-512 by random.seed: stable across runs
        # and processes (unlike hash()).
        node.rng = random.Random(f"{self.seed}/{node.name}/{node.gen}")
        node.core = NodeCore(
            node.config,
            addr=node.addr,
            rng=node.rng,
            now=self.now,
            incarnation=incarnation,
        )
        node.up = True
        node.left = False
        node.paused = False
        node.wake_at = None
        node.leave_deadline = None

    # --- faults and operator actions ---

    def node(self, name: str) -> SimNode:
        return self.nodes[name]

    def crash(self, name: str, *, refuse: bool = True) -> None:
        """Kill the process (``refuse=True``) or the whole host (``False``)."""
        node = self.nodes[name]
        self._stop(node, refuse=refuse)
        self._counts["crashes"] += 1

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

    def pause(self, name: str, duration: float) -> None:
        """SIGSTOP ``name`` for ``duration`` seconds (extends a running pause)."""
        node = self.nodes[name]
        if not node.up:
            raise ValueError(f"cannot pause {name}: it is not running")
        resume_at = self.now + duration
        if node.paused and resume_at <= node.resume_at:
            return
        node.paused = True
        node.resume_at = resume_at
        node.pause_gen += 1
        self._push(resume_at, _RESUME, node, node.pause_gen, None)
        self._counts["pauses"] += 1

    def resume(self, name: str) -> None:
        """SIGCONT now (no-op if not paused)."""
        node = self.nodes[name]
        if node.paused:
            self._resume(node)

    def restart(
        self,
        name: str,
        *,
        incarnation: int | None = None,
        seeds: Sequence[Address] | None = None,
    ) -> SimNode:
        """A new process under the same name and address (crashing the running
        one first), at ``incarnation`` (default: the old core's + 1).

        It joins its configured seeds, or ``seeds`` when given (an operator's
        seed list that resolves to current members, as a DNS name would).
        """
        node = self.nodes[name]
        old = node.core.incarnation
        if node.up:
            self._stop(node, refuse=True)
        else:
            node.gen += 1
        if seeds is not None:
            join = tuple(f"{h}:{p}" for h, p in seeds if (h, p) != node.addr)
            node.config = attrs.evolve(node.config, join=join)
        self._boot(node, incarnation=old + 1 if incarnation is None else incarnation)
        self._after(node, node.core.start(self.now))
        self._counts["restarts"] += 1
        return node

    def leave(self, name: str) -> None:
        """Graceful leave: announce, then exit once it has spread (or timed out)."""
        node = self.nodes[name]
        if not node.up or node.paused:
            raise ValueError(f"cannot leave {name}: it is not running")
        node.leave_deadline = self.now + self.leave_timeout
        self._after(node, node.core.leave(self.now))
        self._push(
            self.now + node.config.gossip_interval, _LEAVE_CHECK, node, node.gen, None
        )

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Split the network: nodes talk only within their group. Nodes in no
        group (and nodes added later) form one more group together."""
        for node in self.nodes.values():
            node.group = 0
        for index, group in enumerate(groups, start=1):
            for name in group:
                self.nodes[name].group = index
        self._partitioned = True

    def heal(self) -> None:
        """End any partition."""
        for node in self.nodes.values():
            node.group = 0
        self._partitioned = False

    def set_loss(self, rate: float) -> None:
        """Global datagram loss rate (TCP retransmits through it)."""
        self._net.loss = rate

    def set_network(
        self,
        *,
        loss: float | None = None,
        delay: float | None = None,
        jitter: float | None = None,
        duplicate: float | None = None,
    ) -> None:
        """Change the global network."""
        net = self._net
        if loss is not None:
            net.loss = loss
        if delay is not None:
            net.delay = delay
        if jitter is not None:
            net.jitter = jitter
        if duplicate is not None:
            net.duplicate = duplicate

    def set_link(
        self,
        src: str,
        dst: str,
        *,
        loss: float = 0.0,
        delay: float = 0.0,
        symmetric: bool = True,
    ) -> None:
        """Extra loss and delay on the link ``src -> dst`` (and back when
        ``symmetric``), on top of the global network; zeros remove it."""
        pairs = [(src, dst), (dst, src)] if symmetric else [(src, dst)]
        for pair in pairs:
            if loss or delay:
                self._links[pair] = _Link(loss, delay, 0.0, 0.0)
            else:
                self._links.pop(pair, None)

    def execute(self, name: str, effects: list[Effect]) -> None:
        """Carry out effects a caller got from ``name`` 's core directly (e.g.
        ``put_route``), as the simulator does for its own inputs."""
        self._after(self.nodes[name], effects)

    def at(self, time: float, action: Callable[[], object]) -> None:
        """Run ``action()`` at virtual ``time`` (scripted faults in benches)."""
        self._push(max(time, self.now), _CALL, action, None, None)

    # --- queries ---

    @property
    def stats(self) -> Counter[str]:
        """Counters: datagrams sent and dropped (by reason), exchanges, faults."""
        counts = Counter(self._counts)
        counts["datagrams"] = self.datagrams_sent
        return counts

    def live(self) -> list[SimNode]:
        """Nodes whose process runs and is not paused."""
        return [n for n in self.nodes.values() if n.up and not n.paused]

    def alive_view(self, name: str, *, include_suspect: bool = False) -> frozenset[str]:
        """Names ``name`` sees alive (and suspect, if asked)."""
        ok = (
            (MemberStatus.ALIVE, MemberStatus.SUSPECT)
            if include_suspect
            else (MemberStatus.ALIVE,)
        )
        return frozenset(
            m.name for m in self.nodes[name].core.membership if m.status in ok
        )

    def views_agree(self, *, include_suspect: bool = False) -> bool:
        """All live, unpaused nodes see the same alive set."""
        views = {
            self.alive_view(n.name, include_suspect=include_suspect)
            for n in self.live()
        }
        return len(views) <= 1

    def converged(self, expected: Iterable[str] | None = None) -> bool:
        """Every live node sees exactly ``expected`` alive (default: the names of
        the live nodes that are not leaving)."""
        live = self.live()
        want = (
            frozenset(expected)
            if expected is not None
            else frozenset(n.name for n in live if not n.core.membership.leaving)
        )
        return all(
            self.alive_view(n.name) == want
            for n in live
            if not n.core.membership.leaving
        )

    def status(self, observer: str, member: str) -> MemberStatus | None:
        """``member`` 's status in ``observer`` 's table (None: unknown)."""
        m = self.nodes[observer].core.membership.get(member)
        return None if m is None else m.status

    def trace_digest(self) -> str:
        """SHA-256 of the recorded trace: equal digests, identical runs."""
        if self.trace is None:
            raise ValueError("create the SimNet with record_trace=True")
        h = hashlib.sha256()
        for entry in self.trace:
            h.update(repr(entry).encode())
            h.update(b"\n")
        return h.hexdigest()

    # --- running ---

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def run_until_converged(
        self,
        timeout: float,
        *,
        step: float = 0.1,
        expected: Iterable[str] | None = None,
    ) -> float | None:
        """Run until :meth:`converged` (checked every ``step``); return the time
        it first held, or None after ``timeout`` seconds."""
        want = None if expected is None else frozenset(expected)
        deadline = self.now + timeout
        while True:
            if self.converged(want):
                return self.now
            if self.now >= deadline:
                return None
            self.run_until(min(self.now + step, deadline))

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
        _, effects = dst.core.receive_routes(batch.routes, self.now, self.now)
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

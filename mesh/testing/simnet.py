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

Layout: this module is the harness (building clusters, faults, queries) and the
home of the public names; the event loop and the network it drives are
:class:`~mesh.testing.simloop.SimLoop` (:mod:`mesh.testing.simloop`), and the
per-node records both share are in :mod:`mesh.testing.simnode`.
"""

from __future__ import annotations

import gc
import hashlib
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from ..config import Config
from ..core.broadcast import BroadcastQueue
from ..core.effects import Effect
from ..core.node import NodeCore
from ..messages import Address, MemberState, MemberStatus
from .simloop import _CALL, _LEAVE_CHECK, _RESUME, SimLoop, _Link
from .simnode import SimEvent, SimNode

__all__ = ["SimEvent", "SimNet", "SimNode", "node_address"]


def _ignore(*_args: object, **_kwargs: object) -> None:
    return None


def node_address(index: int) -> Address:
    """The mesh address of the ``index``-th simulated node: ``10.0.x.y:7946``."""
    i = index + 1
    return (f"10.0.{i // 256}.{i % 256}", 7946)


class SimNet(SimLoop):
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

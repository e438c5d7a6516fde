"""Membership under random churn: a Hypothesis state machine over the simulator.

Every run draws a seed, so a failure prints as a step list starting with
``state.init(seed=..., n=...)`` and replays exactly (plus the
``@reproduce_failure`` blob, the profiles set ``print_blob=True``).

Safety is checked after every step (and, for transitions, on every event as it
happens); liveness once at the end, in ``teardown``: heal, loss 0, resume all,
run ``settle_bound(config, 8)`` (35.8 s with ``Config.local()``), then every live
member sees exactly the live members it can reach alive (all of them, unless a
node's every contact died before anyone learned of it; see ``Churn.agreed``),
and still does 10 probe intervals later.
"""

from __future__ import annotations

import sys

from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
)

from mesh.config import Config, parse_address
from mesh.core.effects import EventKind, MemberEvent
from mesh.core.suspicion import suspicion_timeout
from mesh.messages import MemberStatus
from mesh.testing.simnet import SimNet

from .machine import SimMachine

MAX_NODES = 8
MIN_UP = 2


def settle_bound(cfg: Config, n: int) -> float:
    """Virtual seconds after which a healed, loss-free mesh must agree.

    * ``2 * reconnect_interval``: the first reconnect exchange across a healed
      partition only makes both ends refute (each side holds the other dead at
      the same incarnation); the next carries the refuted incarnations;
    * ``2 * push_pull_interval``: a member declared dead whose refutation no
      longer circulates learns it from a periodic push-pull, and the refutation
      spreads by the next one at worst;
    * ``max suspicion timeout``: a crashed member still suspected somewhere;
    * ``n * probe_interval * awareness_max_multiplier``: one full probe round of
      the slowest (least healthy) prober, to find a crash it alone knows of;
    * ``tcp_timeout + join_backoff_max``: a joiner whose seeds were unreachable
      retries.
    """
    max_suspicion = cfg.suspicion_max_timeout_mult * suspicion_timeout(
        cfg.suspicion_mult, n, cfg.probe_interval
    )
    return (
        2 * cfg.reconnect_interval
        + 2 * cfg.push_pull_interval
        + max_suspicion
        + n * cfg.probe_interval * cfg.awareness_max_multiplier
        + cfg.tcp_timeout
        + cfg.join_backoff_max
    )


class Churn(SimMachine):
    max_nodes = MAX_NODES

    def __init__(self) -> None:
        super().__init__()
        # (observer, process generation, member) -> highest incarnation seen
        self.seen: dict[tuple[str, int, str], int] = {}
        # (observer, process generation, member) -> incarnation seen as left
        self.seen_left: dict[tuple[str, int, str], int] = {}
        self.violations: list[str] = []

    # --- helpers ---

    def on_event(self, now: float, observer: str, event: MemberEvent) -> None:
        """Transitions as they happen: a member seen left must not come back
        alive at the same or a lower incarnation (resurrection by old gossip)."""
        gen = self.net.nodes[observer].gen
        key = (observer, gen, event.member.name)
        inc = event.member.incarnation
        if event.kind is EventKind.LEFT:
            self.seen_left[key] = inc
        elif event.kind in (EventKind.ALIVE, EventKind.JOIN):
            left = self.seen_left.get(key)
            if left is not None and inc <= left:
                self.violations.append(
                    f"t={now:.3f}: {observer} saw {key[2]} alive at {inc} after it "
                    f"left at {left}"
                )

    # --- rules ---

    @initialize(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 6))
    def init(self, seed: int, n: int) -> None:
        self.sim = SimNet.cluster(n, seed=seed, profile="local")
        self.next_name = n
        self.net.listeners.append(self.on_event)
        self.net.run_for(1.0)

    @precondition(lambda self: len(self.runnable()) > MIN_UP)
    @rule(pick=st.integers(0, 63), refuse=st.booleans())
    def crash(self, pick: int, refuse: bool) -> None:
        nodes = self.runnable()
        self.net.crash(nodes[pick % len(nodes)].name, refuse=refuse)

    @rule(pick=st.integers(0, 63))
    def restart(self, pick: int) -> None:
        # Seeds that resolve to current members (as a DNS seed would): with its
        # original seed list, a restarted seed could join only other restarted
        # seeds and form a second mesh that nobody would ever merge (memberlist
        # and serf behave the same way).
        nodes = sorted(self.net.nodes)
        self.net.restart(nodes[pick % len(nodes)], seeds=self.seeds())

    @precondition(lambda self: len(self.runnable()) > MIN_UP)
    @rule(pick=st.integers(0, 63))
    def leave(self, pick: int) -> None:
        nodes = self.runnable()
        self.net.leave(nodes[pick % len(nodes)].name)

    @precondition(lambda self: len(self.runnable()) > 0)
    @rule(pick=st.integers(0, 63), duration=st.floats(0.05, 8.0))
    def pause(self, pick: int, duration: float) -> None:
        nodes = self.runnable()
        self.net.pause(nodes[pick % len(nodes)].name, duration)

    @rule(members=st.sets(st.integers(0, MAX_NODES - 1), min_size=1))
    def partition(self, members: set[int]) -> None:
        names = sorted(self.net.nodes)
        self.net.partition([[names[i % len(names)] for i in members]])

    @rule()
    def heal(self) -> None:
        self.net.heal()

    @rule(rate=st.sampled_from([0.0, 0.05, 0.2, 0.5]))
    def set_loss(self, rate: float) -> None:
        self.net.set_loss(rate)

    @rule(dt=st.floats(0.01, 4.0))
    def advance(self, dt: float) -> None:
        self.net.run_for(dt)

    # --- safety, every step ---

    @invariant()
    def no_violation_seen(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def incarnations_never_decrease(self) -> None:
        if self.sim is None:
            return
        for node in self.up():
            for member in node.core.membership:
                key = (node.name, node.gen, member.name)
                before = self.seen.get(key, -1)
                assert member.incarnation >= before, (key, before, member.incarnation)
                self.seen[key] = member.incarnation

    @invariant()
    def live_node_is_alive_in_its_own_view(self) -> None:
        if self.sim is None:
            return
        for node in self.up():
            local = node.core.membership.local
            if node.core.membership.leaving:
                assert local.status is MemberStatus.LEFT
            else:
                assert local.status is MemberStatus.ALIVE, node

    @invariant()
    def bounds_hold(self) -> None:
        if self.sim is None:
            return
        for node in self.up():
            core = node.core
            m = core.membership
            cfg = node.config
            assert len(m.broadcasts) <= cfg.broadcast_queue_max
            assert len(m) <= cfg.max_members
            assert len(core.prober.relays) <= cfg.max_pending_probes
            assert node.backlog_datagrams <= self.net.pause_backlog
            suspects = {x.name for x in m if x.status is MemberStatus.SUSPECT}
            assert set(m.suspicions) == suspects, (node, set(m.suspicions), suspects)

    # --- liveness, once at the end ---

    def teardown(self) -> None:
        # Skip when a step already failed: that failure is the one to report.
        if self.sim is None or sys.exc_info()[0] is not None:
            return
        sim = self.net
        self.quiesce()
        cfg = sim.node("n0").config
        # Run the whole bound, not just to a first agreement: state from before
        # the settle (a probe sent under loss that ends late, a stale suspect
        # in a gossip queue) can still raise a valid accusation just after it,
        # which is refuted or repaired by push-pull within the bound.
        sim.run_for(settle_bound(cfg, MAX_NODES))
        views = {n.name: sorted(sim.alive_view(n.name)) for n in self.up()}
        assert self.agreed(), f"no agreement after settling: {views}"
        # Quiet now: it must stay so.
        sim.run_for(10 * cfg.probe_interval)
        views = {n.name: sorted(sim.alive_view(n.name)) for n in self.up()}
        assert self.agreed(), f"agreement did not hold: {views}"
        assert not self.violations, self.violations

    def agreed(self) -> bool:
        """Each set of live members that can reach one another agrees on itself.

        "Can reach" is the protocol's contact graph: X and Y are linked when one
        has the other in its table as alive, suspect or dead (probed, gossiped
        to, synced with, or reconnected to), or when X has not joined yet and Y
        is one of its seeds (retried with backoff). A healed partition is one
        component (the sides hold each other dead), so it must merge. Separate
        components arise only as in memberlist and serf: a node whose every
        contact died or left before anyone else learned of it stays alone, since
        a join is not retried once one seed has answered.
        """
        sim = self.net
        live = [n for n in self.up() if not n.core.membership.leaving]
        names = {n.name for n in live}
        by_addr = {n.addr: n.name for n in live}
        parent = {name: name for name in names}

        def root(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for node in live:
            links = [
                m.name
                for m in node.core.membership
                if m.name in names and m.status is not MemberStatus.LEFT
            ]
            if not node.core.joined:
                links += [
                    by_addr[a]
                    for a in map(parse_address, node.config.join)
                    if a in by_addr
                ]
            for other in links:
                parent[root(other)] = root(node.name)
        components: dict[str, set[str]] = {}
        for name in names:
            components.setdefault(root(name), set()).add(name)
        return all(
            sim.alive_view(name) == component
            for component in components.values()
            for name in component
        )


TestChurn = Churn.TestCase

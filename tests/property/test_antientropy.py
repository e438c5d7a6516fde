"""Route tables under churn: a Hypothesis state machine over the simulator.

Writes and deletes land on random nodes while the network loses packets,
partitions and heals, and nodes pause, crash and restart (empty, as a real
restart is: mesh keeps no disk state). Tombstones are collected after a short
``route_tombstone_ttl`` so collection happens during the run.

Checked at the end (``teardown``), after the faults stop and a bounded settle:

* every live member holds the identical table (live routes, and tombstones
  younger than the collection horizon);
* every write accepted by a node that never crashed is present unless a larger
  version of its key is (a durable write is never lost);
* no key comes back: each key's surviving entry is the largest version among
  the writes that can have survived, so a delete is never undone by an older
  write, including one held by a node away for a while, or a late push after
  the tombstone was collected.

Every run draws a seed: a failure prints ``state.init(seed=..., n=...)`` and the
steps, and replays exactly.
"""

from __future__ import annotations

import sys

from hypothesis import settings, strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
)

from mesh.core.routes import OutcomeStatus, Route, Version, version_ms
from mesh.testing.simnet import SimNet

from .machine import SimMachine
from .test_churn import settle_bound

MAX_NODES = 6
MIN_UP = 2
TTL = 60.0  # virtual seconds: several collections per run
MAX_PARTITION = 10.0  # well inside TTL (docs/antientropy.md: the assumption)
KEYS = [f"k{i}" for i in range(8)]


class RouteChurn(SimMachine):
    max_nodes = MAX_NODES

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, Route]] = []  # (node name, stored entry)
        self.crashed: set[str] = set()  # names that crashed at least once
        self.partitioned_at: float | None = None
        self.counter = 0

    # --- rules ---

    @initialize(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 5))
    def init(self, seed: int, n: int) -> None:
        self.sim = SimNet.cluster(
            n, seed=seed, profile="local", route_tombstone_ttl=TTL
        )
        self.next_name = n
        self.net.run_for(1.0)

    @rule(pick=st.integers(0, 63), key=st.sampled_from(KEYS), delete=st.booleans())
    def write(self, pick: int, key: str, delete: bool) -> None:
        nodes = self.runnable()
        if not nodes:
            return
        node = nodes[pick % len(nodes)]
        now = self.net.now
        self.counter += 1
        refused = node.core.write_refusal()
        index = node.core.routes.index
        if delete:
            outcome, effects = node.core.delete_route(key, None, now, now)
        else:
            target = f"http://t{self.counter}"
            outcome, effects = node.core.put_route(key, target, {}, None, now, now)
        if refused is not None:
            # Not joined or not caught up: it cannot know the revision it
            # would inherit, so it refuses rather than lose the write later.
            assert outcome.status is OutcomeStatus.UNAVAILABLE
            assert node.core.routes.index == index
            self.net.execute(node.name, effects)
            return
        assert outcome.status is OutcomeStatus.APPLIED
        assert outcome.route is not None
        self.writes.append((node.name, outcome.route))
        self.net.execute(node.name, effects)

    @precondition(lambda self: len(self.runnable()) > MIN_UP)
    @rule(pick=st.integers(0, 63))
    def crash(self, pick: int) -> None:
        nodes = self.runnable()
        node = nodes[pick % len(nodes)]
        self.crashed.add(node.name)
        self.net.crash(node.name)

    @rule(pick=st.integers(0, 63))
    def restart(self, pick: int) -> None:
        down = [n for n in self.net.nodes.values() if not n.up]
        if down:
            node = down[pick % len(down)]
            self.net.restart(node.name, seeds=self.seeds())

    @precondition(lambda self: len(self.runnable()) > MIN_UP)
    @rule(pick=st.integers(0, 63), duration=st.floats(0.1, 5.0))
    def pause(self, pick: int, duration: float) -> None:
        nodes = self.runnable()
        self.net.pause(nodes[pick % len(nodes)].name, duration)

    @rule(members=st.sets(st.integers(0, MAX_NODES - 1), min_size=1))
    def partition(self, members: set[int]) -> None:
        names = list(self.net.nodes)
        side = {names[i % len(names)] for i in members}
        self.net.partition([side, set(names) - side])
        if self.partitioned_at is None:
            self.partitioned_at = self.net.now

    @rule()
    def heal(self) -> None:
        self.net.heal()
        self.partitioned_at = None

    @rule(rate=st.sampled_from([0.0, 0.05, 0.2]))
    def set_loss(self, rate: float) -> None:
        self.net.set_loss(rate)

    @rule(dt=st.floats(0.1, 8.0))
    def advance(self, dt: float) -> None:
        start = self.partitioned_at
        if start is not None and self.net.now + dt - start > MAX_PARTITION:
            self.heal()
        self.net.run_for(dt)

    # --- safety, after every step ---

    @invariant()
    def bounded(self) -> None:
        if self.sim is None:
            return
        for node in self.up():
            core = node.core
            # one entry per key, tombstones included, whatever the faults
            assert len(list(core.routes)) <= len(KEYS)
            assert core.pushes.depth() <= len(KEYS) * MAX_NODES

    # --- convergence, once at the end ---

    def teardown(self) -> None:
        if self.sim is None or sys.exc_info()[0] is not None:
            return
        sim = self.net
        self.quiesce()
        cfg = sim.node("n0").config
        sim.run_for(settle_bound(cfg, MAX_NODES) + 20 * cfg.antientropy_interval)
        live = [n for n in self.up() if n.core.joined]
        assert live, "no live member"
        horizon = int((sim.now - TTL) * 1000) + 5_000  # clear of collections
        tables = {}
        for node in live:
            assert node.core.ae.caught_up, f"{node.name} never caught up"
            tables[node.name] = {
                r.key: r.version
                for r in node.core.routes
                if not r.deleted or version_ms(r.version) > horizon
            }
        first = next(iter(tables.values()))
        assert all(t == first for t in tables.values()), tables
        reference = live[0].core.routes
        for key in KEYS:
            entry = reference.get(key)
            durable = [
                r.version
                for name, r in self.writes
                if r.key == key and name not in self.crashed
            ]
            if durable:
                best = max(durable)
                if entry is None:
                    # absent only if a delete at or past it (by any node) was
                    # collected
                    assert any(
                        r.key == key and r.deleted and r.version >= best
                        for _, r in self.writes
                    ), f"{key}: durable write {best} lost"
                else:
                    assert entry.version >= best, (key, entry.version, best)
            if entry is None:
                continue
            # Nothing invented, and no older write came back over a newer one
            # (a newer one that was durable is checked just above).
            made = {r.version: r for _, r in self.writes if r.key == key}
            assert entry.version in made, (key, entry.version)
            assert entry == made[entry.version]
        assert all(isinstance(v, Version) for v in first.values())


# Each example simulates minutes of a small mesh: fewer examples than the
# profile's default, more steps each (the faults need time to combine).
RouteChurn.TestCase.settings = settings(
    settings.default,
    max_examples=max(10, settings.default.max_examples // 2),
    stateful_step_count=40,
)
TestRouteChurn = RouteChurn.TestCase

"""The probe order: shuffled round robin with newcomers at random offsets
(memberlist aliveNode), so every member is equally likely to be probed next."""

from __future__ import annotations

import random

from mesh.config import Config
from mesh.core.membership import Membership
from mesh.messages import Alive

CFG = Config.lan(name="me")


def _alive(name: str, i: int) -> Alive:
    return Alive(1, name, (f"10.0.{i // 250}.{i % 250 + 1}", 7946), {})


class _FixedOffset(random.Random):
    """randrange answers ``offset`` (the insertion point under test)."""

    def __init__(self, offset: int) -> None:
        super().__init__(0)
        self.offset = offset

    def randrange(self, *args: object, **kw: object) -> int:  # type: ignore[override]
        return self.offset


def _membership(rng: random.Random, names: list[str]) -> Membership:
    m = Membership(CFG, addr=("10.9.9.9", 7946), incarnation=1, rng=rng, now=0.0)
    for i, name in enumerate(names):
        m.on_alive(_alive(name, i), 0.0)
    return m


def test_newcomer_in_the_probed_part_waits_and_the_displaced_member_moves_last() -> (
    None
):
    m = _membership(random.Random(1), ["b", "c", "d", "e"])
    m._probe_order, m._probe_index = ["b", "c", "d", "e"], 2  # b and c probed
    m.rng = _FixedOffset(1)
    m.on_alive(_alive("new", 50), 0.0)
    assert m._probe_order == ["b", "new", "d", "e", "c"]
    # Everyone still due this round is probed in it; the newcomer next round.
    rest = [m.next_probe_target() for _ in range(3)]
    assert [x.name for x in rest if x] == ["d", "e", "c"]


def test_newcomer_in_the_part_to_come_pushes_one_member_back() -> None:
    m = _membership(random.Random(1), ["b", "c", "d", "e"])
    m._probe_order, m._probe_index = ["b", "c", "d", "e"], 2
    m.rng = _FixedOffset(2)
    m.on_alive(_alive("new", 50), 0.0)
    assert m._probe_order == ["b", "c", "new", "e", "d"]


def test_every_member_once_per_round_after_joins() -> None:
    m = _membership(random.Random(7), [f"o{i}" for i in range(10)])
    for _ in range(4):
        m.next_probe_target()
    for j in range(10):
        m.on_alive(_alive(f"n{j}", 100 + j), 0.0)
    order = m._probe_order
    assert sorted(order) == sorted(m._others)  # a permutation: none lost or doubled


def test_after_a_wave_of_joins_old_members_are_as_likely_next_as_newcomers() -> None:
    # 20 members, 15 already probed this round, then 20 join at once (a fresh
    # mesh, a rolling restart). A crash of any member is first noticed by the
    # first of its peers to probe it, so each member should have the same
    # chance to be among a node's next probes: 8 of 40 here. Inserting
    # newcomers only into the rest of the round gave old members 0.08 and
    # newcomers 0.32, so old members were found dead late.
    trials, nxt = 400, 8
    old = new = 0
    for seed in range(trials):
        m = _membership(random.Random(seed), [f"o{i}" for i in range(20)])
        for _ in range(15):
            m.next_probe_target()
        for j in range(20):
            m.on_alive(_alive(f"n{j}", 100 + j), 0.0)
        upcoming = set()
        for _ in range(nxt):
            target = m.next_probe_target()
            assert target is not None
            upcoming.add(target.name)
        old += sum(f"o{i}" in upcoming for i in range(20))
        new += sum(f"n{j}" in upcoming for j in range(20))
    fair = nxt / 40
    assert abs(old / (trials * 20) - fair) < 0.03
    assert abs(new / (trials * 20) - fair) < 0.03

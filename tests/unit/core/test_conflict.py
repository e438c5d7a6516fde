"""Two processes under one name (memberlist "Conflicting address"): the live
holder keeps the name; a dead or left one is taken over by the new address."""

from __future__ import annotations

import random

from mesh.config import Config
from mesh.core.effects import EventKind, Send
from mesh.core.membership import Conflict
from mesh.core.node import NodeCore
from mesh.messages import (
    Address,
    Alive,
    Dead,
    MemberState,
    MemberStatus,
    PushPull,
    Suspect,
)

from .harness import Wire

LAN = Config.lan(tcp_fallback_probe=False)
X1: Address = ("10.0.0.2", 7946)
X2: Address = ("10.0.0.3", 7946)


def _core(name: str = "me", incarnation: int = 0) -> NodeCore:
    return NodeCore(
        Config.lan(name=name),
        addr=("10.0.0.1", 7946),
        rng=random.Random(1),
        now=0.0,
        incarnation=incarnation,
    )


def _addr(core: NodeCore, name: str) -> Address:
    view = core.member(name)
    assert view is not None
    return view.addr


def test_alive_at_another_address_is_refused_while_the_member_lives() -> None:
    core = _core()
    m = core.membership
    core.receive(X1, [Alive(5, "x", X1)], 0.0)
    # Same incarnation, then a higher one (what two processes refuting each
    # other produce): both refused, the first holder keeps the name.
    core.receive(X2, [Alive(5, "x", X2)], 1.0)
    core.receive(X2, [Alive(9, "x", X2)], 2.0)
    view = core.member("x")
    assert view is not None
    assert (view.addr, view.incarnation, view.status) == (X1, 5, MemberStatus.ALIVE)
    assert m.stats["alive_conflicts"] == 2
    # One report for the episode, naming both addresses.
    assert list(m.conflicts) == [
        Conflict(view, X2, 5, local=False),
    ]
    # Not re-gossiped: the claim goes no further than us.
    about_x = [b for b in m.take_broadcasts(10_000) if getattr(b, "name", "") == "x"]
    assert about_x == [Alive(5, "x", X1)]
    # Suspect is live too: still refused.
    core.receive(X1, [Suspect(5, "x", "y")], 3.0)
    core.receive(X2, [Alive(10, "x", X2)], 3.5)
    assert _addr(core, "x") == X1
    assert m.stats["alive_conflicts"] == 3
    assert len(m.conflicts) == 1


def test_dead_or_left_member_is_taken_over_at_once() -> None:
    core = _core()
    core.receive(X1, [Alive(5, "x", X1), Alive(5, "y", X1)], 0.0)
    core.receive(X1, [Dead(5, "x", "z"), Dead(5, "y", "y")], 1.0)
    out = core.receive(X2, [Alive(6, "x", X2), Alive(6, "y", X2)], 1.0)
    for name in ("x", "y"):
        view = core.member(name)
        assert view is not None
        assert (view.addr, view.status) == (X2, MemberStatus.ALIVE)
    alive = [e for e in out if getattr(e, "kind", None) is EventKind.ALIVE]
    assert {e.member.name for e in alive} == {"x", "y"}  # type: ignore[union-attr]
    assert core.membership.stats["alive_conflicts"] == 0
    assert not core.membership.conflicts
    # Now the old address is the conflicting one.
    core.receive(X1, [Alive(7, "x", X1)], 2.0)
    assert _addr(core, "x") == X2
    assert core.membership.conflicts[-1].other == X1


def test_push_pull_merge_applies_the_same_rule() -> None:
    core = _core()
    m = core.membership
    core.receive(X1, [Alive(5, "x", X1)], 0.0)
    m.merge([MemberState("x", X2, 9, MemberStatus.ALIVE)], "y", 1.0)
    assert _addr(core, "x") == X1
    assert m.stats["alive_conflicts"] == 1
    assert m.conflicts[-1].other == X2
    # Through a served exchange too (the newcomer's join pushes its own row).
    core.handle_exchange(
        PushPull(True, (MemberState("x", X2, 9, MemberStatus.ALIVE),), "x"), 2.0
    )
    assert _addr(core, "x") == X1
    assert m.stats["alive_conflicts"] == 2
    assert len(m.conflicts) == 1  # same episode
    core.receive(X1, [Dead(5, "x", "z")], 3.0)
    m.merge([MemberState("x", X2, 9, MemberStatus.ALIVE)], "y", 4.0)
    assert _addr(core, "x") == X2


def test_conflict_episode_reported_again_after_quiet_or_new_address() -> None:
    core = _core()
    m = core.membership
    quiet = 10 * core.config.push_pull_interval
    core.receive(X1, [Alive(5, "x", X1)], 0.0)
    core.receive(X2, [Alive(5, "x", X2)], 1.0)
    core.receive(X2, [Alive(5, "x", X2)], 1.0 + quiet - 1.0)  # same episode
    assert len(m.conflicts) == 1
    core.receive(X2, [Alive(5, "x", X2)], 1.0 + 2 * quiet)  # after a quiet period
    assert len(m.conflicts) == 2
    x3: Address = ("10.0.0.4", 7946)
    core.receive(x3, [Alive(5, "x", x3)], 1.0 + 2 * quiet)  # a third claimant
    assert [c.other for c in m.conflicts] == [X2, X2, x3]
    assert m.stats["alive_conflicts"] == 4


def test_we_still_refute_our_name_claimed_elsewhere() -> None:
    core = _core(incarnation=7)
    m = core.membership
    core.receive(X2, [Alive(7, "me", X2)], 1.0)
    assert core.incarnation == 8
    assert _addr(core, "me") == ("10.0.0.1", 7946)
    assert m.stats["name_conflicts"] == 1
    assert m.stats["refutations"] == 1
    assert [(c.other, c.incarnation, c.local) for c in m.conflicts] == [(X2, 7, True)]
    assert m.conflicts[0].member.incarnation == 8
    # A stale claim (older incarnation) is neither refuted nor reported.
    core.receive(X2, [Alive(3, "me", X2)], 2.0)
    assert core.incarnation == 8
    assert len(m.conflicts) == 1
    # A higher one again: refuted again, same episode.
    core.receive(X2, [Alive(20, "me", X2)], 3.0)
    assert core.incarnation == 21
    assert len(m.conflicts) == 1


def _dead_at(wire: Wire, observer: str, name: str) -> float:
    return next(
        t
        for t, obs, e in wire.events
        if obs == observer and e.kind is EventKind.DEAD and e.member.name == name
    )


def _join_as_c(wire: Wire, key: str, addr: Address, incarnation: int) -> NodeCore:
    """A process named "c" at ``addr`` (on the wire as ``key``) joining
    through a at t = 5: one member-table exchange, both sides merged."""
    c2 = NodeCore(
        Config.lan(name="c", tcp_fallback_probe=False),
        addr=addr,
        rng=random.Random(99),
        now=5.0,
        incarnation=incarnation,
    )
    wire.cores[key] = c2
    wire.addr[key] = addr
    wire.by_addr[addr] = key
    a = wire.cores["a"]
    reply, effects = a.handle_exchange(PushPull(True, c2.membership.states(), "c"), 5.0)
    wire._run("a", effects)
    c2.membership.merge(reply.members, "a", 5.0)
    wire._run(key, c2._drain())
    return c2


def test_two_live_processes_one_name_no_flapping() -> None:
    # c runs; a second "c" starts at another address and joins through a.
    wire = Wire(LAN, ["a", "b", "c"])
    wire.connect_all()
    wire.advance_to(5.0)
    old = wire.addr["c"]
    c1 = wire.cores["c"]
    new: Address = ("10.0.0.9", 7946)
    # (under its own key "c2" on the wire, with the same name "c")
    c2 = _join_as_c(wire, "c2", new, c1.incarnation + 1)
    a = wire.cores["a"]
    # The newcomer believes it joined: it lists a and b alive.
    for name in ("a", "b"):
        assert c2.member(name).status is MemberStatus.ALIVE  # type: ignore[union-attr]
    for t in range(6, 61):
        wire.advance_to(float(t))
        for name in ("a", "b"):
            assert _addr(wire.cores[name], "c") == old, (t, name)
            assert wire.status(name, "c") is MemberStatus.ALIVE
    assert a.membership.stats["alive_conflicts"] >= 1
    assert len(a.membership.conflicts) == 1
    assert a.membership.conflicts[0].other == new
    # c1 never heard of c2, so neither refuted: no incarnation war.
    assert c1.membership.stats["refutations"] == 0


def test_restart_on_a_new_address_is_accepted_once_the_old_one_is_dead() -> None:
    # c crashes at t = 5 and restarts at once on another port (a higher
    # incarnation, as the agent's start-up incarnation is the wall clock).
    wire = Wire(LAN, ["a", "b", "c"])
    wire.connect_all()
    wire.advance_to(5.0)
    old, c1 = wire.addr["c"], wire.cores["c"]
    del wire.by_addr[old]  # nothing listens there any more
    del wire.cores["c"]
    new: Address = ("10.0.0.9", 7946)
    _join_as_c(wire, "c", new, c1.incarnation + 100)
    for t in range(6, 61):
        wire.advance_to(float(t))
    for name in ("a", "b"):
        dead = _dead_at(wire, name, "c")
        # Refused while the old address was live (no flip before its death),
        # taken over at the very moment it is declared dead: the claim refused
        # at t = 5 is applied then, without waiting for the newcomer's next
        # alive (its next push-pull, up to push_pull_interval later).
        assert 5.0 < dead < 20.0
        moves = [
            (t, e.kind)
            for t, obs, e in wire.events
            if obs == name and e.member.name == "c" and e.member.addr == new
        ]
        assert moves[0] == (dead, EventKind.ALIVE), (name, dead, moves)
        view = wire.cores[name].member("c")
        assert view is not None
        assert (view.addr, view.status) == (new, MemberStatus.ALIVE)
        assert view.incarnation == c1.incarnation + 100
        assert wire.cores[name].membership.stats["conflicts_taken_over"] == 1


def test_stale_claim_is_not_applied_when_the_holder_dies() -> None:
    core = _core()
    m = core.membership
    quiet = 10 * core.config.push_pull_interval
    core.receive(X1, [Alive(5, "x", X1)], 0.0)
    core.receive(X2, [Alive(6, "x", X2)], 1.0)
    core.receive(X1, [Dead(5, "x", "z")], 1.0 + quiet)
    view = core.member("x")
    assert view is not None
    assert (view.addr, view.status) == (X1, MemberStatus.DEAD)
    assert m.stats["conflicts_taken_over"] == 0


def test_a_newcomer_whose_name_is_held_elsewhere_knows_it_is_no_member() -> None:
    # The second process under a taken name (its incarnation, the wall clock,
    # is the higher): peers refuse its alive and show it the holder's row. It
    # used to say nothing and report itself ready.
    core = _core(incarnation=100)
    m = core.membership
    core.receive(X2, [Alive(40, "me", X2)], 1.0)
    assert core.incarnation == 100  # nothing to out-incarnate
    assert m.local_conflict == X2
    assert [(c.other, c.incarnation, c.local) for c in m.conflicts] == [(X2, 40, True)]
    # Told again (every exchange with a peer carries the row): one report.
    core.receive(X2, [Alive(40, "me", X2)], 2.0)
    assert len(m.conflicts) == 1
    assert m.local_conflict == X2
    # Once a peer holds us at our own address (the other was found dead and
    # we took over), the conflict is over.
    core.receive(X1, [Alive(100, "me", ("10.0.0.1", 7946))], 3.0)
    assert m.local_conflict is None


def test_a_newcomer_whose_name_is_held_suspect_elsewhere_knows_it_is_no_member() -> (
    None
):
    # Our previous life, paused or unreachable, is suspect at its old address:
    # still live, so peers refuse our alive until it is declared dead (audit
    # 11: ready for 3.4 s while every peer pushed to the old address).
    core = _core(incarnation=100)
    m = core.membership
    me = ("10.0.0.1", 7946)
    m.merge([MemberState("me", X2, 40, MemberStatus.SUSPECT)], "x", 1.0)
    assert m.local_conflict == X2
    assert [(c.other, c.incarnation, c.local) for c in m.conflicts] == [(X2, 40, True)]
    # Suspected at our own address is no conflict, nor dead elsewhere.
    other = _core(incarnation=100)
    other.membership.merge([MemberState("me", me, 100, MemberStatus.SUSPECT)], "x", 1.0)
    other.membership.merge([MemberState("me", X2, 40, MemberStatus.DEAD)], "x", 1.0)
    assert other.membership.local_conflict is None
    # Held at our own address by a peer: the conflict is over.
    core.receive(X1, [Alive(101, "me", me)], 3.0)
    assert m.local_conflict is None


def test_a_process_whose_name_is_held_elsewhere_leaves_without_a_word() -> None:
    # audit of session 12: the second "c" was refused, then stopped with
    # SIGTERM; its leave named "c", so peers listed the live c as left
    # (at the second process's address) until c refuted.
    wire = Wire(LAN, ["a", "b", "c"])
    wire.connect_all()
    wire.advance_to(5.0)
    old, c1 = wire.addr["c"], wire.cores["c"]
    new: Address = ("10.0.0.9", 7946)
    c2 = _join_as_c(wire, "c2", new, c1.incarnation + 1)
    wire.advance_to(10.0)
    assert c2.membership.local_conflict == old
    wire._run("c2", c2.leave(10.0))
    assert not c2.leave_pending()  # nothing to wait for: the shell exits now
    assert c2.membership.stats["leaves_unannounced"] == 1
    del wire.cores["c2"], wire.by_addr[new]  # the process is gone
    for t in range(11, 61):
        wire.advance_to(float(t))
        for name in ("a", "b"):
            assert _addr(wire.cores[name], "c") == old, (t, name)
            assert wire.status(name, "c") is MemberStatus.ALIVE, (t, name)
    assert not [e for _, _, e in wire.events if e.kind is EventKind.LEFT]
    assert c1.membership.stats["refutations"] == 0  # nothing to refute
    # A member that holds its own name leaves as before: announced at once,
    # and seen left, not taken over by the stale claim of the second process
    # (which would list c alive at an address nobody serves until probed).
    sent = [e for e in c1.leave(61.0) if isinstance(e, Send)]
    assert {e.addr for e in sent} == {wire.addr["a"], wire.addr["b"]}
    assert all(Dead(c1.incarnation, "c", "c") in e.messages for e in sent)
    wire._run("c", sent)
    for name in ("a", "b"):
        assert wire.status(name, "c") is MemberStatus.LEFT
        assert _addr(wire.cores[name], "c") == old
        assert wire.cores[name].membership.stats["conflicts_taken_over"] == 0


def test_a_claimant_still_running_takes_the_name_when_the_holder_leaves() -> None:
    # The overlap of a restart on a new address: the old process leaves
    # gracefully while the new one, refused so far, still runs. The new one
    # hears of the leave, refutes it, and peers take its alive at once.
    wire = Wire(LAN, ["a", "b", "c"])
    wire.connect_all()
    wire.advance_to(5.0)
    c1 = wire.cores["c"]
    new: Address = ("10.0.0.9", 7946)
    c2 = _join_as_c(wire, "c2", new, c1.incarnation + 1)
    wire.advance_to(10.0)
    wire._run("c", c1.leave(10.0))
    del wire.cores["c"], wire.by_addr[wire.addr["c"]]  # the old one exits
    for t in range(11, 21):
        wire.advance_to(float(t))
    for name in ("a", "b"):
        view = wire.cores[name].member("c")
        assert view is not None
        assert (view.addr, view.status) == (new, MemberStatus.ALIVE), name
    assert c2.membership.local_conflict is None  # a peer holds it at its address

"""NodeCore transitions with exact virtual times, over a synchronous wire."""

from __future__ import annotations

import random

import attrs
import pytest

from mesh.config import Config
from mesh.core.effects import (
    EventKind,
    Exchange,
    ExchangePurpose,
    ProbeTcp,
    ResolveSeeds,
    Send,
)
from mesh.core.node import NodeCore
from mesh.messages import (
    Ack,
    Address,
    Alive,
    Dead,
    MemberState,
    MemberStatus,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
)

from .harness import Wire

LAN = Config.lan(tcp_fallback_probe=False)


def probe_next(core: NodeCore, target: str, *, at: float) -> None:
    """Make ``target`` the next member ``core`` probes, at time ``at``."""
    core.prober.probe = None
    core.membership._probe_order = [target]
    core.membership._probe_index = 0
    core.prober.next_probe_at = at
    core._planned = None  # timers moved by hand: not a stall


def _events(wire: Wire, kind: EventKind, member: str) -> list[tuple[float, str]]:
    return [
        (t, obs)
        for t, obs, e in wire.events
        if e.kind is kind and e.member.name == member
    ]


def test_crash_suspect_then_dead_after_min_timeout_at_n3() -> None:
    # n = 3: k = suspicion_mult - 2 = 2 > n - 2, so k = 0 and the timer is the
    # minimum: 4 * max(1, log10 3) * 1 s = 4 s, confirmations or not.
    wire = Wire(LAN, ["a", "b", "c"])
    wire.connect_all()
    wire.advance_to(5.0)
    wire.down.add("c")
    wire.advance_to(30.0)
    suspects = _events(wire, EventKind.SUSPECT, "c")
    deaths = _events(wire, EventKind.DEAD, "c")
    assert suspects
    assert deaths
    first_suspect, accuser = suspects[0]
    # The accuser's own timer fires exactly 4 s after it suspected.
    own = [t for t, obs in deaths if obs == accuser]
    assert own[0] == pytest.approx(first_suspect + 4.0)
    assert wire.status("a", "c") is MemberStatus.DEAD
    assert wire.status("b", "c") is MemberStatus.DEAD


def test_probe_timeline_ping_then_ping_req_then_suspect() -> None:
    wire = Wire(LAN, ["a", "b", "c"])
    wire.connect_all()
    a = wire.cores["a"]
    # Force a to probe c next, at t = 10.
    wire.advance_to(9.0)
    wire.down.add("c")
    probe_next(a, "c", at=10.0)
    start = len(wire.sent)
    wire.advance_to(10.0)
    pings = [s for s in wire.sent[start:] if s[1] == "a" and isinstance(s[3][0], Ping)]
    assert pings
    assert pings[0][0] == 10.0
    assert pings[0][2] == wire.addr["c"]
    wire.advance_to(10.5)  # probe_timeout: indirect probe through b
    reqs = [
        s for s in wire.sent[start:] if s[1] == "a" and isinstance(s[3][0], PingReq)
    ]
    assert reqs
    assert reqs[0][0] == 10.5
    assert reqs[0][2] == wire.addr["b"]
    wire.advance_to(11.0)  # end of the interval: suspect
    assert wire.status("a", "c") is MemberStatus.SUSPECT
    # b's own ping to c timed out after 0.8 * probe_timeout and its nack
    # reached a at 10.9, before a's deadline at 11.0: counted, so a's health
    # grew by 1 for the failed probe, not by 2.
    nacks = [s for s in wire.sent[start:] if s[1] == "b" and isinstance(s[3][0], Nack)]
    assert [t for t, *_ in nacks] == [pytest.approx(10.9)]
    assert a.membership.stats["probe_failed"] == 1


def test_suspect_is_piggybacked_on_ping_to_suspect_and_refuted_at_once() -> None:
    wire = Wire(LAN, ["a", "b", "c"])
    wire.connect_all()
    a, c = wire.cores["a"], wire.cores["c"]
    inc = c.incarnation
    a.membership.on_suspect(Suspect(inc, "c", "a"), wire.now)
    a.membership.broadcasts._entries.clear()
    probe_next(a, "c", at=1.0)
    start = len(wire.sent)
    wire.advance_to(1.0)
    ping = next(
        s for s in wire.sent[start:] if s[1] == "a" and isinstance(s[3][0], Ping)
    )
    assert any(isinstance(m, Suspect) and m.name == "c" for m in ping[3])
    assert c.incarnation == inc + 1  # refuted on receipt
    assert c.health_score == 1  # Lifeguard: refuting counts against our health
    # The refutation reached a (piggybacked on the ack): alive again.
    assert wire.status("a", "c") is MemberStatus.ALIVE


def test_refused_tcp_probe_declares_dead_after_short_timeout() -> None:
    cfg = Config.lan(refused_suspicion_mult=1.0)
    wire = Wire(cfg, ["a", "b", "c", "d", "e"])
    wire.connect_all()
    wire.down.add("c")
    wire.refuse.add("c")
    wire.advance_to(30.0)
    suspect_t, accuser = _events(wire, EventKind.SUSPECT, "c")[0]
    dead_t = min(t for t, obs in _events(wire, EventKind.DEAD, "c") if obs == accuser)
    # Refused at probe_timeout (the TCP fallback), dead one probe_interval later,
    # far below Lifeguard's 4 s .. 24 s range for n = 5.
    assert dead_t - suspect_t == pytest.approx(1.0)


def test_paused_shorter_than_min_suspicion_is_never_dead() -> None:
    wire = Wire(LAN, ["a", "b", "c", "d", "e"])
    wire.connect_all()
    wire.advance_to(3.0)
    wire.down.add("c")
    wire.advance_to(5.5)  # c hears nothing for 2.5 s (< 4 s minimum timeout)
    wire.down.discard("c")
    wire.advance_to(40.0)
    assert not _events(wire, EventKind.DEAD, "c")
    for name in "abde":
        assert wire.status(name, "c") is MemberStatus.ALIVE


@pytest.mark.parametrize(
    ("held", "msg", "expected"),
    [
        # alive overrides lower incarnations only
        (
            (MemberStatus.ALIVE, 5),
            Alive(5, "x", ("10.9.9.9", 1)),
            (MemberStatus.ALIVE, 5),
        ),
        (
            (MemberStatus.SUSPECT, 5),
            Alive(6, "x", ("10.9.9.9", 1)),
            (MemberStatus.ALIVE, 6),
        ),
        (
            (MemberStatus.SUSPECT, 5),
            Alive(5, "x", ("10.9.9.9", 1)),
            (MemberStatus.SUSPECT, 5),
        ),
        (
            (MemberStatus.DEAD, 5),
            Alive(5, "x", ("10.9.9.9", 1)),
            (MemberStatus.DEAD, 5),
        ),
        (
            (MemberStatus.DEAD, 5),
            Alive(6, "x", ("10.9.9.9", 1)),
            (MemberStatus.ALIVE, 6),
        ),
        (
            (MemberStatus.LEFT, 5),
            Alive(5, "x", ("10.9.9.9", 1)),
            (MemberStatus.LEFT, 5),
        ),
        # suspect overrides alive at >= incarnation
        ((MemberStatus.ALIVE, 5), Suspect(5, "x", "b"), (MemberStatus.SUSPECT, 5)),
        ((MemberStatus.ALIVE, 5), Suspect(4, "x", "b"), (MemberStatus.ALIVE, 5)),
        ((MemberStatus.DEAD, 5), Suspect(6, "x", "b"), (MemberStatus.DEAD, 5)),
        # dead overrides alive/suspect at >= incarnation; sender == name: left
        ((MemberStatus.ALIVE, 5), Dead(5, "x", "b"), (MemberStatus.DEAD, 5)),
        ((MemberStatus.SUSPECT, 5), Dead(4, "x", "b"), (MemberStatus.SUSPECT, 5)),
        ((MemberStatus.ALIVE, 5), Dead(5, "x", "x"), (MemberStatus.LEFT, 5)),
        ((MemberStatus.DEAD, 5), Dead(9, "x", "x"), (MemberStatus.DEAD, 5)),
    ],
)
def test_precedence_rules(
    held: tuple[MemberStatus, int],
    msg: Alive | Suspect | Dead,
    expected: tuple[MemberStatus, int],
) -> None:
    core = NodeCore(
        Config.lan(name="me"), addr=("10.0.0.1", 1), rng=random.Random(1), now=0.0
    )
    m = core.membership
    m.on_alive(Alive(held[1], "x", ("10.9.9.9", 1)), 0.0)
    if held[0] is MemberStatus.SUSPECT:
        m.on_suspect(Suspect(held[1], "x", "b"), 0.0)
    elif held[0] is MemberStatus.DEAD:
        m.on_dead(Dead(held[1], "x", "b"), 0.0)
    elif held[0] is MemberStatus.LEFT:
        m.on_dead(Dead(held[1], "x", "x"), 0.0)
    core.receive(("10.0.0.2", 1), [msg], 1.0)
    view = core.member("x")
    assert view is not None
    assert (view.status, view.incarnation) == expected


def test_refute_accusations_about_ourselves() -> None:
    core = NodeCore(
        Config.lan(name="me"),
        addr=("10.0.0.1", 1),
        rng=random.Random(1),
        now=0.0,
        incarnation=7,
    )
    core.receive(("10.0.0.2", 1), [Suspect(9, "me", "b")], 1.0)
    assert core.incarnation == 10
    core.receive(("10.0.0.2", 1), [Dead(10, "me", "b")], 2.0)
    assert core.incarnation == 11
    core.receive(("10.0.0.2", 1), [Suspect(3, "me", "b")], 3.0)  # stale
    assert core.incarnation == 11
    assert core.member("me").status is MemberStatus.ALIVE  # type: ignore[union-attr]
    assert core.membership.stats["refutations"] == 2


def test_ping_for_another_name_is_not_acked() -> None:
    core = NodeCore(
        Config.lan(name="me"), addr=("10.0.0.1", 1), rng=random.Random(1), now=0.0
    )
    out = core.receive(("10.0.0.2", 1), [Ping(1, "someone-else", "b")], 0.0)
    assert not [e for e in out if isinstance(e, Send)]
    out = core.receive(("10.0.0.2", 1), [Ping(2, "me", "b")], 0.0)
    sends = [e for e in out if isinstance(e, Send)]
    assert sends
    assert sends[0].messages[0] == Ack(2)


def test_ping_req_relays_ack_or_nacks_after_probe_timeout() -> None:
    core = NodeCore(
        Config.lan(name="me"), addr=("10.0.0.1", 1), rng=random.Random(1), now=0.0
    )
    out = core.receive(
        ("10.0.0.2", 1), [PingReq(77, "t", ("10.0.0.3", 1), "b", True)], 0.0
    )
    ping = next(e for e in out if isinstance(e, Send))
    assert ping.addr == ("10.0.0.3", 1)
    seq = ping.messages[0].seq  # type: ignore[union-attr]
    relayed = core.receive(("10.0.0.3", 1), [Ack(seq)], 0.1)
    assert any(isinstance(e, Send) and e.messages[0] == Ack(77) for e in relayed)
    core.receive(("10.0.0.2", 1), [PingReq(78, "t", ("10.0.0.3", 1), "b", True)], 1.0)
    assert core.next_deadline() == pytest.approx(1.5) or core.next_deadline() <= 1.5  # type: ignore[operator]
    nack = core.tick(1.5)
    assert any(isinstance(e, Send) and e.messages[0] == Nack(78) for e in nack)


def test_tcp_fallback_probe_is_requested_with_indirect_probes() -> None:
    wire = Wire(Config.lan(), ["a", "b", "c"])
    wire.connect_all()
    a = wire.cores["a"]
    probe_next(a, "c", at=1.0)
    a.tick(1.0)
    out = a.tick(1.5)
    probes = [e for e in out if isinstance(e, ProbeTcp)]
    assert probes
    assert probes[0].addr == wire.addr["c"]
    assert probes[0].deadline == 2.0


def test_graceful_leave_reaches_everyone_as_left() -> None:
    wire = Wire(LAN, ["a", "b", "c", "d"])
    wire.connect_all()
    wire.advance_to(2.0)
    wire._run("b", wire.cores["b"].leave(wire.now))
    wire.advance_to(4.0)
    assert not wire.cores["b"].leave_pending()
    for name in "acd":
        assert wire.status(name, "b") is MemberStatus.LEFT
    # Old gossip does not resurrect it.
    inc = wire.cores["a"].member("b").incarnation  # type: ignore[union-attr]
    wire.cores["a"].receive(("10.0.0.9", 1), [Alive(inc, "b", wire.addr["b"])], 5.0)
    assert wire.status("a", "b") is MemberStatus.LEFT


def test_broadcast_queue_bounded_and_ordered() -> None:
    from mesh.core.broadcast import BroadcastQueue

    q = BroadcastQueue(max_size=3)
    for i in range(5):
        q.queue(f"m{i}", Alive(i, f"m{i}", ("10.0.0.1", 1)), 10)
    assert len(q) == 3
    assert q.dropped == 2
    q.queue("leave", Dead(1, "leave", "leave"), 10, urgent=True)
    got = q.get(budget=20, limit=2)
    assert got[0] == Dead(1, "leave", "leave")  # a leave goes first
    assert len(got) == 2  # budget of two 10-byte entries
    # Invalidation: a newer message about the same member replaces the old one.
    q.queue("m4", Suspect(4, "m4", "x"), 10)
    assert q.pending_for("m4")
    everything = q.get(budget=1000, limit=2) + q.get(budget=1000, limit=2)
    assert Alive(4, "m4", ("10.0.0.1", 1)) not in everything
    assert len(q) == 0  # every entry sent `limit` times is gone


def test_a_stalled_node_gives_suspicions_one_more_interval() -> None:
    # The node suspected c, then its process stalled past the suspicion
    # timeout. On the late tick it must not declare c dead at once: the
    # refutation may be unread in its socket buffer.
    core = NodeCore(
        Config.lan(name="a"), addr=("10.0.0.1", 1), rng=random.Random(1), now=0.0
    )
    for i, name in enumerate("bcd"):
        core.receive(("10.0.0.9", 1), [Alive(1, name, (f"10.0.0.{i + 2}", 1))], 0.0)
    core.receive(("10.0.0.9", 1), [Suspect(1, "c", "b")], 0.0)
    deadline = core.membership.suspicions["c"].deadline
    planned = core.next_deadline()
    assert planned is not None
    late = deadline + 5.0  # stalled well past the timer
    core.tick(late)
    assert core.member("c").status is MemberStatus.SUSPECT  # type: ignore[union-attr]
    assert core.membership.stats["stalls"] == 1
    core.receive(("10.0.0.3", 1), [Alive(2, "c", ("10.0.0.3", 1))], late + 0.01)
    core.tick(late + 1.0)
    assert core.member("c").status is MemberStatus.ALIVE  # type: ignore[union-attr]


def test_failed_probe_with_all_nacks_does_not_hurt_our_health() -> None:
    wire = Wire(LAN, ["a", "b", "c", "d"])
    wire.connect_all()
    a = wire.cores["a"]
    wire.advance_to(9.0)
    wire.down.add("c")
    probe_next(a, "c", at=10.0)
    before = a.health_score
    wire.advance_to(10.99)
    assert a.membership.stats["probe_failed"] == 0
    probe = a.prober.probe
    assert probe is not None
    assert probe.nacks == probe.expected_nacks == 2
    wire.advance_to(11.0)
    assert a.membership.stats["probe_failed"] == 1
    assert a.health_score <= before  # both helpers nacked: not our fault


def test_a_leave_during_the_join_exchange_reaches_the_seed_as_left() -> None:
    # The seed merged our alive row; then we were told to stop before its
    # reply came back. Leaving at once (nobody known to tell) made the seed
    # see a crash: suspect, then dead.
    wire = Wire(LAN, ["seed"])
    seed = wire.cores["seed"]
    joiner = NodeCore(
        attrs.evolve(LAN, name="g", join=("10.0.0.1:7946",)),
        addr=("10.0.0.2", 7946),
        rng=random.Random(7),
        now=0.0,
    )
    wire.cores["g"], wire.addr["g"] = joiner, ("10.0.0.2", 7946)
    wire.by_addr[("10.0.0.2", 7946)] = "g"
    [exchange] = [e for e in joiner.start(0.0) if isinstance(e, Exchange)]
    reply, out = seed.handle_exchange(exchange.request, 0.0)  # seed takes g in
    wire._run("seed", out)
    assert wire.status("seed", "g") is MemberStatus.ALIVE
    wire._run("g", joiner.leave(0.1))
    assert joiner.leave_pending()  # the reply is still to come
    wire._run("g", joiner.exchange_done(exchange.token, [reply], 0.2))
    wire.advance_to(3.0)
    assert wire.status("seed", "g") is MemberStatus.LEFT
    assert not joiner.leave_pending()


def test_a_leave_whose_join_fails_is_done_at_once() -> None:
    joiner = NodeCore(
        attrs.evolve(LAN, name="g", join=("10.0.0.1:7946",)),
        addr=("10.0.0.2", 7946),
        rng=random.Random(7),
        now=0.0,
    )
    [exchange] = [e for e in joiner.start(0.0) if isinstance(e, Exchange)]
    joiner.leave(0.1)
    assert joiner.leave_pending()
    joiner.exchange_done(exchange.token, [], 0.2)  # the seed never answered
    assert not joiner.leave_pending()


def test_a_joiner_whose_seeds_are_gone_syncs_with_a_member_that_reached_it() -> None:
    # Its only seed died; a member gossiped to it meanwhile. Waiting for a join
    # to sync, it never told that member of itself, and once the member reaped
    # it no member knew it (churn property, nightly profile). It syncs, but
    # stays unjoined: a member that reached it may be unjoined too, and two
    # such joining each other formed an island (anti-entropy property).
    # (a sync before m, which answers no probe here, is declared dead)
    config = attrs.evolve(LAN, name="g", join=("10.0.0.1:7946",), push_pull_interval=1)
    joiner = NodeCore(config, addr=("10.0.0.2", 7946), rng=random.Random(7), now=0.0)
    [first] = [e for e in joiner.start(0.0) if isinstance(e, Exchange)]
    joiner.receive(("10.0.0.3", 7946), [Alive(4, "m", ("10.0.0.3", 7946))], 0.1)
    joiner.exchange_done(first.token, [], 0.2)  # the seed never answered
    syncs: list[Exchange] = []
    now = 0.2
    while not syncs:
        deadline = joiner.next_deadline()
        assert deadline is not None
        assert deadline < 2 * config.push_pull_interval
        now = max(now, deadline)
        syncs = [
            e
            for e in joiner.tick(now)
            if isinstance(e, Exchange) and e.purpose is ExchangePurpose.SYNC
        ]
    assert [e.target for e in syncs] == [("10.0.0.3", 7946)]
    reply = PushPull(
        False,
        (MemberState("m", ("10.0.0.3", 7946), 4, MemberStatus.ALIVE),),
        sender="m",
    )
    joiner.exchange_done(syncs[0].token, [reply], now + 0.1)
    assert not joiner.joined  # only a seed's answer is a join


def test_a_stall_is_noticed_when_a_datagram_is_read_before_the_late_tick() -> None:
    # After a SIGCONT the shell may read a buffered datagram before it runs
    # the overdue timer; the datagram re-plans the wake, and the tick alone
    # then saw no lateness (audit 12: 3 of 14 stalls missed).
    wire = Wire(Config.local(), ["a", "b"])
    wire.connect_all()
    core = wire.cores["a"]
    planned = core.next_deadline()
    assert planned is not None
    late = planned + core.config.push_deadline + 1.0
    core.receive(wire.addr["b"], [Ping(1, "a", "b")], late)
    core.next_deadline()  # what the shell does after every input
    core.tick(late)
    assert core.ae.stalled is not None
    assert core.ae.stats["stall_resyncs"] == 1
    assert core.membership.stats["stalls"] == 1
    assert not core.route_sync().caught_up


@pytest.mark.parametrize(("pause", "resync"), [(0.6, False), (1.3, True)])
def test_a_stall_long_enough_to_be_declared_dead_resyncs(
    pause: float, resync: bool
) -> None:
    """Peers drop their pushes for a member they declare dead, which on the
    local profile (a failed probe, 0.1 s, plus the minimum suspicion, 1.0 s)
    comes before push_deadline (1.5 s): a stall between the two must resync
    too (audit, session 13: ready at once after 1.43 s, 500 deletes short);
    a shorter one, which no peer can have called a death, need not."""
    wire = Wire(Config.local(), ["a", "b"])
    wire.connect_all()
    core = wire.cores["a"]
    assert core.config.push_deadline > 1.3
    planned = core.next_deadline()
    assert planned is not None
    late = planned + pause
    core.receive(wire.addr["b"], [Ping(1, "a", "b")], late)
    core.next_deadline()
    core.tick(late)
    assert core.membership.stats["stalls"] == 1
    assert (core.ae.stalled is not None) is resync
    assert core.route_sync().caught_up is not resync


def test_a_joined_member_knocks_on_seeds_none_of_its_members_is_at() -> None:
    # Two members cut off while they (re)start may join each other only and
    # never knock on the other seeds again: after the heal, two meshes for
    # good (nightly anti-entropy property). A seed no live member is at gets
    # an exchange once a reconnect interval; known seeds cost nothing.
    config = attrs.evolve(
        LAN, name="g", join=("10.0.0.1:7946", "10.0.0.3:7946", "seeds.example:7946")
    )
    core = NodeCore(config, addr=("10.0.0.2", 7946), rng=random.Random(7), now=0.0)
    [first, _dns] = [e for e in core.start(0.0) if isinstance(e, Exchange)][:2]
    reply = PushPull(
        False,
        (MemberState("a", ("10.0.0.1", 7946), 1, MemberStatus.ALIVE),),
        sender="a",
    )
    core.exchange_done(first.token, [reply], 0.1)
    assert core.joined

    alive = {"a": ("10.0.0.1", 7946)}  # nobody answers probes here: refuted

    def knocks(until: float) -> list[Address | str]:
        out: list[Address | str] = []
        now = 0.1
        while (deadline := core.next_deadline()) is not None and deadline <= until:
            now = max(now, deadline)
            out += [
                e.target
                for e in core.tick(now)
                if isinstance(e, Exchange) and e.purpose is ExchangePurpose.RECONNECT
            ]
            for name, addr in alive.items():
                view = core.member(name)
                incarnation = view.incarnation + 1 if view is not None else 1
                core.receive(addr, [Alive(incarnation, name, addr)], now)
        return out

    found = knocks(LAN.reconnect_interval + 1.0)
    assert found == [("10.0.0.3", 7946)]  # names are the shell's to resolve
    # once a member lives at that seed too, nothing more
    alive["c"] = ("10.0.0.3", 7946)
    assert knocks(3 * LAN.reconnect_interval + 2.0) == []


def test_seeds_given_as_names_are_resolved_and_knocked_on_as_addresses() -> None:
    config = attrs.evolve(LAN, name="g", join=("10.0.0.1:7946", "seeds.example:7946"))
    core = NodeCore(config, addr=("10.0.0.2", 7946), rng=random.Random(7), now=0.0)
    first = next(e for e in core.start(0.0) if isinstance(e, Exchange))
    reply = PushPull(
        False,
        (MemberState("a", ("10.0.0.1", 7946), 1, MemberStatus.ALIVE),),
        sender="a",
    )
    core.exchange_done(first.token, [reply], 0.1)
    now = 0.1
    asked: list[ResolveSeeds] = []
    while not asked:
        deadline = core.next_deadline()
        assert deadline is not None
        assert deadline <= 2 * LAN.reconnect_interval  # probes slow: no acks here
        now = max(now, deadline)
        asked = [e for e in core.tick(now) if isinstance(e, ResolveSeeds)]
        core.receive(
            ("10.0.0.1", 7946), [Alive(int(now) + 2, "a", ("10.0.0.1", 7946))], now
        )
    assert asked == [ResolveSeeds(("seeds.example:7946",))]
    # the name stands for a, who is ours, and for 10.0.0.4, who is not
    effects = core.seeds_resolved([("10.0.0.1", 7946), ("10.0.0.4", 7946)], now)
    knocks = [e.target for e in effects if isinstance(e, Exchange)]
    assert knocks == [("10.0.0.4", 7946)]
    assert all(
        e.purpose is ExchangePurpose.RECONNECT
        for e in effects
        if isinstance(e, Exchange)
    )
    # resolved to our members only: nothing to knock on
    assert core.seeds_resolved([("10.0.0.1", 7946)], now) == []

"""Anti-entropy rounds between two cores' route tables, driven by hand: what a
round sends, how many round trips it takes, and that no delete is undone."""

from __future__ import annotations

import random

import pytest

from mesh.codec_ae import MAX_AE_BODY, AeLimits, encode_ae_reply, encode_ae_request
from mesh.config import Config
from mesh.core.antientropy import (
    AeChunk,
    AeChunkReply,
    AeMore,
    AeOpen,
    AeRepair,
    AeRepaired,
    AeSymbols,
    AntiEntropy,
    Reconcile,
    SymbolsStatus,
)
from mesh.core.routes import OutcomeStatus, Route, RouteTable, Version
from mesh.errors import ConfigError

TTL = 100.0
WALL = 1_000_000.0  # seconds: any fixed "now" for the wall clock


class Side:
    """One node's table and anti-entropy, without the rest of the core."""

    def __init__(
        self,
        name: str,
        *,
        caught_up: bool = True,
        alone: bool = False,
        max_routes: int = 100_000,
        **overrides: object,
    ) -> None:
        self.config = Config.local(name=name, route_tombstone_ttl=TTL, **overrides)
        self.table = RouteTable(
            origin=name,
            max_routes=max_routes,
            hlc_max_skew_ms=60_000,
            max_symbols=self.config.antientropy_max_symbols,
        )
        self.repair: set[str] = set()
        self.ae = AntiEntropy(
            self.config,
            self.table,
            name=name,
            repair=self.repair,
            rng=random.Random(name),
            now=0.0,
            caught_up=caught_up,
        )
        # a member of a mesh (not a lone first node) unless the test says so
        self.ae.alone = alone
        # a member of a mesh (not a lone first node) unless the test says so
        self.ae.alone = alone

    def put(self, key: str, target: str = "http://t", *, wall: float = WALL) -> Route:
        outcome = self.table.write(
            key, target, {}, revision=None, wall_ms=int(wall * 1000)
        )
        assert outcome.route is not None
        return outcome.route

    def delete(self, key: str, *, wall: float = WALL) -> Route:
        outcome = self.table.write(
            key, "", {}, revision=None, wall_ms=int(wall * 1000), deleted=True
        )
        assert outcome.route is not None
        return outcome.route

    def view(self) -> dict[str, Version]:
        return {r.key: r.version for r in self.table}


def picker(peers: list[tuple[str, tuple[str, int]]]):  # type: ignore[no-untyped-def]
    """What NodeCore passes: a marked alive peer first, else any (here: the
    first), None when there are none."""

    def pick(marked: object) -> tuple[str, tuple[str, int]] | None:
        for peer in peers:
            if peer[0] in marked:  # type: ignore[operator]
                return peer
        return peers[0] if peers else None

    return pick


def round_between(
    a: Side, b: Side, *, wall: float = WALL
) -> list[tuple[object, object]]:
    """One round opened by ``a`` with ``b``; the (request, reply) pairs.
    Both digests are folded first, as the nodes' timer ticks would have."""
    for side in (a, b):
        side.table.fold(side.table.pending_folds())
    a.ae._next_at = 0.0
    effects = a.ae.tick(1.0, wall, picker([(b.ae.name, ("127.0.0.1", 1))]), joined=True)
    trips = []
    while effects:
        (effect,) = effects
        assert isinstance(effect, Reconcile)
        reply = b.ae.handle(effect.request, wall)
        trips.append((effect.request, reply))
        effects = a.ae.done(effect.token, reply, 2.0, wall)
    return trips


def bootstrap(joiner: Side, source: Side) -> list[tuple[AeChunkReply, int]]:
    """``joiner`` pulls ``source``'s table chunk by chunk; each reply with the
    joiner's ``behind`` after it (asserting it is not caught up before the
    last)."""
    joiner.ae._next_at = 0.0
    (effect,) = joiner.ae.tick(
        1.0, WALL, picker([(source.ae.name, ("127.0.0.1", 1))]), joined=True
    )
    replies = []
    while True:
        reply = source.ae.handle(effect.request, WALL)
        assert isinstance(reply, AeChunkReply)
        effects = joiner.ae.done(effect.token, reply, 2.0, WALL)
        replies.append((reply, joiner.ae.behind))
        if not effects:
            return replies
        assert not joiner.ae.caught_up
        (effect,) = effects


def wire_bytes(trips: list[tuple[object, object]]) -> int:
    return sum(
        len(encode_ae_request(q)) + len(encode_ae_reply(r))  # type: ignore[arg-type]
        for q, r in trips
    )


def test_equal_tables_cost_one_small_round_trip() -> None:
    a, b = Side("a"), Side("b")
    for i in range(500):
        route = a.put(f"k{i}")
        b.table.apply(route, wall_ms=int(WALL * 1000))
    trips = round_between(a, b)
    assert len(trips) == 1
    assert trips[0][1] == AeSymbols(SymbolsStatus.SAME)
    assert wire_bytes(trips) < 64
    assert a.ae.stats["rounds_same"] == 1


@pytest.mark.parametrize("missing", [1, 10, 100, 1000])
@pytest.mark.parametrize("side", ["initiator", "peer"])
def test_missed_writes_are_repaired_in_two_round_trips(missing: int, side: str) -> None:
    a, b = Side("a"), Side("b")
    for i in range(300):
        b.table.apply(a.put(f"k{i}"), wall_ms=int(WALL * 1000))
    behind, ahead = (a, b) if side == "initiator" else (b, a)
    for i in range(missing):
        ahead.put(f"only-{i}")
    trips = round_between(a, b)
    assert a.view() == b.view()
    assert [type(q) for q, _ in trips] == [AeOpen, AeRepair]
    assert behind.ae.stats["routes_repaired"] == missing


@pytest.mark.parametrize(("missing", "trips_max"), [(1, 2), (10, 3), (100, 4)])
def test_differences_on_both_sides_are_repaired_both_ways(
    missing: int, trips_max: int
) -> None:
    a, b = Side("a"), Side("b")
    for i in range(300):
        b.table.apply(a.put(f"k{i}"), wall_ms=int(WALL * 1000))
    for i in range(missing):
        a.put(f"only-a-{i}")
        b.put(f"only-b-{i}")
    trips = round_between(a, b)
    assert a.view() == b.view()
    assert len(trips) <= trips_max
    assert a.ae.stats["routes_repaired"] == missing
    assert b.ae.stats["routes_repaired"] == missing


def test_a_difference_past_the_first_reply_asks_for_more_symbols() -> None:
    a, b = Side("a"), Side("b")
    for i in range(40):  # same size both sides: the first reply is the minimum
        a.put(f"a{i}")
        b.put(f"b{i}")
    trips = round_between(a, b)
    assert a.view() == b.view()
    kinds = [type(q) for q, _ in trips]
    assert AeMore in kinds
    assert kinds[-1] is AeRepair


def test_a_difference_too_large_to_decode_falls_back_to_chunks() -> None:
    a = Side("a", antientropy_max_symbols=64, antientropy_chunk_routes=50)
    b = Side("b", antientropy_max_symbols=64, antientropy_chunk_routes=50)
    for i in range(400):
        b.put(f"k{i:04d}")
    trips = round_between(a, b)
    assert a.ae.stats["fallbacks"] == 1
    assert sum(isinstance(q, AeChunk) for q, _ in trips) == 8
    assert a.view() == b.view()


def test_bootstrap_pulls_the_whole_table_in_chunks_before_caught_up() -> None:
    source = Side("s", antientropy_chunk_routes=100)
    joiner = Side("j", caught_up=False, antientropy_chunk_routes=100)
    for i in range(250):
        source.put(f"k{i:03d}")
    source.delete("k000")
    assert joiner.ae.handle(AeOpen("x", source.table.summary(), 1), WALL) == AeSymbols(
        SymbolsStatus.BUSY
    )
    replies = bootstrap(joiner, source)
    assert len(replies) == 3
    # behind after each chunk but the last: what is left to pull
    assert [behind for _, behind in replies[:-1]] == [150, 50]
    assert joiner.ae.caught_up
    assert joiner.ae.behind == 0
    assert joiner.view() == source.view()


def test_a_stale_push_after_the_tombstone_is_collected_changes_nothing() -> None:
    a = Side("a")
    old = a.put("k", wall=WALL)
    a.delete("k", wall=WALL + 1)
    later = WALL + TTL + 10
    assert a.table.collect(int((later - TTL) * 1000)) == 1
    assert a.table.get("k") is None
    outcome = a.table.apply(
        old, wall_ms=int(later * 1000), horizon_ms=a.ae.horizon(later)
    )
    assert outcome.status is OutcomeStatus.EXPIRED
    assert a.table.get("k") is None


def test_a_peer_away_longer_than_the_tombstone_lifetime_cannot_resurrect() -> None:
    a, b = Side("a"), Side("b")
    b.table.apply(a.put("k", wall=WALL), wall_ms=int(WALL * 1000))
    a.put("keep", wall=WALL)
    b.table.apply(a.table.get("keep"), wall_ms=int(WALL * 1000))  # type: ignore[arg-type]
    a.delete("k", wall=WALL + 1)  # b is away: it never hears of it
    later = WALL + TTL + 10
    a.table.collect(int((later - TTL) * 1000))
    # b comes back holding the old live "k"; rounds both ways
    round_between(b, a, wall=later)
    round_between(a, b, wall=later)
    assert a.table.get("k") is None
    assert b.table.get("k") is None  # b forgot it when a refused it
    assert a.view() == b.view()
    assert "keep" in b.view()
    assert b.ae.stats["routes_dropped"] + a.ae.stats["routes_dropped"] >= 1


def test_a_full_member_never_makes_a_write_it_refused_look_deleted() -> None:
    """Audit 8: a member at max_routes refuses a peer's new key for lack of
    room. A tombstone lifetime later it must not call that write expired
    (the holder would forget it: a write answered 200, lost mesh-wide), and
    once it has room again it takes the write."""
    small, big = Side("small", max_routes=2), Side("big")
    for key in ("a", "b"):
        small.table.apply(big.put(key), wall_ms=int(WALL * 1000))
    kept = big.put("c", wall=WALL)
    refused = small.table.apply(
        kept, wall_ms=int(WALL * 1000), horizon_ms=small.ae.horizon(WALL)
    )
    assert refused.status is OutcomeStatus.FULL
    later = WALL + TTL + 10
    round_between(small, big, wall=later)
    round_between(big, small, wall=later)
    assert big.table.get("c") == kept  # not dropped on small's word
    assert small.table.get("c") is None  # still no room
    assert small.ae.stats["routes_expired"] == 0
    # and it says so: counted, and behind by the entry it could not take
    assert small.ae.stats["routes_full"] >= 2  # its own round, and big's
    assert small.ae.behind == 1
    # room again: a delete whose tombstone is collected a lifetime later,
    # with rounds meanwhile (each refusing "c" again for lack of room)
    small.delete("a", wall=later)
    round_between(small, big, wall=later + TTL)
    freed = later + TTL + 2
    for side in (small, big):  # the delete reached big: both collect it
        assert side.table.collect(int((freed - TTL) * 1000)) == 1
    round_between(small, big, wall=freed)
    assert small.table.get("c") == kept
    assert big.table.get("c") == kept
    assert small.ae.behind == 0


def test_a_member_that_was_full_still_refuses_what_it_deleted() -> None:
    """Audit 9: taking every old entry after refusing one for lack of room let
    a member back from longer than a tombstone lifetime resurrect routes the
    formerly full member had deleted itself. Only the refused keys are taken."""
    small, big = Side("small", max_routes=2), Side("big")
    stale = big.put("a")
    for route in (stale, big.put("b")):
        small.table.apply(route, wall_ms=int(WALL * 1000))
    kept = big.put("c")
    small.delete("a", wall=WALL + 1)  # a tombstone: still full
    later = WALL + TTL + 5
    horizon = small.ae.horizon(later)
    wall_ms = int(later * 1000)
    # a round refuses "c" again for lack of room, then "a"'s tombstone goes
    assert small.table.apply(kept, wall_ms=wall_ms, horizon_ms=horizon).status is (
        OutcomeStatus.FULL
    )
    assert small.table.missing() == 1
    assert horizon is not None
    assert small.table.collect(horizon) == 1
    # room now: the stale live "a" of a member away past the lifetime is
    # refused, the write it missed is taken
    refused = small.table.apply(stale, wall_ms=wall_ms, horizon_ms=horizon)
    assert refused.status is OutcomeStatus.EXPIRED
    taken = small.table.apply(kept, wall_ms=wall_ms, horizon_ms=horizon)
    assert taken.status is OutcomeStatus.APPLIED
    assert small.table.missing() == 0


def test_a_joiner_without_room_for_the_whole_table_reports_what_it_lacks() -> None:
    """Audit 8: bootstrap into a smaller max_routes ended "caught up" with
    nothing behind and nothing counted."""
    source, joiner = Side("source"), Side("joiner", caught_up=False, max_routes=3)
    for i in range(5):
        source.put(f"k{i}")
    bootstrap(joiner, source)
    assert joiner.ae.caught_up
    assert len(joiner.table) == 3
    assert joiner.ae.behind == 2
    assert joiner.ae.stats["routes_full"] == 2


def test_a_member_that_was_never_full_still_refuses_old_unknown_entries() -> None:
    a = Side("a", max_routes=2)
    stale = Side("b").put("k", wall=WALL)
    later = WALL + TTL + 10
    outcome = a.table.apply(
        stale, wall_ms=int(later * 1000), horizon_ms=a.ae.horizon(later)
    )
    assert outcome.status is OutcomeStatus.EXPIRED


def test_a_member_away_past_the_lifetime_forgets_every_deleted_route_in_a_round() -> (
    None
):
    """Audit 8: a difference too large to decode is pulled in chunks; every
    chunk's refusals reach the stale member, not only the last chunk's (it
    served deleted routes for 30-60 s, shedding ~1,000 a round)."""
    small = {"antientropy_max_symbols": 64, "antientropy_chunk_routes": 20}
    a, b = Side("a", **small), Side("b", **small)
    keys = [f"k{i:03d}" for i in range(200)]
    for key in keys:
        b.table.apply(a.put(key, wall=WALL), wall_ms=int(WALL * 1000))
    for key in keys:  # b is away: it never hears of the deletes
        a.delete(key, wall=WALL + 1)
    later = WALL + TTL + 10
    assert a.table.collect(int((later - TTL) * 1000)) == len(keys)
    trips = round_between(a, b, wall=later)
    assert any(isinstance(q, AeChunk) for q, _ in trips)  # the fallback
    assert len(b.table) == 0  # one round: nothing deleted is served any more
    assert b.ae.stats["routes_dropped"] == len(keys)
    assert a.table.get(keys[0]) is None


def test_a_drop_never_removes_a_newer_entry() -> None:
    a = Side("a")
    old = a.put("k", wall=WALL)
    new = a.put("k", wall=WALL + 5)
    later = WALL + TTL + 10
    assert not a.table.drop("k", old.version, int((later - TTL) * 1000))
    assert a.table.get("k") == new
    # and nothing above the horizon is ever dropped
    assert not a.table.drop("k", new.version, int(WALL * 1000))


#: a route at the contract's limits: 1,024-character target, 32 meta entries
#: of 256 + 256 characters (~18 KB of msgpack each in ASCII)
BIG_META = {f"{i:02d}" + "k" * 254: "v" * 256 for i in range(32)}


def put_big(side: Side, key: str) -> Route:
    outcome = side.table.write(
        key, "t" * 1024, BIG_META, revision=None, wall_ms=int(WALL * 1000)
    )
    assert outcome.route is not None
    return outcome.route


def test_chunks_and_repairs_of_big_routes_fit_a_peers_body_limit() -> None:
    # 1,000 routes at the limits are ~18 MB: a chunk or repair of them all
    # was refused by the receiver (16 MiB), so a joiner never caught up.
    source = Side("s")
    joiner = Side("j", caught_up=False)
    for i in range(1200):
        put_big(source, f"k{i:04d}")
    replies = bootstrap(joiner, source)
    assert len(replies) > 1
    assert all(len(encode_ae_reply(reply)) <= MAX_AE_BODY for reply, _ in replies)
    assert joiner.ae.caught_up
    assert joiner.view() == source.view()
    # Repairs both ways: each side holds 600 big routes the other lacks.
    a, b = Side("a"), Side("b")
    for i in range(600):
        put_big(a, f"a{i:03d}")
        put_big(b, f"b{i:03d}")
    rounds = 0
    while a.view() != b.view():
        rounds += 1
        assert rounds <= 10, "repair made no progress"
        for q, r in round_between(a, b):
            assert len(encode_ae_request(q)) <= MAX_AE_BODY  # type: ignore[arg-type]
            assert len(encode_ae_reply(r)) <= MAX_AE_BODY  # type: ignore[arg-type]
    assert rounds > 1


def test_the_byte_budget_is_validated() -> None:
    with pytest.raises(ConfigError, match="antientropy_max_bytes"):
        Config.local(name="a", antientropy_max_bytes=64 * 1024 * 1024)


def test_hostile_requests_are_answered_within_bounds() -> None:
    b = Side("b", antientropy_max_symbols=128, antientropy_repair_max=5)
    for i in range(50):
        b.put(f"k{i}")
    more = b.ae.handle(AeMore("x", b.table.index, 0, 10**9), WALL)
    assert isinstance(more, AeSymbols)
    assert len(more.symbols) == 128
    want = tuple(range(1, 10_000))
    repaired = b.ae.handle(AeRepair("x", want=want), WALL)
    assert isinstance(repaired, AeRepaired)
    assert repaired.routes == ()
    chunk = b.ae.handle(AeChunk("x", "", 10**9), WALL)
    assert isinstance(chunk, AeChunkReply)
    assert len(chunk.routes) == b.config.antientropy_chunk_routes or not chunk.more


def test_a_reply_that_does_not_fit_ends_the_round_as_failed() -> None:
    a, b = Side("a"), Side("b")
    b.put("x")
    a.ae._next_at = 0.0
    (effect,) = a.ae.tick(1.0, WALL, picker([("b", ("127.0.0.1", 1))]), joined=True)
    assert a.ae.done(effect.token, AeRepaired(), 2.0, WALL) == []
    assert a.ae.stats["reply_unexpected"] == 1
    assert a.ae.stats["rounds_failed"] == 1
    assert a.ae.next_deadline() is not None  # a new round will come


def test_needs_repair_peers_are_chosen_first_and_unmarked_when_done() -> None:
    a = Side("a")
    peers = [(f"p{i}", ("127.0.0.1", i)) for i in range(10)]
    a.repair.add("p7")
    a.ae._next_at = 0.0
    (effect,) = a.ae.tick(1.0, WALL, picker(peers), joined=True)
    assert effect.peer == "p7"
    a.ae.done(effect.token, AeSymbols(SymbolsStatus.SAME), 2.0, WALL)
    assert "p7" not in a.repair


def test_pending_digest_toggles_cancel() -> None:
    a = Side("a")
    for i in range(100):
        a.put("same-key", target=f"http://t{i}")
    assert len(a.table._pending) == 1
    fresh = Side("b")
    fresh.table.apply(a.table.get("same-key"), wall_ms=int(WALL * 1000))  # type: ignore[arg-type]
    assert a.table.summary() == fresh.table.summary()


def test_limits_come_from_the_config() -> None:
    config = Config.local(
        name="x", antientropy_repair_max=7, antientropy_chunk_routes=9
    )
    assert AeLimits.from_config(config).max_routes == 9


def test_a_first_node_restarted_empty_merges_instead_of_erasing_old_routes() -> None:
    """A node without seeds starts caught up (it may be the first of its mesh),
    but alone: the first member it meets is merged in whole, old entries
    included, and nothing is refused or dropped meanwhile."""
    veteran = Side("veteran")
    for i in range(30):
        veteran.put(f"k{i}", wall=WALL)  # far older than the TTL by now
    restarted = Side("first", alone=True)  # seedless: caught up, alone, empty
    later = WALL + 10 * TTL
    restarted.ae._next_at = 0.0
    (effect,) = restarted.ae.tick(
        1.0, later, picker([("veteran", ("127.0.0.1", 1))]), joined=True
    )
    assert effect.request == AeChunk(
        "first", "", restarted.config.antientropy_chunk_routes
    )
    assert restarted.ae.horizon(later) is None  # merging: refuses nothing
    effects = restarted.ae.done(
        effect.token, veteran.ae.handle(effect.request, later), 2.0, later
    )
    assert effects == []
    assert restarted.ae.stats["rounds_merged"] == 1
    assert restarted.view() == veteran.view()
    # and the next round is an ordinary one, finding nothing to do
    assert [type(q) for q, _ in round_between(restarted, veteran, wall=later)] == [
        AeOpen
    ]


def test_a_node_alone_refuses_nothing_from_a_round_that_reaches_it_first() -> None:
    # Audit 16: cut off longer than the TTL, the lone member answered a
    # member's repair round before its own merge began; judged by its horizon,
    # the writes made meanwhile looked expired, and it had the member drop
    # them: a write held by 4 of 5 members, answered 200, lost mesh-wide.
    lone, member = Side("c", alone=True), Side("a")
    member.put("w_major", wall=WALL)  # written while c was cut off
    later = WALL + 3 * TTL
    trips = round_between(member, lone, wall=later)
    assert "w_major" in lone.view()
    assert member.view().keys() == {"w_major"}
    assert all(not getattr(reply, "drops", ()) for _, reply in trips)
    assert member.ae.stats["routes_dropped"] == 0
    # and it honours no drop meanwhile either
    lone.put("old", wall=WALL)
    assert lone.ae.horizon(later) is None


def test_a_node_alone_for_a_while_merges_when_members_come_back() -> None:
    a, b = Side("a"), Side("b")
    a.ae._next_at = 0.0
    assert a.ae.tick(1.0, WALL, picker([]), joined=True) == []  # nobody alive: alone
    assert a.ae.alone
    b.put("written-meanwhile")
    a.ae._next_at = 0.0
    (effect,) = a.ae.tick(2.0, WALL, picker([("b", ("127.0.0.1", 1))]), joined=True)
    assert isinstance(effect.request, AeChunk)
    a.ae.done(effect.token, b.ae.handle(effect.request, WALL), 3.0, WALL)
    assert "written-meanwhile" in a.view()
    assert not a.ae.alone


def test_a_digest_still_folding_defers_rounds_both_ways() -> None:
    """A burst of writes is folded a slice per tick; meanwhile the node opens
    no round and answers others busy, instead of folding it all at once."""
    a, b = Side("a"), Side("b", antientropy_fold_batch=10)
    for i in range(100):
        b.put(f"k{i}")
    assert b.ae.handle(AeOpen("a", a.table.summary(), 0), WALL) == AeSymbols(
        SymbolsStatus.BUSY
    )
    b.ae._next_at = 0.0
    assert b.ae.tick(1.0, WALL, picker([("a", ("127.0.0.1", 1))]), joined=True) == []
    assert b.ae.stats["rounds_deferred"] == 1
    while b.table.fold(10):
        pass
    trips = round_between(a, b)
    assert a.view() == b.view()
    assert len(trips) == 2


def test_a_round_waits_while_pushes_to_its_peer_are_on_their_way() -> None:
    """What a push is delivering would show up as a difference and be
    repaired twice over: a node pushing to the peer it picked opens no round
    (counted deferred), unless that peer is marked for repair; a peer's round
    with a pushing node is still served."""
    pushing = {"b"}
    a = Side("a")
    a.ae.streaming = pushing.__contains__
    b = Side("b")
    a.put("k1")
    a.ae._next_at = 0.0
    assert a.ae.tick(1.0, WALL, picker([("b", ("127.0.0.1", 1))]), joined=True) == []
    assert a.ae.stats["rounds_deferred"] == 1
    assert round_between(a, b) == []  # (again: still pushing)
    # served: the peer's round with the pushing node goes on as ever
    trips = round_between(b, a)
    assert b.view() == a.view()
    assert len(trips) == 2
    # marked for repair: a round even while pushing
    a.put("k2")
    a.repair.add("b")
    trips = round_between(a, b)
    assert a.view() == b.view()
    assert trips
    # nothing on its way: rounds as ever
    pushing.clear()
    a.put("k3")
    trips = round_between(a, b)
    assert a.view() == b.view()
    assert len(trips) == 2


def test_a_round_deferred_for_streaming_too_often_opens_anyway() -> None:
    """A difference nobody marked (a writer that died halfway through its
    pushes) must not wait forever under a steady write load: after
    antientropy_max_deferred deferrals in a row the round opens."""
    a = Side("a", antientropy_max_deferred=2)
    a.ae.streaming = lambda peer: True
    pick = picker([("b", ("127.0.0.1", 1))])
    opened = []
    for tick in range(6):
        a.ae._next_at = 0.0
        effects = a.ae.tick(1.0 + tick, WALL, pick, joined=True)
        opened.append(bool(effects))
        if effects:  # the round ends; the next interval starts counting again
            (effect,) = effects
            a.ae.done(effect.token, AeSymbols(SymbolsStatus.SAME), 1.5 + tick, WALL)
    assert opened == [False, False, True, False, False, True]
    assert a.ae.stats["rounds_deferred"] == 4


def test_a_node_folds_a_burst_a_slice_per_tick_without_a_stall() -> None:
    from mesh.testing.simnet import SimNet

    sim = SimNet.cluster(3, seed=7, profile="local")
    sim.run_for(2.0)
    node = sim.node("n0")
    core = node.core
    effects = []
    for i in range(5000):
        _, out = core.put_route(f"k{i}", "http://t", {}, None, sim.now, sim.now)
        effects.extend(out)
    sim.execute("n0", effects)
    assert core.routes.pending_folds() > core.config.antientropy_fold_batch
    deadline = core.next_deadline()
    assert deadline is not None
    assert deadline <= sim.now  # the next slice is due at once
    stalls = core.membership.stats["stalls"]
    sim.run_for(0.001)
    assert core.routes.pending_folds() <= core.config.antientropy_fold_batch
    assert core.membership.stats["stalls"] == stalls


def test_a_bootstrap_whose_source_fails_resumes_where_it_stopped() -> None:
    first = Side("s1", antientropy_chunk_routes=100)
    second = Side("s2", antientropy_chunk_routes=100)
    joiner = Side("j", caught_up=False, antientropy_chunk_routes=100)
    for i in range(300):
        route = first.put(f"k{i:03d}")
        second.table.apply(route, wall_ms=int(WALL * 1000))
    joiner.ae._next_at = 0.0
    (effect,) = joiner.ae.tick(
        1.0, WALL, picker([("s1", ("127.0.0.1", 1))]), joined=True
    )
    (effect,) = joiner.ae.done(
        effect.token, first.ae.handle(effect.request, WALL), 2.0, WALL
    )
    assert joiner.ae.done(effect.token, None, 3.0, WALL) == []  # s1 is gone
    joiner.ae._next_at = 0.0
    (effect,) = joiner.ae.tick(
        4.0, WALL, picker([("s2", ("127.0.0.1", 2))]), joined=True
    )
    assert effect.request == AeChunk("j", "k099", 100)
    while effect is not None:
        out = joiner.ae.done(
            effect.token, second.ae.handle(effect.request, WALL), 5.0, WALL
        )
        effect = out[0] if out else None
    assert joiner.ae.caught_up
    assert joiner.view() == first.view()
    assert joiner.ae.stats["chunks"] == 3  # 1 from s1, then 2 from s2


def test_a_stall_past_the_push_deadline_reports_behind_until_a_round_reconciles() -> (
    None
):
    a, b = Side("a"), Side("b")
    for i in range(3):
        a.put(f"k{i}")  # pushed to b while it was stopped: dropped for it
    b.ae._next_at = 50.0
    b.ae.stall(6.0, now=10.0)
    assert b.ae.stalled == 6.0
    assert b.ae.next_deadline() == 10.0  # the round opens now, not an interval on
    assert b.ae.stats["stall_resyncs"] == 1
    round_between(b, a)
    assert b.view() == a.view()
    assert b.ae.stalled is None


def test_a_stall_stays_reported_while_rounds_fail_or_leave_a_rest() -> None:
    a, b = Side("a"), Side("b", antientropy_repair_max=10)
    for i in range(25):
        a.put(f"k{i:02d}")
    b.ae.stall(6.0, now=10.0)
    (effect,) = b.ae.tick(10.0, WALL, picker([("a", ("127.0.0.1", 1))]), joined=True)
    assert b.ae.done(effect.token, None, 11.0, WALL) == []  # a failed round
    assert b.ae.stalled == 6.0
    rounds = 0
    while b.ae.stalled is not None:
        round_between(b, a)
        rounds += 1
        assert rounds <= 3
    assert rounds == 3  # 10 + 10 + 5 wanted: the first two left a rest
    assert b.view() == a.view()


def test_a_round_opened_before_the_stall_does_not_end_the_resync() -> None:
    a, b = Side("a"), Side("b")
    for side in (a, b):
        side.table.fold(side.table.pending_folds())
    b.ae._next_at = 0.0
    (effect,) = b.ae.tick(1.0, WALL, picker([("a", ("127.0.0.1", 1))]), joined=True)
    reply = a.ae.handle(effect.request, WALL)  # "same", answered before...
    a.put("k")  # ...the writes b misses while frozen
    b.ae.stall(6.0, now=10.0)
    assert b.ae.done(effect.token, reply, 10.0, WALL) == []
    assert b.ae.stalled == 6.0  # that "same" is from before the stall
    round_between(b, a)
    assert b.ae.stalled is None
    assert b.view() == a.view()


def test_a_stall_of_a_bootstrapping_or_lone_node_is_not_a_resync() -> None:
    joiner = Side("j", caught_up=False)
    joiner.ae.stall(6.0, now=10.0)
    assert joiner.ae.stalled is None  # its bootstrap covers it
    lone = Side("l")
    lone.ae.stall(6.0, now=10.0)
    assert lone.ae.tick(10.0, WALL, picker([]), joined=True) == []
    assert lone.ae.stalled is None  # nobody to be behind


def test_a_node_paused_past_the_push_deadline_is_not_ready_until_resynced() -> None:
    from mesh.testing.simnet import SimNet

    sim = SimNet.cluster(3, seed=11, profile="local")
    sim.run_for(3.0)
    node = sim.node("n2").core
    assert node.route_sync().caught_up
    pause = node.config.push_deadline + 2.0
    sim.pause("n2", pause)
    writer = sim.node("n0").core
    _, out = writer.put_route("k", "http://t", {}, None, sim.now, sim.now)
    sim.execute("n0", out)
    sim.run_for(pause)  # resumes at the very end, before any of its timers
    sim.run_for(0.0001)
    sync = node.route_sync()
    assert not sync.caught_up
    assert sync.reason.startswith("resyncing routes after a ")
    deadline = sim.now + node.config.antientropy_interval
    while not node.route_sync().caught_up:
        assert sim.now < deadline
        sim.run_for(0.05)
    assert node.routes.get("k") is not None
    # a pause shorter than the deadline does not count
    sim.pause("n2", node.config.push_deadline / 2)
    sim.run_for(node.config.push_deadline)
    assert node.route_sync().caught_up
    assert node.ae.stats["stall_resyncs"] == 1


@pytest.mark.parametrize("first_input", ["timer", "push"])
def test_a_member_stalled_past_the_tombstone_ttl_takes_the_writes_it_missed(
    first_input: str,
) -> None:
    # Audit 14: back from a stall longer than the TTL, a member refused a
    # write made while it was frozen as "older than the horizon" (it could be
    # a write whose delete it forgot) and had every other member drop it: a
    # write answered 200 and held by all the others, lost mesh-wide. Time
    # stalled does not count towards the TTL: it could not have seen a
    # delete made while it was frozen.
    from mesh.testing.simnet import SimNet

    ttl = 4.0
    sim = SimNet.cluster(3, seed=3, profile="local", route_tombstone_ttl=ttl)
    sim.run_for(3.0)
    stalled = sim.node("n2").core
    pause = ttl + 1.1
    sim.pause("n2", pause)
    sim.run_for(0.6)
    writer = sim.node("n0").core
    _, out = writer.put_route("y1", "http://t", {}, None, sim.now, sim.now)
    sim.execute("n0", out)
    if first_input == "push":
        # a push that waited in the frozen member's socket is the first
        # thing it handles, before any timer of its own (handed to its core
        # just before the simulator resumes it)
        route = writer.routes.get("y1")
        assert route is not None
        sim.run_for(pause - 0.65)
        counts, effects = stalled.receive_routes([route], sim.now, sim.now)
        sim.execute("n2", effects)
        assert counts == {"applied": 1}
    else:
        sim.run_for(pause - 0.6)
    deadline = sim.now + 5 * stalled.config.antientropy_interval
    while not (stalled.route_sync().caught_up and stalled.routes.get("y1")):
        assert sim.now < deadline
        sim.run_for(0.05)
    sim.run_for(3 * stalled.config.antientropy_interval)
    for name in ("n0", "n1", "n2"):
        held = sim.node(name).core.routes.get("y1")
        assert held is not None, name
        assert not held.deleted
    assert all(
        sim.node(name).core.ae.stats["routes_dropped"] == 0 for name in ("n0", "n1")
    )


def test_a_member_refuses_client_writes_until_it_has_caught_up() -> None:
    # Restarted empty, it cannot know the revision a write without one
    # inherits: a write taken then (revision 0) would lose, mesh-wide, to the
    # stored revision 5 it could not see (audit 11).
    from mesh.testing.simnet import SimNet

    sim = SimNet.cluster(3, seed=5, profile="local")
    sim.run_for(3.0)
    _, out = sim.node("n0").core.put_route("k", "http://t", {}, 5, sim.now, sim.now)
    sim.execute("n0", out)
    sim.run_for(1.0)
    core = sim.restart("n2").core
    assert core.write_refusal() is not None
    index = core.routes.index
    outcome, out = core.put_route("k", "http://new", {}, None, sim.now, sim.now)
    assert outcome.status is OutcomeStatus.UNAVAILABLE
    assert core.routes.index == index
    sim.execute("n2", out)
    deadline = sim.now + 10.0
    while core.write_refusal() is not None:
        assert sim.now < deadline
        sim.run_for(0.05)
    outcome, out = core.put_route("k", "http://new", {}, None, sim.now, sim.now)
    assert outcome.status is OutcomeStatus.APPLIED
    assert outcome.route is not None
    assert outcome.route.version.revision == 5  # inherited from the mesh's entry

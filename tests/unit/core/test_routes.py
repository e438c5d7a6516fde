"""RouteTable: versions, conflicts, tombstones, the HLC."""

from __future__ import annotations

import gc

import msgpack
import pytest
from hypothesis import example, given, settings, strategies as st

from mesh.codec import PROTOCOL_VERSION
from mesh.codec_routes import decode_routes, encode_routes
from mesh.core.digest import Digest, element_of
from mesh.core.route_checks import validate_route_fields
from mesh.core.routes import (
    FOLD_AT_ONCE,
    HybridClock,
    OutcomeStatus,
    Route,
    RouteTable,
    Version,
    Write,
    _elements_of,
)


def table(origin: str = "a") -> RouteTable:
    return RouteTable(origin=origin, max_routes=100, hlc_max_skew_ms=60_000)


def test_version_string_sorts_like_the_version() -> None:
    versions = [
        Version(0, 5, "b"),
        Version(0, 5, "a"),
        Version(1, 1, "a"),
        Version(0, 70000, "a"),
        Version(2**64 - 1, 0, "z"),
    ]
    assert sorted(versions) == sorted(versions, key=str)
    for v in versions:
        assert Version.parse(str(v)) == v


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.sampled_from("ab"))
def test_version_string_is_the_contracts_format(
    revision: int, hlc: int, origin: str
) -> None:
    """Both numbers zero-padded to 20 digits: the text of every answer's
    ``version`` and of the digest's element (part of the protocol)."""
    text = str(Version(revision, hlc, origin))
    assert text == f"{revision:020d}.{hlc:020d}.{origin}"


@given(
    st.text(min_size=1, max_size=20),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.text(min_size=1, max_size=20),
)
@example(key="a", revision=0, hlc=5, origin="n")  # the table's own shortcut
def test_the_table_folds_the_digest_element_of_key_and_version_text(
    key: str, revision: int, hlc: int, origin: str
) -> None:
    """The element is part of the anti-entropy protocol: every member must
    hash an entry alike, whatever shortcut the table takes to compute it."""
    t = table()
    version = Version(revision, hlc, origin)
    t.apply(
        Route("k" + key.encode("utf-8", "replace").hex(), "x", {}, version), wall_ms=0
    )
    (stored,) = t
    assert t.by_element(element_of(stored.key, str(version))) == stored


def test_a_route_is_immutable_and_its_repr_leaves_out_target_and_meta() -> None:
    r = Route("k", "http://user:tok3n@x", {"auth": "s3cret"}, Version(0, 1, "a"))
    assert "tok3n" not in repr(r)
    assert "s3cret" not in repr(r)
    assert "'k'" in repr(r)
    with pytest.raises(AttributeError):
        r.target = "y"  # type: ignore[misc]
    assert Route("k", "x") == Route("k", "x", {}, Version(0, 0, ""), False)
    w = Write("k", "http://user:tok3n@x", {"auth": "s3cret"}, 7)
    assert "tok3n" not in repr(w)
    assert "s3cret" not in repr(w)


def test_stored_routes_give_the_cyclic_collector_nothing_to_walk() -> None:
    """A full collection walks every object the collector tracks, with the
    loop held: with tracked entries it took ~0.35 s at 10^6 routes. Routes
    stored by every path (single writes, batch calls, pushes decoded both
    ways, applied one by one and a batch at a time) must add no tracked
    objects, whatever the table's size."""
    n = 2000
    t = RouteTable(origin="a", max_routes=10 * n, hlc_max_skew_ms=10**9)
    typed = encode_routes(
        "b", [Route(f"p{i}", "x", {"m": "v"}, Version(0, i, "b")) for i in range(n)]
    )
    # a row with an eighth field: not the common form, decoded row by row
    rows = [[f"q{i}", "x", {"m": "v"}, 0, i, "b", False, 0] for i in range(n)]
    untyped = msgpack.packb([PROTOCOL_VERSION, "b", rows])
    gc.collect()
    before = len(gc.get_objects())
    for i in range(n):
        t.write(f"w{i}", "x", {"m": "v"}, revision=None, wall_ms=5)
    t.write_many([Write(f"b{i}", "x", {"m": "v"}) for i in range(n)], wall_ms=5)
    t.apply_many(decode_routes(typed, max_routes=n)[1], wall_ms=5, horizon_ms=None)
    for route in decode_routes(untyped, max_routes=n)[1]:
        t.apply(route, wall_ms=5)
    t.apply_many(
        [Route(f"r{i}", "x", {}, Version(0, 9, "c")) for i in range(n)],
        wall_ms=5,
        horizon_ms=None,
    )
    t.fold(t.pending_folds())
    gc.collect()
    assert len(t) == 5 * n
    assert len(gc.get_objects()) - before < 100


def test_pushed_batch_counts_outcomes_like_one_apply_each() -> None:
    t, u = table(), table()
    old = Route("k", "x", {}, Version(0, 5, "z"))
    new = Route("k", "y", {}, Version(0, 9, "z"))
    batch = [new, old, new, Route("j", "x", {}, Version(0, 1, "z"))]
    counts = t.apply_many(batch, wall_ms=0, horizon_ms=None)
    one_by_one: dict[str, int] = {}
    for r in batch:
        status = u.apply(r, wall_ms=0).status.value
        one_by_one[status] = one_by_one.get(status, 0) + 1
    assert counts == one_by_one == {"applied": 2, "stale": 1, "duplicate": 1}
    assert list(t) == list(u)
    assert t.summary() == u.summary()


def _held_table() -> RouteTable:
    t = table()
    for i, revision in enumerate((0, 3, 0)):
        t.apply(Route(f"k{i}", "x", {}, Version(revision, 10 + i, "z")), wall_ms=0)
    t.chunk("", 1)  # the sorted key list exists: only new keys may join it
    return t


def test_a_pushed_batch_of_rewrites_counts_duplicates_and_stale_ones() -> None:
    """A batch over held keys goes in one pass only if every route is newer
    than its key's entry; one that is not is counted as itself."""
    for odd in (
        Route("k1", "x", {}, Version(3, 11, "z")),  # the very entry: duplicate
        Route("k1", "y", {}, Version(2, 99, "z")),  # an older revision: stale
    ):
        batch = [
            Route("k0", "y", {}, Version(0, 20, "z"), deleted=True),
            odd,
            Route("k2", "y", {}, Version(0, 21, "z")),
            Route("k9", "y", {}, Version(0, 22, "z")),
        ]
        t, u = _held_table(), _held_table()
        counts = t.apply_many(batch, wall_ms=0, horizon_ms=None)
        for r in batch:
            u.apply(r, wall_ms=0)
        expected = "duplicate" if odd.version == Version(3, 11, "z") else "stale"
        assert counts == {"applied": 3, expected: 1}
        assert (list(t), t.index, t.tombstones) == (list(u), u.index, u.tombstones)
        assert t.summary() == u.summary()
        assert t.chunk("", 100) == u.chunk("", 100)


def test_a_batch_call_over_held_keys_takes_their_revision() -> None:
    """A rewrite without a revision keeps the held one (as a single write
    does); one with an older revision is a conflict, with its message."""
    t = _held_table()
    outcomes, _ = t.write_many(
        [Write("k1", "y"), Write("k0", "y", revision=2), Write("k5", "y")], wall_ms=0
    )
    assert [o.status for o in outcomes] == [OutcomeStatus.APPLIED] * 3
    assert [o.route.version.revision for o in outcomes if o.route] == [3, 2, 0]
    outcomes, _ = t.write_many(
        [Write("k2", "y"), Write("k1", "y", revision=1)], wall_ms=0
    )
    assert [o.status for o in outcomes] == [
        OutcomeStatus.APPLIED,
        OutcomeStatus.CONFLICT,
    ]
    assert "older than the stored revision 3" in outcomes[1].reason


def test_batches_of_rewrites_are_stored_in_one_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rewrites and deletes of held routes, pushed or written in a batch
    call, skip the route-by-route store (what keeps a steady table, where
    most writes replace a route, from paying ~2x per route; the results are
    held to the route-by-route ones by the property tests)."""
    t = _held_table()

    def one_by_one(*args: object) -> None:
        raise AssertionError("stored route by route")

    monkeypatch.setattr(RouteTable, "_put", one_by_one)
    pushed = [
        Route(f"k{i}", "y", {}, Version(3, 50 + i, "w"), i == 1) for i in range(3)
    ]
    assert t.apply_many(pushed, wall_ms=0, horizon_ms=None) == {"applied": 3}
    assert t.chunk("", 100) == (pushed, False)  # each key once, in order
    writes = [Write("k0", "z"), Write("k1", "z", deleted=True), Write("k2", "z")]
    outcomes, changes = t.write_many(writes, wall_ms=0)
    assert len(changes) == 3
    assert [o.route.version.revision for o in outcomes if o.route] == [3, 3, 3]
    # puts only, as most batch calls are (checked column by column)
    outcomes, changes = t.write_many(
        [Write("k0", "q", {}), Write("k1", "q", {})], wall_ms=0
    )
    assert [o.route.version.revision for o in outcomes if o.route] == [3, 3]


def test_a_batch_of_new_keys_takes_those_refused_for_lack_of_room() -> None:
    """A key refused as FULL counts as missing until stored; a batch stored
    in one pass (its own code path) must stop counting it too."""
    t = RouteTable(origin="a", max_routes=3, hlc_max_skew_ms=10**9)
    t.apply(Route("a", "x", {}, Version(0, 1 << 16, "z")), wall_ms=50)
    for key in ("b", "c"):
        t.apply(Route(key, "", {}, Version(0, 1 << 16, "z"), deleted=True), wall_ms=50)
    refused = Route("r", "x", {}, Version(0, 2 << 16, "z"))
    assert t.apply(refused, wall_ms=50).status is OutcomeStatus.FULL
    assert t.missing() == 1
    assert t.collect(5) == 2  # both tombstones: room for two
    batch = [refused, Route("d", "x", {}, Version(0, 3 << 16, "z"))]
    assert t.apply_many(batch, wall_ms=50, horizon_ms=None) == {"applied": 2}
    assert t.get("r") == refused
    assert t.missing() == 0


@pytest.mark.parametrize("revision", [1.5, True, "3"])
def test_a_revision_must_be_an_int(revision: object) -> None:
    """Not a bool, a float or a string, in a write or a batch (an embedding
    caller can pass any; audit, session 14: 1.5 was stored, then refused by
    every peer that was pushed it)."""
    t = table()
    single = t.write("a", "http://x", {}, revision=revision, wall_ms=1)  # type: ignore[arg-type]
    batch = [Write("b", "http://x", {}, revision), Write("c", "http://x", {}, 2)]  # type: ignore[arg-type]
    outcomes, changes = t.write_many(batch, wall_ms=1)
    assert single.status is OutcomeStatus.INVALID
    assert [o.status for o in outcomes] == [
        OutcomeStatus.INVALID,
        OutcomeStatus.APPLIED,
    ]
    assert outcomes[0].reason == "revision must be an integer in 0..2**64-1"
    assert [route.key for _, route in changes] == ["c"]


def test_a_batch_rewrite_passes_a_held_clamped_hlc_as_a_write_does() -> None:
    """A held entry whose HLC was too far ahead to witness, at the same
    revision: the batch's first HLC can equal it, and the write then wins on
    its origin's name alone. write() bumps past it; the batch must store
    what the writes one by one store (a property test found it, session 14)."""
    held = Route("k0", "http://old", {}, Version(0, 6 << 16, "n1"))
    writes = [Write("k0", "http://w"), Write("k1", "http://w")]
    results = []
    for one_by_one in (False, True):
        t = RouteTable(origin="x", max_routes=10, hlc_max_skew_ms=1)
        t.apply(held, wall_ms=0, horizon_ms=None)  # 6 ms ahead: clamped
        if one_by_one:
            outcomes = [
                t.write(w.key, w.target, w.meta, revision=None, wall_ms=6)
                for w in writes
            ]
        else:
            outcomes, _ = t.write_many(writes, wall_ms=6)
        results.append([o.route for o in outcomes])
    assert results[0] == results[1]
    assert results[0][0].version.hlc > held.version.hlc  # type: ignore[union-attr]


def test_a_batch_call_refuses_each_bad_item_and_fills_the_table_exactly() -> None:
    """The edges of the batch path (:meth:`RouteTable.write_many`): the
    revision's upper bound, and a table with room for all but the last."""
    t = table()
    writes = [Write("a", "http://x", {}, 2**64 - 1), Write("b", "http://x", {}, 2**64)]
    outcomes, changes = t.write_many(writes, wall_ms=1)
    assert [o.status for o in outcomes] == [
        OutcomeStatus.APPLIED,
        OutcomeStatus.INVALID,
    ]
    assert outcomes[1].reason == "revision must be an integer in 0..2**64-1"
    assert changes == [(1, outcomes[0].route)]
    for room in (3, 2):
        t = RouteTable(origin="a", max_routes=room, hlc_max_skew_ms=10**9)
        outcomes, changes = t.write_many(
            [Write(k, "http://x") for k in "xyz"], wall_ms=1
        )
        statuses = [o.status for o in outcomes]
        assert statuses[:2] == [OutcomeStatus.APPLIED] * 2
        assert statuses[2] is (
            OutcomeStatus.APPLIED if room == 3 else OutcomeStatus.FULL
        )
        assert len(t) == room == len(changes)


def test_write_then_read_and_revision_ordering() -> None:
    t = table()
    put = t.write("k", "http://one", {"x": "1"}, revision=5, wall_ms=1000)
    assert put.status is OutcomeStatus.APPLIED
    assert put.route is not None
    assert put.route.version.revision == 5
    stale = t.write("k", "http://old", {}, revision=4, wall_ms=2000)
    assert stale.status is OutcomeStatus.CONFLICT
    assert stale.route == put.route  # 409 carries the current route
    same = t.write("k", "http://two", {}, revision=5, wall_ms=2000)
    assert same.status is OutcomeStatus.APPLIED  # equal revision: newer HLC wins
    # No revision: inherits the stored one, so it still orders after it.
    plain = t.write("k", "http://three", {}, revision=None, wall_ms=3000)
    assert plain.route is not None
    assert plain.route.version.revision == 5
    assert t.get("k") == plain.route


def test_delete_is_a_tombstone_that_stale_writes_cannot_undo() -> None:
    a, b = table("a"), table("b")
    put = a.write("k", "http://x", {}, revision=None, wall_ms=1000)
    assert put.route is not None
    b.apply(put.route, wall_ms=1000)
    gone = b.write("k", "", {}, revision=None, wall_ms=2000, deleted=True)
    assert gone.route is not None
    assert gone.route.deleted
    assert len(b) == 0
    assert b.tombstones == 1
    # The old put arrives again (a late or duplicated push): nothing changes.
    assert b.apply(put.route, wall_ms=3000).status is OutcomeStatus.STALE
    assert b.get("k") == gone.route
    # And the tombstone wins at a when it arrives there.
    assert a.apply(gone.route, wall_ms=3000).status is OutcomeStatus.APPLIED
    assert a.live() == []


def test_apply_is_idempotent() -> None:
    t = table()
    r = Route("k", "http://x", {}, Version(0, 10, "z"))
    assert t.apply(r, wall_ms=0).status is OutcomeStatus.APPLIED
    assert t.apply(r, wall_ms=0).status is OutcomeStatus.DUPLICATE
    assert t.index == 1


@pytest.mark.parametrize(
    ("key", "target", "meta", "ok"),
    [
        ("a", "t", None, True),
        ("A9._:@-z", "t", {"k": "v"}, True),
        ("", "t", None, False),
        ("-a", "t", None, False),
        ("a/b", "t", None, False),
        ("a" * 253, "t", None, True),
        ("a" * 254, "t", None, False),
        ("a", "", None, False),
        ("a", "t" * 1024, None, True),
        ("a", "t" * 1025, None, False),
        ("a", "t", {str(i): "v" for i in range(33)}, False),
        ("a", "t", {"k": "v" * 257}, False),
        ("a", "t", {"k": 1}, False),
        ("a", 5, None, False),
        # lone surrogates (JSON's "\\ud800"): no UTF-8 encoder takes them
        ("a", "caf\u00e9 \U0001f600", {"k\u00e9": "v\u00e9"}, True),
        ("a", "t\ud800", None, False),
        ("a", "t", {"k\udfff": "v"}, False),
        ("a", "t", {"k": "\udc80"}, False),
    ],
)
def test_contract_limits(key: object, target: object, meta: object, ok: bool) -> None:
    assert (validate_route_fields(key, target, meta) is None) is ok


def test_hlc_never_goes_backwards_and_clamps_the_future() -> None:
    clock = HybridClock(max_skew_ms=1000)
    t1 = clock.increment(5000)
    t2 = clock.increment(4000)  # wall clock stepped back
    assert t2 > t1
    clock.witness((10_000 << 16) + 3, wall_ms=5000)  # 5 s ahead: clamped
    assert clock.clamped == 1
    assert clock.increment(5000) < (10_000 << 16)
    clock.witness((5500 << 16) + 7, wall_ms=5000)  # within the skew: adopted
    assert clock.increment(5000) > (5500 << 16) + 7


def test_local_write_supersedes_a_clamped_future_version() -> None:
    t = table()
    future = Route("k", "http://f", {}, Version(0, (10**12) << 16, "evil"))
    t.apply(future, wall_ms=1000)
    out = t.write("k", "http://mine", {}, revision=None, wall_ms=1000)
    assert out.status is OutcomeStatus.APPLIED
    assert t.get("k") == out.route


def test_table_bound() -> None:
    t = RouteTable(origin="a", max_routes=2, hlc_max_skew_ms=1)
    assert t.write("a", "t", {}, revision=None, wall_ms=1).changed
    assert t.write("b", "t", {}, revision=None, wall_ms=1).changed
    assert t.write("c", "t", {}, revision=None, wall_ms=1).status is OutcomeStatus.FULL
    assert t.write("a", "u", {}, revision=None, wall_ms=1).changed  # updates still fit


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["put", "delete", "collect", "page"]),
            st.integers(0, 30),
        ),
        max_size=80,
    )
)
def test_chunk_pages_stay_in_key_order_through_writes_and_collection(
    ops: list[tuple[str, int]],
) -> None:
    # Pages of a bootstrap are served while writes and tombstone collection
    # go on: keys added after the first page must show up, in order, and
    # forgotten keys must not.
    t = RouteTable(origin="a", max_routes=1000, hlc_max_skew_ms=60_000)
    wall = 1000
    for op, n in ops:
        wall += 10
        key = f"k{n:02d}"
        if op == "put":
            t.write(key, "http://x", {}, revision=None, wall_ms=wall)
        elif op == "delete":
            t.write(key, "", {}, revision=None, wall_ms=wall, deleted=True)
        elif op == "collect":
            t.collect(wall + 1)
        else:
            after = f"k{n:02d}"
            page, more = t.chunk(after, 5)
            expected = sorted(k for k in (r.key for r in t) if k > after)
            assert [r.key for r in page] == expected[:5]
            assert more == (len(expected) > 5)
    page, _ = t.chunk("", 1000)
    assert [r.key for r in page] == sorted(r.key for r in t)


# --- sorted snapshots (the list answer's source) ---


def _reference(t: RouteTable, prefix: str) -> list[Route]:
    return sorted(
        (r for r in t if not r.deleted and r.key.startswith(prefix)),
        key=lambda r: r.key,
    )


@settings(max_examples=60, deadline=None)
@given(
    first=st.lists(st.from_regex(r"[a-c][a-c.]{0,3}", fullmatch=True), max_size=20),
    later=st.lists(st.from_regex(r"[a-c][a-c.]{0,3}", fullmatch=True), max_size=20),
    deleted=st.lists(st.integers(0, 39), max_size=8),
    prefix=st.from_regex(r"[a-d.]{0,3}", fullmatch=True),
)
def test_live_matches_a_filtered_sort(
    first: list[str], later: list[str], deleted: list[int], prefix: str
) -> None:
    t = RouteTable(origin="a", max_routes=1000, hlc_max_skew_ms=60_000)
    for key in first:
        t.write(key, "http://x", {}, revision=None, wall_ms=1)
    assert t.live(prefix) == _reference(t, prefix)  # builds the sorted keys
    for key in later:  # new keys after the sorted list exists, and rewrites
        t.write(key, "http://y", {}, revision=None, wall_ms=2)
    keys = first + later
    for i in deleted:
        if i < len(keys):
            t.write(keys[i], "", {}, revision=None, wall_ms=3, deleted=True)
    t.collect(horizon_ms=10**15)  # forgets tombstones: keys leave the list
    assert t.live(prefix) == _reference(t, prefix)
    assert t.live() == _reference(t, "")


def test_sorted_snapshot_is_a_copy_at_one_instant() -> None:
    t = table()
    for key in ("b.1", "a.1", "b.2", "c.1"):
        t.write(key, f"http://{key}", {}, revision=None, wall_ms=1)
    keys, entries = t.sorted_snapshot("b.")
    assert keys == ["b.1", "b.2"]
    before = dict(entries)
    t.write("b.0", "http://new", {}, revision=None, wall_ms=2)
    t.write("b.1", "http://changed", {}, revision=None, wall_ms=2)
    assert (keys, entries) == (["b.1", "b.2"], before)
    assert [r.key for r in t.live("b.")] == ["b.0", "b.1", "b.2"]


def test_live_with_the_last_code_point_in_the_prefix() -> None:
    t = table()
    t.write("a", "http://x", {}, revision=None, wall_ms=1)
    assert t.live(chr(0x10FFFF)) == []
    assert t.live("a" + chr(0x10FFFF)) == []
    assert [r.key for r in t.live("a")] == ["a"]


_metas = st.sampled_from([{}, {"a": "1"}, {"a": "2", "b": "x"}])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["k1", "k2", "k3"]),
            st.sampled_from(["http://x", "http://y"]),
            _metas,
            st.integers(0, 3),  # revision
            st.integers(1, 6),  # hlc
            st.sampled_from(["a", "b"]),
            st.booleans(),  # deleted
        ),
        max_size=30,
    )
)
def test_every_read_returns_the_route_that_was_stored(
    ops: list[tuple[str, str, dict[str, str], int, int, str, bool]],
) -> None:
    """Every way out of the table gives back exactly the route applied last
    per key (a guard for any change to how entries are stored)."""
    t = table()
    model: dict[str, Route] = {}
    for key, target, meta, revision, hlc, origin, deleted in ops:
        route = Route(
            key,
            "" if deleted else target,
            {} if deleted else dict(meta),
            Version(revision, hlc, origin),
            deleted,
        )
        outcome = t.apply(route, wall_ms=0)
        current = model.get(key)
        if current is None or route.version > current.version:
            model[key] = route
            assert outcome.status is OutcomeStatus.APPLIED
        assert outcome.route == model[key]
    assert {r.key: r for r in t} == model
    for key, route in model.items():
        assert t.get(key) == route
        assert t.by_element(element_of(key, str(route.version))) == route
    assert t.live() == sorted(
        (r for r in model.values() if not r.deleted), key=lambda r: r.key
    )
    keys, entries = t.sorted_snapshot()
    assert keys == sorted(model)
    assert dict(entries) == model
    assert t.chunk("", 10) == ([model[k] for k in sorted(model)], False)


def test_folding_in_slices_gives_the_digest_of_one_fold() -> None:
    """``fold(limit)`` folds exactly ``limit`` pending changes (the node's
    bound on one tick's work) and slices add up to the one whole fold,
    removals of overwritten entries included."""
    sliced, whole = table(), table()
    for t in (sliced, whole):
        for i in range(40):
            t.write(f"k{i % 25}", f"http://{i}", {}, revision=None, wall_ms=1 + i)
            if i == 24:
                t.fold(t.pending_folds())  # so the rewrites below remove
    pending = sliced.pending_folds()
    assert pending == whole.pending_folds() == 30  # 15 entries out, 15 in
    for _ in range(pending):  # bounded: a slice that folds nothing fails
        if not sliced.pending_folds():
            break
        left = sliced.pending_folds()
        assert sliced.fold(7) == max(0, left - 7) == sliced.pending_folds()
    assert sliced.pending_folds() == 0
    whole.fold(whole.pending_folds())
    assert sliced.symbols(0, 64) == whole.symbols(0, 64)
    # and both are the digest of the entries held now, nothing else
    held = Digest(whole.digest.max_symbols)
    held.toggle([(element_of(r.key, str(r.version)), 1) for r in whole])
    assert whole.symbols(0, 64) == held.symbols(0, 64)


def test_a_large_batch_folds_at_once_to_the_digest_of_what_is_held() -> None:
    """A pushed batch of FOLD_AT_ONCE changes or more folds them at once
    instead of queuing them: the symbols must still be those of the entries
    held, with single writes still pending before and after (one of them a
    key the batch rewrites), and the table must queue nothing for it."""
    t = RouteTable(origin="a", max_routes=2 * FOLD_AT_ONCE, hlc_max_skew_ms=60_000)
    n = FOLD_AT_ONCE  # rewrites of n keys: n old elements out, n new in
    hlc = 1 << 40
    first = [Route(f"k{i}", "t0", {}, Version(0, hlc + i, "b")) for i in range(n)]
    t.apply_many(first, wall_ms=1, horizon_ms=None)
    t.write("k0", "single", {}, revision=None, wall_ms=2)  # pending: -old +new
    t.write("solo", "single", {}, revision=None, wall_ms=2)
    pending = t.pending_folds()
    assert pending == 3
    later = [Route(f"k{i}", "t1", {}, Version(0, hlc + n + i, "b")) for i in range(n)]
    later[0] = Route("k0", "t1", {}, Version(0, 1 << 60, "b"))  # newer than single
    t.apply_many(later, wall_ms=3, horizon_ms=None)
    assert t.pending_folds() == pending  # the batch queued nothing
    stored = t.get("k0")
    assert stored is not None
    assert stored.target == "t1"
    held = Digest(t.digest.max_symbols)
    held.toggle([(element_of(r.key, str(r.version)), 1) for r in t])
    size = t.digest.max_symbols
    assert t.symbols(0, size) == held.symbols(0, size)  # (folds the pending)
    assert t.pending_folds() == 0


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=20).filter(lambda k: "\x00" not in k),
            st.integers(0, 2**64 - 1),
            st.integers(0, 2**64 - 1),
            st.sampled_from(["a", "n2", "node-17"]),
        ),
        max_size=30,
    )
)
def test_a_batch_hashes_each_entry_to_its_element(
    entries: list[tuple[str, int, int, str]],
) -> None:
    """The batch path's element loop is the protocol's element of
    ``key NUL version``, entry by entry (revision 0 included)."""
    keys = [e[0] for e in entries]
    versions = [Version(r, h, o) for _, r, h, o in entries]
    try:
        expected = [element_of(k, str(v)) for k, v in zip(keys, versions, strict=True)]
    except UnicodeEncodeError:
        return  # (a lone surrogate: no key holds one)
    assert _elements_of(keys, versions) == expected

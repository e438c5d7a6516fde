"""Route tables converge whatever the delivery order: apply is idempotent,
commutative and associative (a last-writer-wins register per key)."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import msgspec
from hypothesis import given, strategies as st

from mesh.codec import PROTOCOL_VERSION
from mesh.codec_routes import decode_routes, encode_routes, route_row
from mesh.core.digest import element_of
from mesh.core.routes import Outcome, Route, RouteTable, Version, Write

KEYS = st.sampled_from(["a", "b", "c", "d"])
ORIGINS = st.sampled_from(["n1", "n2", "n3"])


@st.composite
def writes(draw: st.DrawFn) -> Route:
    deleted = draw(st.booleans())
    return Route(
        draw(KEYS),
        "" if deleted else draw(st.sampled_from(["http://x", "http://y", "http://z"])),
        {}
        if deleted
        else draw(
            st.dictionaries(st.sampled_from("pq"), st.text(max_size=3), max_size=2)
        ),
        Version(draw(st.integers(0, 3)), draw(st.integers(0, 5)), draw(ORIGINS)),
        deleted,
    )


def fresh() -> RouteTable:
    return RouteTable(origin="x", max_routes=1000, hlc_max_skew_ms=10**9)


# A version names one write: the origin's HLC never repeats.
@given(
    ops=st.lists(writes(), max_size=30, unique_by=lambda r: r.version),
    orders=st.lists(st.randoms(use_true_random=False), min_size=2, max_size=4),
    dups=st.lists(st.integers(0, 29), max_size=10),
)
def test_any_order_and_duplication_gives_identical_tables(
    ops: list[Route], orders: list[random.Random], dups: list[int]
) -> None:
    tables = []
    for rnd in orders:
        delivery = ops + [ops[i] for i in dups if i < len(ops)]
        rnd.shuffle(delivery)
        t = fresh()
        for route in delivery:
            t.apply(route, wall_ms=0)
        tables.append({r.key: r for r in t})
    assert all(t == tables[0] for t in tables)
    # And the winner of each key is its largest version.
    for key, route in tables[0].items():
        assert route.version == max(r.version for r in ops if r.key == key)


@given(ops=st.lists(writes(), max_size=20))
def test_route_batches_survive_the_codec(ops: list[Route]) -> None:
    data = encode_routes("n1", ops)
    sender, decoded = decode_routes(data, max_routes=100)
    assert sender == "n1"
    assert decoded == ops
    # the very bytes of the layout's rows (what anti-entropy sends as well)
    assert data == msgpack.packb([PROTOCOL_VERSION, "n1", list(map(route_row, ops))])


def _route(key: str, ms: int, counter: int, origin: str, deleted: bool) -> Route:
    return Route(
        key,
        "" if deleted else "http://x",
        {} if deleted else {"p": key},
        Version(0 if counter % 3 else counter, ms << 16 | counter, origin),
        deleted,
    )


def _entries(keys: range) -> st.SearchStrategy[Route]:
    return st.builds(
        _route,
        st.sampled_from([f"k{i}" for i in keys]),
        st.integers(0, 40),  # ms of the HLC
        st.integers(0, 5),  # its counter (and a revision now and then)
        ORIGINS,
        st.booleans(),
    )


def _table_after(history: list[Route], max_routes: int, wall_ms: int) -> RouteTable:
    """A small table (a short clock skew, a change log) that took ``history``."""
    t = RouteTable(
        origin="x", max_routes=max_routes, hlc_max_skew_ms=5, change_log_max=64
    )
    for route in history:
        t.apply(route, wall_ms=wall_ms)
    return t


def _observed(t: RouteTable, base: int) -> object:
    """Everything a caller can see of a table (the digest folded first)."""
    t.fold(t.pending_folds())
    entries = sorted(t, key=lambda r: r.key)
    return (
        entries,
        len(t),
        t.tombstones,
        t.index,
        t.changes_after(base),
        t.clock.last,
        t.clock.clamped,
        t.missing(),
        t.symbols(0, 64),
        [t.by_element(element_of(r.key, str(r.version))) for r in entries],
        t.chunk("", 100),
    )


@given(
    history=st.lists(_entries(range(10)), max_size=12),
    # distinct keys, partly new to the history: the one-pass case is common
    batch=st.lists(
        _entries(range(8, 24)), min_size=2, max_size=8, unique_by=lambda r: r.key
    ),
    twice=st.none() | st.integers(0, 7),  # or one key twice
    again=st.none() | st.integers(0, 11),  # or an entry of the history again
    # keys of the history written again, newer (a put or a delete): a batch
    # of rewrites, the one-pass case over held entries
    newer=st.lists(st.tuples(st.integers(0, 11), st.booleans()), max_size=4),
    max_routes=st.integers(4, 24),
    wall_ms=st.integers(0, 60),
    horizon_ms=st.none() | st.integers(0, 12),
    sorted_first=st.booleans(),
    collect_first=st.none() | st.integers(0, 60),
    collect_ms=st.integers(0, 60),
)
def test_a_pushed_batch_applies_as_its_routes_one_by_one(
    history: list[Route],
    batch: list[Route],
    twice: int | None,
    again: int | None,
    newer: list[tuple[int, bool]],
    max_routes: int,
    wall_ms: int,
    horizon_ms: int | None,
    sorted_first: bool,
    collect_first: int | None,
    collect_ms: int,
) -> None:
    """``apply_many`` stores a batch of new keys and newer rewrites in one
    pass: the tables it leaves (and their change logs, clocks, digests,
    tombstone collection) are the ones routes applied in turn leave. A small
    ``max_routes``, a short clock skew and a horizon make FULL, clamped and
    EXPIRED routes common; a collection before the batch leaves the digest
    owing removals that a re-pushed entry cancels."""
    for at, deleted in newer if history else ():
        key = history[at % len(history)].key
        held = max((r for r in history if r.key == key), key=lambda r: r.version)
        rewrite = _route(key, (held.version.hlc >> 16) + 1, 3, "n9", deleted)
        batch = [r for r in batch if r.key != key] + [rewrite]
    if again is not None and history:
        old = history[again % len(history)]
        batch = [r for r in batch if r.key != old.key] + [old]
    if twice is not None:
        batch = [
            *batch,
            msgspec.structs.replace(batch[twice % len(batch)], target="http://y"),
        ]
    tables = []
    for one_by_one in (False, True):
        t = _table_after(history, max_routes, wall_ms)
        if sorted_first:
            t.chunk("", 1)  # the sorted key list exists: new keys join it
        if collect_first is not None:
            t.fold(t.pending_folds())
            t.collect(collect_first)
        base = t.index
        if one_by_one:
            counts: dict[str, int] = {}
            for route in batch:
                status = t.apply(route, wall_ms=wall_ms, horizon_ms=horizon_ms).status
                counts[status.value] = counts.get(status.value, 0) + 1
        else:
            counts = t.apply_many(batch, wall_ms=wall_ms, horizon_ms=horizon_ms)
        collected = t.collect(collect_ms)
        tables.append((counts, collected, _observed(t, base)))
    assert tables[0] == tables[1]


_writes = st.builds(
    Write,
    st.sampled_from([f"k{i}" for i in range(10, 26)]),
    st.just("http://w"),
    st.sampled_from([{}, {"p": "q"}]),
    st.none() | st.sampled_from([0, 3]),
    st.booleans(),
)
# one field of one item made invalid: each is refused (400) with its message
_SPOILS: list[dict[str, Any]] = [
    {"key": "bad key"},
    {"key": "a\nb"},
    {"target": "", "deleted": False},
    {"target": "x" * 1025, "deleted": False},
    {"meta": {"p": 1}},
    {"meta": {"p": "v" * 257}},
    {"meta": {str(i): "v" for i in range(33)}},
    {"revision": 2**64},
    {"revision": -1},
    # valid, but not for the column check: each write then goes in turn
    {"target": "http://é"},
    {"target": "x" * 1024},
    {"meta": {"é": "v"}},
    {"meta": {str(i): "v" * 256 for i in range(32)}},
    {"revision": 2**64 - 1},
]


@given(
    history=st.lists(_entries(range(10)), max_size=12),
    writes=st.lists(_writes, min_size=2, max_size=8, unique_by=lambda w: w.key),
    twice=st.none() | st.integers(0, 7),  # or one key twice
    again=st.none() | st.integers(0, 11),  # or a key of the history
    held=st.lists(st.integers(0, 11), max_size=4),  # or several
    spoil=st.none() | st.tuples(st.integers(0, 7), st.sampled_from(_SPOILS)),
    max_routes=st.integers(4, 40),
    clock_ms=st.integers(0, 60),
    wall_ms=st.integers(0, 60),
    puts_only=st.booleans(),  # (a batch call of puts: the column check)
)
def test_a_batch_call_writes_as_its_items_one_by_one(
    history: list[Route],
    writes: list[Write],
    twice: int | None,
    again: int | None,
    held: list[int],
    spoil: tuple[int, dict[str, Any]] | None,
    max_routes: int,
    clock_ms: int,
    wall_ms: int,
    puts_only: bool,
) -> None:
    """``write_many`` versions and stores a batch of new keys and rewrites of
    held ones in one pass: the outcomes, the changes for peers and the
    tables are what each write alone gives, in order (consecutive HLCs,
    whatever the clock had seen; a rewrite takes the held revision, and one
    older than it is a conflict)."""
    if puts_only:
        writes = [w._replace(deleted=False) for w in writes]
    for n, at in enumerate(held if history else ()):
        key = history[at % len(history)].key
        if all(w.key != key for w in writes):
            writes[n % len(writes)] = writes[n % len(writes)]._replace(key=key)
    if again is not None and history:
        writes[again % len(writes)] = writes[again % len(writes)]._replace(
            key=history[again % len(history)].key
        )
    if spoil is not None:
        at, fields = spoil
        writes[at % len(writes)] = writes[at % len(writes)]._replace(**fields)
    if twice is not None:
        writes = [*writes, writes[twice % len(writes)]._replace(target="http://v")]
    results = []
    for one_by_one in (False, True):
        t = _table_after(history, max_routes, clock_ms)
        base = t.index
        outcomes: list[Outcome]
        changes: list[tuple[int, Route]]
        if one_by_one:
            outcomes, changes = [], []
            for w in writes:
                outcome = t.write(
                    w.key,
                    w.target,
                    w.meta,
                    revision=w.revision,
                    wall_ms=wall_ms,
                    deleted=w.deleted,
                )
                outcomes.append(outcome)
                if outcome.changed and outcome.route is not None:
                    changes.append((t.index, outcome.route))
        else:
            outcomes, changes = t.write_many(writes, wall_ms=wall_ms)
        results.append((outcomes, changes, _observed(t, base)))
    assert results[0] == results[1]


@given(
    writes=st.lists(
        _writes.map(lambda w: w._replace(deleted=False)),
        min_size=2,
        max_size=8,
        unique_by=lambda w: w.key,
    ),
    spoil=st.tuples(st.integers(0, 7), st.sampled_from(_SPOILS)),
)
def test_a_batch_of_new_puts_writes_as_its_items_one_by_one(
    writes: list[Write], spoil: tuple[int, dict[str, Any]]
) -> None:
    """The same for the common batch call, new keys put with room, with one
    item changed to be invalid or valid beyond the column check (what the
    test above reaches only now and then)."""
    at, fields = spoil
    writes[at % len(writes)] = writes[at % len(writes)]._replace(**fields)
    tables = []
    for one_by_one in (False, True):
        t = _table_after([], 40, 0)
        if one_by_one:
            outcomes = [
                t.write(w.key, w.target, w.meta, revision=w.revision, wall_ms=7)
                for w in writes
            ]
        else:
            outcomes = t.write_many(writes, wall_ms=7)[0]
        tables.append((outcomes, _observed(t, 0)))
    assert tables[0] == tables[1]
    for outcome, write in zip(tables[0][0], writes, strict=True):
        if outcome.route is not None:  # the table keeps a meta of its own
            assert outcome.route.meta is not write.meta

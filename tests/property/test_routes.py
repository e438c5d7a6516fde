"""Route tables converge whatever the delivery order: apply is idempotent,
commutative and associative (a last-writer-wins register per key)."""

from __future__ import annotations

import random

from hypothesis import given, strategies as st

from mesh.codec_routes import decode_routes, encode_routes
from mesh.core.routes import Route, RouteTable, Version

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
    sender, decoded = decode_routes(encode_routes("n1", ops), max_routes=100)
    assert sender == "n1"
    assert decoded == ops

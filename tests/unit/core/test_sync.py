"""Push policy: retry predicate, backoff budget, coalescing, bounds, sync=all."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, strategies as st

from mesh.config import Config
from mesh.core.effects import Effect, Push
from mesh.core.node import NodeCore
from mesh.core.routes import OutcomeStatus, Route, Version, Write
from mesh.core.sync import (
    Failure,
    PushScheduler,
    RetryPolicy,
    is_transient,
    route_size,
)
from mesh.messages import Alive

PEERS = [("b", ("10.0.0.2", 1)), ("c", ("10.0.0.3", 1))]


def core_with_peers(peers: str = "b", **config: object) -> NodeCore:
    """A node "a" that has heard each of ``peers`` alive (at 10.0.0.2, ...)."""
    core = NodeCore(
        Config.lan(name="a", **config),
        addr=("10.0.0.1", 1),
        rng=random.Random(1),
        now=0.0,
    )
    for i, name in enumerate(peers, start=2):
        core.receive((f"10.0.0.{i}", 1), [Alive(1, name, (f"10.0.0.{i}", 1))], 0.0)
    return core


def push_effects(effects: list[Effect]) -> list[Push]:
    return [e for e in effects if isinstance(e, Push)]


def route(key: str, hlc: int) -> Route:
    return Route(key, f"http://{key}/{hlc}", {}, Version(0, hlc, "a"))


@pytest.mark.parametrize(
    ("failure", "status", "transient"),
    [
        (Failure.CONNECT, None, True),
        (Failure.TIMEOUT, None, True),  # a slow peer gets more than one attempt
        (Failure.STATUS, 429, True),
        (Failure.STATUS, 500, True),
        (Failure.STATUS, 503, True),
        (Failure.STATUS, 599, True),
        (Failure.STATUS, 400, False),
        (Failure.STATUS, 401, False),
        (Failure.STATUS, 404, False),
        (Failure.STATUS, 413, False),
        (Failure.PROTOCOL, None, False),
    ],
)
def test_retry_predicate(failure: Failure, status: int | None, transient: bool) -> None:
    assert is_transient(failure, status) is transient


@given(
    timeout=st.floats(0.01, 30),
    budget_frac=st.floats(0, 0.999),
    base=st.floats(0.001, 5),
    cap=st.floats(0.001, 10),
    retries=st.integers(0, 50),
    seed=st.integers(0, 2**32),
)
def test_backoff_total_sleep_is_below_the_request_timeout(
    timeout: float, budget_frac: float, base: float, cap: float, retries: int, seed: int
) -> None:
    policy = RetryPolicy(timeout, timeout * budget_frac, base, cap, retries)
    delays = policy.delays(random.Random(seed))
    assert len(delays) <= retries
    assert sum(delays) < timeout
    assert all(d > 0 for d in delays)


def test_config_refuses_a_retry_budget_at_or_over_the_timeout() -> None:
    from mesh.config import Config
    from mesh.errors import ConfigError

    with pytest.raises(ConfigError, match="push_retry_budget must be <"):
        Config(push_request_timeout=1.0, push_retry_budget=1.0)


def test_coalescing_sends_only_the_newest_version_of_a_key() -> None:
    s = PushScheduler(queue_max=100, batch_max=100, deadline=3.0)
    s.enqueue(route("x", 1), 1, PEERS[:1])
    first = s.take_ready(0.0)
    assert [r.target for r in first[0].routes] == ["http://x/1"]
    # While that batch is in flight, a burst of writes to two keys.
    for i in range(2, 50):
        s.enqueue(route("x" if i % 2 else "y", i), i, PEERS[:1])
    assert s.take_ready(0.0) == []  # at most one batch in flight per peer
    s.done("b", first[0].id, ok=True)
    (second,) = s.take_ready(0.1)
    assert sorted(r.target for r in second.routes) == ["http://x/49", "http://y/48"]
    assert s.stats["coalesced"] == 46


def test_a_peer_is_pushed_to_while_queued_or_in_flight() -> None:
    """What anti-entropy asks before a round (NodeCore._streaming)."""
    s = PushScheduler(queue_max=100, batch_max=100, deadline=3.0)
    assert not s.pushing("b")  # never heard of
    s.enqueue(route("x", 1), 1, PEERS[:1])
    assert s.pushing("b")  # queued
    (batch,) = s.take_ready(0.0)
    assert s.pushing("b")  # in flight
    s.done("b", batch.id, ok=True)
    assert not s.pushing("b")


def test_queue_bound_drops_and_marks_for_repair() -> None:
    s = PushScheduler(queue_max=10, batch_max=5, deadline=3.0)
    s.enqueue(route("k0", 0), 0, PEERS[:1])
    s.take_ready(0.0)  # in flight
    for i in range(1, 12):
        s.enqueue(route(f"k{i}", i), i, PEERS[:1])
    assert s.depth() <= 10
    assert s.stats["dropped_overflow"] == 11
    assert "b" in s.needs_repair


def test_failed_batch_and_dead_peer_drop_with_reasons() -> None:
    s = PushScheduler(queue_max=10, batch_max=5, deadline=3.0)
    s.enqueue(route("k", 1), 1, PEERS)
    batches = {b.peer: b for b in s.take_ready(0.0)}
    assert batches["b"].deadline == 3.0
    s.done("b", batches["b"].id, ok=False, reason="deadline")
    s.enqueue(route("k2", 2), 2, PEERS)
    s.forget("c", "peer_dead")
    assert s.stats["dropped_deadline"] == 1
    assert s.stats["dropped_peer_dead"] == 2  # the in-flight one and the queued one
    assert s.needs_repair == {"b", "c"}


def test_sync_ticket_acks_only_after_delivery_without_drops() -> None:
    s = PushScheduler(queue_max=10, batch_max=5, deadline=3.0)
    s.enqueue(route("k", 1), 1, PEERS)
    ticket = s.ticket(1, ["b", "c"])
    batches = {b.peer: b for b in s.take_ready(0.0)}
    assert s.acked(ticket, 1) == ([], ["b", "c"])
    s.done("b", batches["b"].id, ok=True)
    assert s.acked(ticket, 1) == (["b"], ["c"])
    s.done("c", batches["c"].id, ok=False, reason="deadline")
    s.enqueue(route("k", 2), 2, PEERS)  # c has a fresh queue now
    (again,) = [b for b in s.take_ready(0.0) if b.peer == "c"]
    s.done("c", again.id, ok=True)
    # c lost the batch with index 1: never reported as acked for it.
    assert s.acked(ticket, 2) == (["b"], ["c"])


def test_min_interval_gathers_a_stream_of_writes_per_peer() -> None:
    s = PushScheduler(queue_max=100, batch_max=100, deadline=3.0, min_interval=0.05)
    s.enqueue(route("k0", 0), 0, PEERS[:1])
    (first,) = s.take_ready(10.0)  # after a quiet spell: at once
    s.done("b", first.id, ok=True)
    for i in range(1, 6):
        s.enqueue(route(f"k{i}", i), i, PEERS[:1])
    assert s.take_ready(10.01) == []  # held back
    assert s.held
    assert s.next_ready_at() == pytest.approx(10.05)
    (second,) = s.take_ready(10.05)
    assert len(second.routes) == 5


def test_token_bucket_sends_a_burst_at_once_then_one_batch_per_interval() -> None:
    s = PushScheduler(
        queue_max=100, batch_max=100, deadline=3.0, min_interval=0.1, burst=3
    )
    sent: list[tuple[float, list[str]]] = []

    def write_and_deliver(key: str, now: float) -> None:
        s.enqueue(route(key, int(now * 1000)), int(now * 1000), PEERS[:1])
        for batch in s.take_ready(now):
            sent.append((now, [r.key for r in batch.routes]))
            s.done(batch.peer, batch.id, True)

    # Three writes in a row after a quiet spell: each goes out at once.
    for i, now in enumerate((1.0, 1.001, 1.002)):
        write_and_deliver(f"k{i}", now)
    assert [t for t, _ in sent] == [1.0, 1.001, 1.002]
    # The bucket is empty: the next writes wait for a token and go together.
    write_and_deliver("k3", 1.003)
    write_and_deliver("k4", 1.004)
    assert len(sent) == 3
    assert s.held
    ready_at = s.next_ready_at()
    assert ready_at is not None
    assert ready_at == pytest.approx(1.002 + 0.1 - 2 * 0.001, abs=1e-9)
    assert s.take_ready(ready_at - 0.001) == []
    (batch,) = s.take_ready(ready_at)
    assert [r.key for r in batch.routes] == ["k3", "k4"]
    s.done(batch.peer, batch.id, True)
    # After a quiet spell the bucket is full again (but never above burst).
    sent.clear()
    for i, now in enumerate((5.0, 5.001, 5.002, 5.003)):
        write_and_deliver(f"q{i}", now)
    assert [t for t, _ in sent] == [5.0, 5.001, 5.002]


def test_expedite_hands_out_held_batches_and_still_draws_tokens() -> None:
    s = PushScheduler(
        queue_max=100, batch_max=100, deadline=3.0, min_interval=0.1, burst=1
    )
    s.enqueue(route("k0", 0), 0, PEERS[:1])
    (first,) = s.take_ready(1.0)
    s.done("b", first.id, ok=True)
    s.enqueue(route("k1", 1), 1, PEERS[:1])
    assert s.take_ready(1.01) == []  # no token: held
    (urgent,) = s.take_ready(1.01, expedite=True)  # a sync=all caller waits
    assert [r.key for r in urgent.routes] == ["k1"]
    # expedite never breaks "one batch in flight per peer"
    s.enqueue(route("k2", 2), 2, PEERS[:1])
    assert s.take_ready(1.02, expedite=True) == []
    s.done("b", urgent.id, ok=True)
    # the expedited batch was paid for: the bucket is in debt, so the next
    # plain batch waits longer than one interval after the first
    ready_at = s.next_ready_at()
    assert ready_at is not None
    assert ready_at == pytest.approx(1.01 + 2 * 0.1 - 0.01, abs=1e-9)
    (later,) = s.take_ready(ready_at)
    assert [r.key for r in later.routes] == ["k2"]


def test_node_core_expedites_pushes_for_a_waiting_caller() -> None:
    core = core_with_peers(push_min_interval=0.5, push_burst=1)
    _, out = core.put_route("k", "http://x", {}, None, 1.0, 1000.0)
    (push,) = push_effects(out)
    core.push_done("b", push.batch.id, True, "", 1.001)
    _, out = core.put_route("k2", "http://y", {}, None, 1.002, 1000.0)
    assert not push_effects(out)  # held by the bucket
    ticket = core.sync_ticket()
    pushes = push_effects(core.expedite_pushes(1.002))
    assert [r.key for r in pushes[0].batch.routes] == ["k2"]
    core.push_done("b", pushes[0].batch.id, True, "", 1.003)
    assert core.sync_status(ticket) == (["b"], [])


def test_batches_are_split_by_encoded_size() -> None:
    s = PushScheduler(queue_max=100, batch_max=100, deadline=3.0, batch_max_bytes=5000)
    for i in range(10):
        s.enqueue(Route(f"k{i}", "t" * 1000, {}, Version(0, i, "a")), i, PEERS[:1])
    (batch,) = s.take_ready(0.0)
    assert 1 <= len(batch.routes) < 10


def test_node_core_releases_held_batches_on_tick() -> None:
    core = core_with_peers(push_min_interval=0.05, push_burst=1)
    _, out = core.put_route("k", "http://x", {}, None, 1.0, 1000.0)
    (push,) = push_effects(out)
    core.push_done("b", push.batch.id, True, "", 1.001)
    _, out = core.put_route("k2", "http://y", {}, None, 1.002, 1000.0)
    assert not push_effects(out)
    assert core.pushes.next_ready_at() == pytest.approx(1.05)
    deadline = core.next_deadline()
    assert deadline is not None
    assert deadline <= 1.05
    assert not push_effects(core.tick(1.04))
    pushes = push_effects(core.tick(1.05))
    assert [r.key for r in pushes[0].batch.routes] == ["k2"]


def test_a_batch_write_goes_out_as_one_delta_batch_per_peer() -> None:
    core = core_with_peers("bc")
    writes = [Write(f"k{i}", "http://x") for i in range(50)]
    writes += [Write("k3", "", deleted=True), Write("bad key", "http://x")]
    outcomes, out = core.write_routes(writes, 1.0, 1000.0)
    statuses = [o.status for o in outcomes]
    assert statuses == [OutcomeStatus.APPLIED] * 51 + [OutcomeStatus.INVALID]
    pushes = push_effects(out)
    # one batch per peer with every change, k3 coalesced to its delete
    assert sorted(p.batch.peer for p in pushes) == ["b", "c"]
    for push in pushes:
        assert len(push.batch.routes) == 50
        (k3,) = [r for r in push.batch.routes if r.key == "k3"]
        assert k3.deleted


class _QueueModel:
    """The push queue's rules, written out one change at a time: coalesce by
    key (the newest moves to the back), drop everything past ``queue_max``,
    and a batch is the first ``batch_max`` pending that fit ``max_bytes``
    (always at least one)."""

    def __init__(self, queue_max: int, batch_max: int, max_bytes: int) -> None:
        self.queue_max, self.batch_max, self.max_bytes = queue_max, batch_max, max_bytes
        self.pending: dict[str, dict[str, tuple[int, Route]]] = {}
        self.coalesced = self.overflowed = 0
        self.repair: set[str] = set()

    def enqueue(self, changes: list[tuple[int, Route]], peers: list[str]) -> None:
        for peer in peers:
            pending = self.pending.setdefault(peer, {})
            for index, r in changes:
                if r.key in pending:
                    del pending[r.key]
                    self.coalesced += 1
                pending[r.key] = (index, r)
                if len(pending) > self.queue_max:
                    self.overflowed += len(pending)
                    pending.clear()
                    self.repair.add(peer)

    def take(self, peer: str) -> tuple[list[Route], int] | None:
        pending = self.pending.get(peer)
        if not pending:
            return None
        taken: list[tuple[int, Route]] = []
        size = 0
        for key in list(pending)[: self.batch_max]:
            cost = route_size(pending[key][1])
            if taken and size + cost > self.max_bytes:
                break
            taken.append(pending.pop(key))
            size += cost
        return [r for _, r in taken], min(i for i, _ in taken)


_SIZES = st.sampled_from([1, 40, 400])


@given(
    queue_max=st.integers(1, 8),
    batch_max=st.integers(1, 6),
    max_bytes=st.integers(60, 1500),
    steps=st.lists(
        st.one_of(
            st.lists(
                st.tuples(st.sampled_from("abcdefghij"), _SIZES), min_size=1, max_size=9
            ),
            st.sampled_from(["b", "c"]),  # a peer's batch delivered: the next taken
        ),
        max_size=12,
    ),
)
def test_the_queue_follows_its_rules_one_change_at_a_time(
    queue_max: int,
    batch_max: int,
    max_bytes: int,
    steps: list[list[tuple[str, int]] | str],
) -> None:
    """Batch calls' bulk enqueue and whole-queue batches (the fast paths)
    against the rules applied change by change: same batches, same drops."""
    s = PushScheduler(
        queue_max=queue_max,
        batch_max=batch_max,
        deadline=3.0,
        batch_max_bytes=max_bytes,
    )
    model = _QueueModel(queue_max, batch_max, max_bytes)
    in_flight: dict[str, int] = {}
    index = 0

    def take() -> None:
        for batch in s.take_ready(0.0):
            expected = model.take(batch.peer)
            assert expected is not None
            assert (list(batch.routes), batch.min_index) == expected
            in_flight[batch.peer] = batch.id
        assert set(in_flight) >= {p for p, q in model.pending.items() if q}

    for step in steps:
        if isinstance(step, str):
            if step in in_flight:
                s.done(step, in_flight.pop(step), ok=True)
        else:
            changes = []
            for key, length in step:
                index += 1
                changes.append(
                    (index, Route(key, "t" * length, {}, Version(0, index, "a")))
                )
            s.enqueue_many(changes, PEERS)
            model.enqueue(changes, [name for name, _ in PEERS])
        take()
        assert s.stats["coalesced"] == model.coalesced
        assert s.stats["dropped_overflow"] == model.overflowed
        assert s.needs_repair == model.repair
        assert s.depth() == sum(map(len, model.pending.values()))


@pytest.mark.parametrize("waiting", [3, 4, 5])
def test_a_batch_takes_at_most_batch_max_of_a_queue_that_fits(waiting: int) -> None:
    """The edges of taking a whole queue at once: one over ``batch_max``
    (or one byte over) leaves the rest for the next batch."""
    s = PushScheduler(queue_max=100, batch_max=4, deadline=3.0)
    s.enqueue(route("first", 0), 0, PEERS[:1])
    (first,) = s.take_ready(0.0)
    s.enqueue_many([(i, route(f"k{i}", i)) for i in range(1, waiting + 1)], PEERS[:1])
    s.done("b", first.id, ok=True)
    (batch,) = s.take_ready(0.0)
    assert [r.key for r in batch.routes] == [
        f"k{i}" for i in range(1, min(4, waiting) + 1)
    ]
    assert s.depth() == waiting - len(batch.routes)


@pytest.mark.parametrize("spare", [-1, 0])
def test_a_batch_of_a_whole_queue_stops_at_its_byte_bound(spare: int) -> None:
    routes = [route(f"k{i}", i) for i in range(1, 4)]
    s = PushScheduler(
        queue_max=100,
        batch_max=10,
        deadline=3.0,
        batch_max_bytes=sum(map(route_size, routes)) + spare,
    )
    s.enqueue_many(list(enumerate(routes, 1)), PEERS[:1])
    (batch,) = s.take_ready(0.0)
    assert len(batch.routes) == (3 if spare == 0 else 2)


def test_no_round_with_a_member_whose_routes_stream_in() -> None:
    """A member that pushed routes to us within antientropy_quiet is sent no
    round (what it streams is a difference on its way), and is once quiet;
    a push from a name that is no member is not remembered."""
    from mesh.core.effects import Reconcile

    core = core_with_peers("b", antientropy_quiet=0.5)
    core.ae.alone = False  # a member of a mesh: a plain round, not a merge
    core.receive_routes([route("k", 1 << 40)], 1.0, 1.0, "b")
    core.receive_routes([route("j", 1 << 40)], 1.0, 1.0, "stranger")
    assert "stranger" not in core._pushed_at

    def rounds(now: float) -> list[Reconcile]:
        core.ae._next_at = now
        return [e for e in core.tick(now) if isinstance(e, Reconcile)]

    assert rounds(1.4) == []
    assert core.ae.stats["rounds_deferred"] == 1
    (effect,) = rounds(1.6)
    assert effect.peer == "b"

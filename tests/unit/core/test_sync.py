"""Push policy: retry predicate, backoff budget, coalescing, bounds, sync=all."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, strategies as st

from mesh.core.routes import Route, Version
from mesh.core.sync import Failure, PushScheduler, RetryPolicy, is_transient

PEERS = [("b", ("10.0.0.2", 1)), ("c", ("10.0.0.3", 1))]


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

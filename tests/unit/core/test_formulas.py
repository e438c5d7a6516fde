"""Formulas checked against memberlist's own test tables (util_test.go,
suspicion_test.go, awareness_test.go)."""

from __future__ import annotations

import pytest

from mesh.core.awareness import Awareness
from mesh.core.broadcast import retransmit_limit
from mesh.core.exchanges import push_pull_scale
from mesh.core.suspicion import Suspicion, remaining_suspicion_time, suspicion_timeout


@pytest.mark.parametrize(
    ("n", "expected"),
    [(5, 1.0), (10, 1.0), (50, 1.698), (100, 2.0), (500, 2.698), (1000, 3.0)],
)
def test_suspicion_timeout_matches_memberlist(n: int, expected: float) -> None:
    # memberlist TestSuspicionTimeout: suspicionTimeout(3, n, 1s) / 3
    assert suspicion_timeout(3, n, 1.0) / 3 == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("n", "k", "elapsed", "expected"),
    [
        (0, 3, 0.0, 30.0),
        (1, 3, 2.0, 14.0),
        (2, 3, 3.0, 4.81),
        (3, 3, 4.0, -2.0),
        (4, 3, 5.0, -3.0),
        (5, 3, 10.0, -8.0),
    ],
)
def test_remaining_suspicion_time_matches_memberlist(
    n: int, k: int, elapsed: float, expected: float
) -> None:
    got = remaining_suspicion_time(n, k, elapsed, 2.0, 30.0)
    assert got == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("n", "expected"), [(0, 0), (1, 3), (99, 6), (100, 9)])
def test_retransmit_limit_matches_memberlist(n: int, expected: int) -> None:
    assert retransmit_limit(3, n) == expected


@pytest.mark.parametrize(
    ("lo", "hi", "mult"), [(0, 32, 1), (33, 64, 2), (65, 128, 3), (129, 256, 4)]
)
def test_push_pull_scale_matches_memberlist(lo: int, hi: int, mult: int) -> None:
    for n in range(lo, hi + 1):
        assert push_pull_scale(1.0, n) == mult


def test_awareness_matches_memberlist_table() -> None:
    cases = [
        (0, 0, 1.0), (-1, 0, 1.0), (-10, 0, 1.0), (1, 1, 2.0), (-1, 0, 1.0),
        (10, 7, 8.0), (-1, 6, 7.0), (-1, 5, 6.0), (-1, 4, 5.0), (-1, 3, 4.0),
        (-1, 2, 3.0), (-1, 1, 2.0), (-1, 0, 1.0), (-1, 0, 1.0),
    ]  # fmt: skip
    awareness = Awareness(8)
    for delta, score, timeout in cases:
        awareness.apply_delta(delta)
        assert awareness.score == score
        assert awareness.scale_timeout(1.0) == timeout


def test_suspicion_confirmations_shrink_timer_like_memberlist() -> None:
    # memberlist TestSuspicion_Timer: k=3, min 2 s, max 30 s.
    s = Suspicion("me", 3, 2.0, 30.0, now=0.0)
    assert s.deadline == 30.0
    assert s.confirm("me", 1.0) is False  # the accuser is not a confirmation
    assert s.confirm("a", 1.0) is True
    assert s.deadline == pytest.approx(16.0)  # 30 - 0.5 * 28
    assert s.confirm("a", 1.5) is False  # duplicates do not count
    assert s.confirm("b", 2.0) is True
    assert s.deadline == pytest.approx(7.81)
    assert s.confirm("c", 3.0) is True
    assert s.deadline == pytest.approx(3.0)  # min reached, elapsed beyond it
    assert s.confirm("d", 3.0) is False  # k reached


def test_suspicion_without_expected_confirmations_starts_at_min() -> None:
    assert Suspicion("me", 0, 2.0, 30.0, now=5.0).deadline == 7.0

"""Suspicion timers with Lifeguard's confirmations (memberlist suspicion.go).

Theory of operation: when a member is suspected, a timer starts at ``max``. Each
*independent* suspect message about it (a distinct sender) is a confirmation; with
``n`` confirmations out of ``k`` expected, the timeout becomes

    max - log(n + 1) / log(k + 1) * (max - min)    (floored at min, in whole ms)

so a suspicion many members agree on completes fast, while one node's bad network
alone waits the full ``max``. With ``k < 1`` the timer is ``min`` from the start.
The timer is pure data: ``deadline`` is an absolute time the owner compares with
``now``. It does not know which member it is about; membership owns that.
"""

from __future__ import annotations

import math

__all__ = ["Suspicion", "remaining_suspicion_time", "suspicion_timeout"]


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """Minimum suspicion timeout: ``mult * max(1, log10(max(1, n))) * interval``.

    Matches memberlist util.go::suspicionTimeout, including its millisecond
    truncation of the node scale.
    """
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return suspicion_mult * math.floor(node_scale * 1000) * interval / 1000


def remaining_suspicion_time(
    n: int, k: int, elapsed: float, min_timeout: float, max_timeout: float
) -> float:
    """Time left given ``n`` of ``k`` confirmations (suspicion.go)."""
    frac = math.log(n + 1.0) / math.log(k + 1.0)
    raw = max_timeout - frac * (max_timeout - min_timeout)
    timeout = math.floor(1000.0 * raw) / 1000.0
    timeout = max(timeout, min_timeout)
    return timeout - elapsed


class Suspicion:
    """One running suspicion of one member."""

    __slots__ = (
        "_confirmations",
        "deadline",
        "k",
        "max_timeout",
        "min_timeout",
        "n",
        "started_at",
    )

    def __init__(
        self,
        sender: str,
        k: int,
        min_timeout: float,
        max_timeout: float,
        now: float,
    ) -> None:
        self.k = k
        self.n = 0
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.started_at = now
        # The accuser does not count as a confirmation of itself.
        self._confirmations = {sender}
        timeout = max_timeout if k >= 1 else min_timeout
        self.deadline = now + timeout

    def confirm(self, sender: str, now: float) -> bool:
        """Record an independent confirmation; True if it was new.

        The caller re-gossips the suspect message only for new confirmations,
        as memberlist does, so confirmations spread without echo storms.
        """
        if self.n >= self.k or sender in self._confirmations:
            return False
        self._confirmations.add(sender)
        self.n += 1
        elapsed = now - self.started_at
        remaining = remaining_suspicion_time(
            self.n, self.k, elapsed, self.min_timeout, self.max_timeout
        )
        # Never later: the owner may have shortened it (refused TCP probe).
        self.deadline = min(self.deadline, now + max(remaining, 0.0))
        return True

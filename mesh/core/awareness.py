"""Lifeguard local health ("awareness").

Theory of operation: a node that misses acks may be the slow one, not its peers
(CPU starvation, a full socket buffer, a GC pause). Lifeguard keeps a small score:
+1 for a failed probe (plus one per expected nack that did not come), +1 when we
had to refute a suspicion about ourselves, -1 for a successful probe. The score
stretches our probe interval (``scale_timeout``), so an unhealthy node probes
less and gives peers more time before it accuses them. Matches memberlist
awareness.go; the score is clamped to ``[0, max_multiplier - 1]``.
"""

from __future__ import annotations

__all__ = ["Awareness"]


class Awareness:
    """The health score; 0 is healthy."""

    __slots__ = ("_max", "score")

    def __init__(self, max_multiplier: int) -> None:
        self._max = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        """Add ``delta`` and clamp (memberlist awareness.ApplyDelta)."""
        self.score = min(max(self.score + delta, 0), self._max - 1)

    def scale_timeout(self, timeout: float) -> float:
        """``timeout * (score + 1)`` (memberlist awareness.ScaleTimeout)."""
        return timeout * (self.score + 1)

"""The transmit-limited broadcast queue (memberlist queue.go), bounded.

Theory of operation: every membership change is queued once and then piggybacked on
outgoing datagrams (probes, acks, gossip rounds) until it has been transmitted
``retransmit_limit(mult, n)`` times; with fanout this reaches every member with high
probability (SWIM's infection-style dissemination). Entries with fewer transmits go
first, and among equals the newest; a leave is marked urgent and goes before all.
A new message about a member *invalidates* the queued one about the same member, so
the queue holds at most one entry per member. Unlike memberlist, the queue is
bounded: past ``max_size`` the entries transmitted most are dropped (they have
already reached the most members).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..messages import Message

__all__ = ["BroadcastQueue", "retransmit_limit"]


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """``mult * ceil(log10(n + 1))`` (memberlist util.go::retransmitLimit)."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


class _Entry:
    __slots__ = ("id", "key", "message", "size", "transmits", "urgent")

    def __init__(
        self, key: str, message: Message, size: int, id_: int, urgent: bool
    ) -> None:
        self.key = key
        self.message = message
        self.size = size
        self.id = id_
        self.transmits = 0
        self.urgent = urgent


class BroadcastQueue:
    """Messages waiting to be gossiped, at most one per member name."""

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._entries: dict[str, _Entry] = {}
        self._next_id = 0
        #: entries dropped because the queue was full (a metric)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def queue(
        self, key: str, message: Message, size: int, *, urgent: bool = False
    ) -> None:
        """Queue ``message`` about member ``key``, replacing any older one."""
        self._next_id += 1
        self._entries.pop(key, None)
        self._entries[key] = _Entry(key, message, size, self._next_id, urgent)
        if len(self._entries) > self._max_size:
            # Drop the entry transmitted most (oldest among equals); it has
            # already reached the most members.
            victim = max(self._entries.values(), key=lambda e: (e.transmits, -e.id))
            del self._entries[victim.key]
            self.dropped += 1

    def get(
        self,
        budget: int,
        limit: int,
        size_of_overhead: Callable[[int], int] | None = None,
    ) -> list[Message]:
        """Take messages whose sizes fit in ``budget`` bytes, counting a transmit
        for each; entries reaching ``limit`` transmits are removed.

        Fewest transmits first, newest first among equals; urgent first of all.
        """
        if not self._entries or budget <= 0:
            return []
        order = sorted(
            self._entries.values(), key=lambda e: (not e.urgent, e.transmits, -e.id)
        )
        out: list[Message] = []
        used = 0
        for entry in order:
            if used + entry.size > budget:
                continue
            used += entry.size
            out.append(entry.message)
            entry.transmits += 1
            if entry.transmits >= limit:
                del self._entries[entry.key]
        return out

    def pending_for(self, key: str) -> bool:
        """True while a message about ``key`` is still queued."""
        return key in self._entries

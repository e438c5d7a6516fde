"""Per-peer push policy: coalescing queues, one batch in flight, retry budget.

Theory of operation. Every local write is queued for every live peer. Each peer
has its own bounded queue that *coalesces by key*: a newer version of a key
replaces the pending one, so a burst of writes to a key costs one delta. While a
batch is in flight to a peer, new writes wait in its queue; when the batch ends,
everything pending goes out as the next batch (up to ``push_batch_max``). So a
quiet mesh pushes each write at once, and a busy one sends a few large batches
instead of many small requests, with at most one request in flight per peer.

Request rate: a peer's batches draw on a token bucket of ``burst`` tokens
refilled one per ``min_interval``. A write after a quiet spell (or a few in a
row) goes out at once, with no added latency; a sustained stream of writes is
gathered into at most one batch per ``min_interval`` per peer. That bounds the
HTTP requests (each costs CPU on both ends whatever its size) whatever the write
rate: under load the batches grow instead of the request count.

A batch has a deadline (``push_deadline`` after it was handed out). The shell
retries it only on transient failures, sleeping per :class:`RetryPolicy`, whose
total sleep is strictly below the per-request timeout. When a batch fails for
good, passes its deadline, the peer's queue overflows, or the peer is declared
dead or leaves, its pending deltas are dropped, counted by reason, and the peer
is marked *needs repair*: anti-entropy brings it up to date instead. Memory
stays bounded whatever a peer does: ``push_queue_max`` keys per live peer.

Low-water marks make ``sync=all`` cheap: for each peer, every change with a
table index at or below ``low_water`` has been acknowledged (or superseded by an
acknowledged newer version of the same key) unless the peer dropped something.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from operator import itemgetter

import attrs

from ..messages import Address
from .routes import Route

__all__ = [
    "DROP_REASONS",
    "Batch",
    "Failure",
    "PushScheduler",
    "RetryPolicy",
    "SyncTicket",
    "is_transient",
    "route_size",
]


#: why deltas for a peer can be dropped (``stats["dropped_<reason>"]``): its
#: queue overflowed; the shell gave its batch up (past the deadline, refused
#: with a permanent status, transient failures outlasted the retries); the
#: peer moved to another address, died, left or was reaped
DROP_REASONS = (
    "overflow",
    "deadline",
    "rejected",
    "failed",
    "peer_moved",
    "peer_dead",
    "peer_left",
    "peer_reap",
)


class Failure(enum.Enum):
    """How one push attempt failed, as the shell maps it from httpx."""

    CONNECT = "connect"  # refused, reset, DNS: the request never got there
    TIMEOUT = "timeout"  # no answer within the per-request timeout
    STATUS = "status"  # an HTTP error status (see ``status``)
    PROTOCOL = "protocol"  # a malformed answer


def is_transient(failure: Failure, status: int | None = None) -> bool:
    """Retry connect errors, timeouts, 429 and 5xx; never other 4xx.

    A timeout is transient: the peer may be briefly slow (a GC pause, a
    burst). Treating it as permanent would give a slow peer one attempt only.
    """
    if failure in (Failure.CONNECT, Failure.TIMEOUT):
        return True
    if failure is Failure.STATUS and status is not None:
        return status == 429 or 500 <= status <= 599
    return False


@attrs.frozen
class RetryPolicy:
    """Exponential backoff with jitter under a total sleep budget.

    Delay ``i`` is ``min(cap, base * 2**i) * U(0.5, 1)``; retries stop at
    ``max_retries`` or before the sum of delays would exceed ``budget``, which
    the config keeps strictly below ``request_timeout``: the retries of one
    batch never sleep longer than one request may take.
    """

    request_timeout: float
    budget: float
    base: float
    cap: float
    max_retries: int

    def delays(self, rng: random.Random) -> list[float]:
        """The sleep before each retry of one batch."""
        out: list[float] = []
        total = 0.0
        for attempt in range(self.max_retries):
            delay = min(self.cap, self.base * 2**attempt) * (0.5 + rng.random() / 2)
            if total + delay > self.budget:
                break
            out.append(delay)
            total += delay
        return out


@attrs.frozen
class Batch:
    """Deltas handed to the shell for one peer; report with ``push_done``."""

    id: int
    peer: str
    addr: Address
    routes: tuple[Route, ...]
    min_index: int
    deadline: float


class _Peer:
    __slots__ = (
        "addr",
        "batch",
        "drops",
        "name",
        "pending",
        "serial",
        "tokens",
        "tokens_at",
    )

    def __init__(self, name: str, addr: Address, serial: int) -> None:
        self.name = name
        self.addr = addr
        self.serial = serial
        # key -> (table index, route), kept in index order: re-insert on update
        # key -> (write index, route, size bound): sized once, not per peer
        self.pending: dict[str, tuple[int, Route, int]] = {}
        self.batch: Batch | None = None
        self.drops = 0
        # token bucket of the request rate: tokens at time tokens_at (None:
        # full, a new peer's first batches go out at once); an expedited batch
        # may take it below zero, down to -burst
        self.tokens: float | None = None
        self.tokens_at = 0.0

    def refill(self, now: float, burst: int, interval: float) -> float:
        """Tokens available at ``now``."""
        if self.tokens is None or interval <= 0:
            return float(burst)
        return min(float(burst), self.tokens + (now - self.tokens_at) / interval)


_INDEX = itemgetter(0)
_ROUTE = itemgetter(1)
_SIZE = itemgetter(2)


def route_size(route: Route) -> int:
    """Upper bound of a route's encoded size: its strings' UTF-8 bytes (exact
    for ASCII, the common case; 4 per character otherwise) plus msgpack's
    headers (<= 5 bytes per string, 9 per integer)."""
    size = 48 + _text_size(route.key) + _text_size(route.target)
    size += _text_size(route.version.origin)
    for k, v in route.meta.items():
        size += _text_size(k) + _text_size(v) + 10
    return size


def _text_size(text: str) -> int:
    return len(text) if text.isascii() else 4 * len(text)


@attrs.frozen
class SyncTicket:
    """What ``sync=all`` waits on: a write's index and each peer's queue state."""

    index: int
    peers: dict[str, tuple[int, int]]  # name -> (queue serial, drops)


class PushScheduler:
    """Every peer's push queue."""

    def __init__(
        self,
        *,
        queue_max: int,
        batch_max: int,
        deadline: float,
        min_interval: float = 0.0,
        batch_max_bytes: int = 4 * 1024 * 1024,
        burst: int = 1,
    ) -> None:
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._deadline = deadline
        self._min_interval = min_interval
        self._burst = max(1, burst)
        self._batch_max_bytes = batch_max_bytes
        self._peers: dict[str, _Peer] = {}
        self._ready: set[str] = set()
        self._serial = 0
        self._batch_id = 0
        #: peers that lost deltas and need anti-entropy repair
        self.needs_repair: set[str] = set()
        #: counters exported as metrics
        self.stats: Counter[str] = Counter()

    def __contains__(self, peer: str) -> bool:
        return peer in self._peers

    def depth(self) -> int:
        """Deltas waiting, over all peers (in-flight batches excluded)."""
        return sum(len(p.pending) for p in self._peers.values())

    def in_flight(self) -> int:
        return sum(1 for p in self._peers.values() if p.batch is not None)

    def pushing(self, peer_name: str) -> bool:
        """Changes for ``peer_name`` are queued or in flight."""
        peer = self._peers.get(peer_name)
        return peer is not None and (bool(peer.pending) or peer.batch is not None)

    def enqueue(
        self, route: Route, index: int, peers: Iterable[tuple[str, Address]]
    ) -> None:
        """Queue a change for each peer, coalescing by key."""
        self.enqueue_many([(index, route)], peers)

    def enqueue_many(
        self,
        changes: Sequence[tuple[int, Route]],
        peers: Iterable[tuple[str, Address]],
    ) -> None:
        """Queue ``(index, route)`` changes, in order, for each peer: what a
        batch write does once instead of once per item."""
        if not changes:
            return
        stats = self.stats
        sized = [(index, route, route_size(route)) for index, route in changes]
        keys = [route.key for _, route in changes]
        distinct = len(set(keys)) == len(keys)
        for name, addr in peers:
            peer = self._peers.get(name)
            if peer is None or peer.addr != addr:
                if peer is not None:
                    self.forget(name, "peer_moved")
                self._serial += 1
                peer = self._peers[name] = _Peer(name, addr, self._serial)
            pending = peer.pending
            if (
                distinct
                and len(pending) + len(keys) <= self._queue_max
                and pending.keys().isdisjoint(keys)
            ):
                # nothing to coalesce, no overflow: what the loop below does,
                # as one dict update (per route and peer of every batch call)
                pending.update(zip(keys, sized, strict=True))
                if peer.batch is None:
                    self._ready.add(name)
                continue
            for entry in sized:
                key = entry[1].key
                if key in pending:
                    del pending[key]
                    stats["coalesced"] += 1
                pending[key] = entry
                if len(pending) > self._queue_max:
                    self._drop_pending(peer, "overflow")
            if pending and peer.batch is None:
                self._ready.add(name)

    def take_ready(self, now: float, *, expedite: bool = False) -> list[Batch]:
        """A batch for every peer with work, nothing in flight, and a token in
        its bucket (``burst`` tokens, one more per ``min_interval``).

        The bucket only bites under load: writes after a quiet spell go out at
        once, while a stream of writes is gathered into one batch per interval
        per peer, which bounds the request rate (and the CPU that HTTP costs
        per request) whatever the write rate.

        ``expedite``: a caller waits for what is pending (``sync=all``), so
        peers with an empty bucket get their batch now too; it still draws a
        token (the bucket may go below zero), so the rate stays bounded.
        """
        if not self._ready:
            return []
        out: list[Batch] = []
        later: set[str] = set()
        for name in self._ready:
            peer = self._peers.get(name)
            if peer is None or peer.batch is not None or not peer.pending:
                continue
            tokens = peer.refill(now, self._burst, self._min_interval)
            # (a tick at exactly next_ready_at must pass: allow rounding)
            if tokens < 1.0 - 1e-9 and not expedite:
                later.add(name)
                continue
            pending = peer.pending
            items: list[tuple[int, Route, int]]
            if (
                len(pending) <= self._batch_max
                and sum(map(_SIZE, pending.values())) <= self._batch_max_bytes
            ):
                # all of it fits: what the loop below takes, without a pop
                # per route (every route of a batch call, for every peer)
                items = list(pending.values())
                pending.clear()
            else:
                items = []
                size = 0
                for key in list(pending)[: self._batch_max]:
                    cost = pending[key][2]
                    if items and size + cost > self._batch_max_bytes:
                        break
                    items.append(pending.pop(key))
                    size += cost
            self._batch_id += 1
            batch = Batch(
                self._batch_id,
                name,
                peer.addr,
                tuple(map(_ROUTE, items)),
                min(map(_INDEX, items)),
                now + self._deadline,
            )
            peer.batch = batch
            peer.tokens = max(tokens - 1.0, -float(self._burst))
            peer.tokens_at = now
            self.stats["batches"] += 1
            out.append(batch)
        self._ready = later
        return out

    @property
    def held(self) -> bool:
        """True while some peer waits for a token (``min_interval``)."""
        return bool(self._ready)

    def next_ready_at(self) -> float | None:
        """When a peer held back by its token bucket may get its next batch."""
        times = [
            p.tokens_at + (1.0 - p.tokens) * self._min_interval
            for name in self._ready
            if (p := self._peers.get(name)) is not None
            and p.batch is None
            and p.tokens is not None
        ]
        return min(times) if times else None

    def done(
        self, peer_name: str, batch_id: int, ok: bool, reason: str = "failed"
    ) -> None:
        """The shell finished a batch: delivered, or given up with ``reason``."""
        peer = self._peers.get(peer_name)
        if peer is None or peer.batch is None or peer.batch.id != batch_id:
            return
        batch, peer.batch = peer.batch, None
        if ok:
            self.stats["delivered"] += len(batch.routes)
        else:
            self._count_drop(peer, reason, len(batch.routes))
        if peer.pending:
            self._ready.add(peer_name)

    def forget(self, peer_name: str, reason: str) -> None:
        """The peer is gone (dead, left, moved): drop everything for it."""
        peer = self._peers.pop(peer_name, None)
        if peer is None:
            return
        lost = len(peer.pending) + (len(peer.batch.routes) if peer.batch else 0)
        if lost:
            self._count_drop(peer, reason, lost)
        self._ready.discard(peer_name)

    def low_water(self, peer_name: str, table_index: int) -> int:
        """Every change with index <= this was delivered to the peer (or is
        superseded by a delivered one), unless it dropped some."""
        peer = self._peers.get(peer_name)
        if peer is None:
            return table_index
        marks = [table_index]
        if peer.pending:
            marks.append(next(iter(peer.pending.values()))[0] - 1)
        if peer.batch is not None:
            marks.append(peer.batch.min_index - 1)
        return min(marks)

    def ticket(self, index: int, peers: Iterable[str]) -> SyncTicket:
        state = {}
        for name in peers:
            peer = self._peers.get(name)
            state[name] = (peer.serial, peer.drops) if peer else (-1, 0)
        return SyncTicket(index, state)

    def acked(
        self, ticket: SyncTicket, table_index: int
    ) -> tuple[list[str], list[str]]:
        """Split the ticket's peers into acknowledged and pending."""
        acked: list[str] = []
        pending: list[str] = []
        for name, (serial, drops) in sorted(ticket.peers.items()):
            peer = self._peers.get(name)
            ok = (
                peer is not None
                and peer.serial == serial
                and peer.drops == drops
                and self.low_water(name, table_index) >= ticket.index
            )
            (acked if ok else pending).append(name)
        return acked, pending

    def _drop_pending(self, peer: _Peer, reason: str) -> None:
        lost = len(peer.pending)
        peer.pending.clear()
        self._ready.discard(peer.name)
        self._count_drop(peer, reason, lost)

    def _count_drop(self, peer: _Peer, reason: str, count: int) -> None:
        peer.drops += 1
        self.stats[f"dropped_{reason}"] += count
        self.needs_repair.add(peer.name)

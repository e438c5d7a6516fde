"""Anti-entropy: reconcile the route table with one peer at a time, sans-IO.

Theory of operation (docs/antientropy.md has the full design). Every
``antientropy_interval`` a node opens a *round* with one live member (members
the pusher marked needs-repair first):

1. ``AeOpen``: our digest's symbol 0 (count, XOR, checksum of every entry) and
   table size. Equal summaries mean equal tables: the peer answers ``same`` and
   the round is over (one small round trip: the idle cost).
2. Otherwise the peer answers with the first ``m`` coded symbols of its digest
   (``m`` grows with the size difference). We subtract them from ours and peel
   the difference; a prefix too short to peel is extended with ``AeMore``
   (rateless: the symbols already received still count). Past
   ``antientropy_max_symbols`` we fall back to pulling the peer's whole table
   in chunks.
3. ``AeRepair``: the entries only we hold (the peer keeps whichever version is
   newer) and the elements only it holds; it answers with those entries. Both
   sides end with the newer version of every differing key: push-pull.

A joining (or restarted) node first pulls the whole table from a live member in
bounded ``AeChunk`` pages and reports itself caught up only then.

Tombstones are collected ``route_tombstone_ttl`` after their delete. A caught-up
node refuses entries older than that horizon for keys it lacks (they may be
writes whose delete it has forgotten) and tells the sender, who forgets the
entry too if it is below its own horizon: a delete is never undone, by a stale
push, a peer that missed it, or one away longer than the tombstone lifetime.

Rounds run one at a time; the peer side is stateless. Every request and reply
is bounded (symbols, routes per repair, routes per chunk), so a round costs
what differs, and a hostile peer can ask for no more than those bounds.
"""

from __future__ import annotations

import enum
import math
import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence

import attrs

from ..config import Config
from ..messages import Address
from .digest import Symbol, estimate_difference, peel
from .routes import OutcomeStatus, Route, RouteTable, Version
from .sync import route_size

__all__ = [
    "AeChunk",
    "AeChunkReply",
    "AeMore",
    "AeOpen",
    "AeRepair",
    "AeRepaired",
    "AeReply",
    "AeRequest",
    "AeSymbols",
    "AntiEntropy",
    "Reconcile",
    "SymbolsStatus",
]


@attrs.frozen
class AeOpen:
    """Round trip 1: our summary (symbol 0) and table size."""

    sender: str
    summary: Symbol
    size: int


@attrs.frozen
class AeMore:
    """More symbols ``[start, stop)``, of the digest at table ``index``."""

    sender: str
    index: int
    start: int
    stop: int


class SymbolsStatus(enum.Enum):
    SAME = 0  # summaries equal: nothing to do
    SYMBOLS = 1  # here are symbols
    BUSY = 2  # the peer is still bootstrapping: ask someone else


@attrs.frozen
class AeSymbols:
    """Reply to :class:`AeOpen` / :class:`AeMore`. ``start`` is 0 when the
    peer's table changed since ``index`` the initiator held (start over)."""

    status: SymbolsStatus
    index: int = 0
    start: int = 0
    size: int = 0
    symbols: tuple[Symbol, ...] = ()


#: an entry a peer refused as older than its horizon: (key, version)
Drop = tuple[str, Version]


@attrs.frozen
class AeRepair:
    """Entries only we hold, elements only the peer holds, and entries of the
    peer's we refused (``drops``)."""

    sender: str
    routes: tuple[Route, ...] = ()
    want: tuple[int, ...] = ()
    drops: tuple[Drop, ...] = ()


@attrs.frozen
class AeRepaired:
    """The wanted entries, and those of the request the peer refused."""

    routes: tuple[Route, ...] = ()
    drops: tuple[Drop, ...] = ()


@attrs.frozen
class AeChunk:
    """A page of the peer's whole table: keys after ``after``, in key order."""

    sender: str
    after: str
    limit: int


@attrs.frozen
class AeChunkReply:
    routes: tuple[Route, ...]
    more: bool
    size: int  # the peer's entries, tombstones included (how far behind we are)


AeRequest = AeOpen | AeMore | AeRepair | AeChunk
AeReply = AeSymbols | AeRepaired | AeChunkReply


@attrs.frozen
class Reconcile:
    """Send ``request`` to ``peer`` (HTTP POST on the mesh port, within
    ``antientropy_timeout``) and report the reply, or None on any failure, with
    ``NodeCore.reconcile_done(token, reply, now, wall)``."""

    token: int
    peer: str
    addr: Address
    request: AeRequest


class _Kind(enum.Enum):
    ROUND = "round"
    BOOTSTRAP = "bootstrap"
    MERGE = "merge"  # a node that was alone meets members: take their table
    FALLBACK = "fallback"


#: round outcomes after which our table holds everything the peer held
_RECONCILED = frozenset({"same", "repaired", "merged"})


class _Stage(enum.Enum):
    OPEN = 1
    MORE = 2
    REPAIR = 3
    DROPS = 4
    CHUNK = 5


@attrs.define
class _Round:
    kind: _Kind
    peer: str
    addr: Address
    token: int = 0
    stage: _Stage = _Stage.OPEN
    index: int = 0
    theirs: list[Symbol] = attrs.Factory(list)
    #: entries the peer sent this round that our table had no room for
    full: int = 0
    #: a chunked pull paused to send a chunk's drops: the key to resume after
    resume: str | None = None
    #: the difference found was more than one repair carries: the rest waits
    #: for the next round
    partial: bool = False
    #: opened before a stall we noticed since: its replies may predate what
    #: we missed, so it cannot end the resync
    predates_stall: bool = False


class AntiEntropy:
    """One node's anti-entropy: its rounds as initiator, and the peer side.

    Args:
        config: the node's configuration.
        table: the node's route table.
        name: our node name.
        repair: peers marked needs-repair (the push scheduler's set); one is
            chosen first, and unmarked once reconciled.
        caught_up: False for a node that must bootstrap before serving rounds.
        streaming: whether routes stream between us and a peer (the node:
            pushes to it queued or in flight, or one from it within
            ``antientropy_quiet``). A round we open with such a peer finds
            them as differences and repairs what the pushes are delivering
            (under batch load, hundreds of routes a round, decoded one by
            one, or past max_symbols a full transfer); so it waits for a
            later interval, unless the peer is marked for repair (a push to
            it was dropped). A peer's round with us is served as ever:
            refusing it would also hold back the repair that peer may need
            from us.
    """

    def __init__(
        self,
        config: Config,
        table: RouteTable,
        *,
        name: str,
        repair: set[str],
        rng: random.Random,
        now: float,
        caught_up: bool,
        streaming: Callable[[str], bool] = lambda peer: False,
    ) -> None:
        self.config = config
        self.streaming = streaming
        self.table = table
        self.name = name
        self.repair = repair
        self.rng = rng
        self.caught_up = caught_up
        #: entries we know we lack (bootstrap: the source's size minus what we
        #: received; rounds: the last difference found, until repaired; and
        #: what the last round brought that the table had no room for)
        self.behind = 0
        self.source = ""  # the peer we bootstrap from (readiness reasons)
        #: seconds of the last stall that may have cost us pushes, until a
        #: round with a member has reconciled us since (None: no such stall)
        self.stalled: float | None = None
        # Caught up only because nobody else was alive (a first node, or one
        # cut off): its table is not the mesh's, so the first member it meets
        # is merged in whole, taking everything, before it may refuse old
        # entries. Without this a first node restarted empty would be
        # "caught up" and refuse (and have peers drop) every route older than
        # the tombstone lifetime.
        self.alone = caught_up
        self.stats: Counter[str] = Counter()
        self._round: _Round | None = None
        # rounds deferred in a row for streaming (see antientropy_max_deferred)
        self._deferred = 0
        self._tokens = 0
        # bootstrap progress kept across sources: last key and entries pulled
        self._pulled_after = ""
        self._pulled = 0
        self._next_at = now + config.antientropy_interval * rng.random()
        self._out: list[Reconcile] = []

    # --- timers ---

    def next_deadline(self) -> float | None:
        return None if self._round is not None else self._next_at

    def kick(self, now: float) -> None:
        """Start soon (we just joined: bootstrap without waiting an interval)."""
        self._next_at = min(self._next_at, now)

    def stall(self, seconds: float, now: float) -> None:
        """Our process was frozen for ``seconds``, longer than a peer keeps a
        push for us (``push_deadline``): writes made meanwhile were dropped for
        us, and deletes may even have been collected. Until a round with a
        member reconciles us, the table is behind the mesh, so say so
        (readiness) and open that round now rather than an interval later."""
        if not self.caught_up:
            return  # the bootstrap under way covers it
        self.stalled = max(seconds, self.stalled or 0.0)
        self.stats["stall_resyncs"] += 1
        if self._round is not None:
            self._round.predates_stall = True
        self.kick(now)

    def horizon(self, wall: float) -> int | None:
        """Entries written before this (ms) are refused for unknown keys; None
        while bootstrapping or merging (take everything).

        Back from a stall, until a round has reconciled us, the time stalled
        does not count towards the tombstone lifetime: a write made while we
        were frozen may be older than the TTL by now, yet we cannot have seen
        it deleted. Refused, it would look expired to us and we would have
        every member that holds it drop it (audit 14: a write answered 200,
        lost mesh-wide, after a member was stopped longer than the TTL)."""
        h = self._drop_horizon(wall)
        if h is not None and self.stalled is not None:
            h -= int(self.stalled * 1000)
        return h

    def _drop_horizon(self, wall: float) -> int | None:
        """:meth:`horizon` without the stall allowance: a peer's drop is for an
        entry *we* hold, and a stall is no reason to hold on to it.

        None while we are alone too, not only during the merge round that
        ends it: a member's repair may reach us before our merge starts, and
        judged by our horizon, its writes made while we were cut off looked
        expired, and we had it drop them (audit 16: a write held by 4 of 5
        members, answered 200, lost mesh-wide)."""
        r = self._round
        if (
            not self.caught_up
            or self.alone
            or (r is not None and r.kind is _Kind.MERGE)
        ):
            return None
        return self._horizon_ms(wall)

    def _horizon_ms(self, wall: float) -> int:
        return int((wall - self.config.route_tombstone_ttl) * 1000)

    def due(self, now: float) -> bool:
        return self._round is None and now >= self._next_at

    def tick(
        self,
        now: float,
        wall: float | None,
        pick: Callable[[Collection[str]], tuple[str, Address] | None],
        *,
        joined: bool,
    ) -> list[Reconcile]:
        """Collect old tombstones and open a round when one is due.

        ``pick(marked)`` names an alive member, one of ``marked`` (the peers
        marked needs-repair) when any is alive, or None when nobody is: the
        caller samples its table rather than listing every member, so a tick
        costs O(1) in a 1,000-member mesh."""
        if not self.due(now):
            return []
        self._next_at = now + self.config.antientropy_interval
        if wall is not None and self.caught_up:
            self.stats["collected"] += self.table.collect(self._horizon_ms(wall))
        if not joined:
            return []
        peer = pick(self.repair)
        if peer is None:
            if not self.caught_up:
                # Joined, and nobody alive to catch up from: we are the mesh.
                self._caught_up("alone")
            self.alone = True
            self.stalled = None  # nobody to be behind
            return []
        name, addr = peer
        if not self.caught_up:
            self.source = name
            # Resume after the last key received (pages are in key order, so
            # any member can continue another's): a source lost at 67% does
            # not cost the first 67% again.
            r = _Round(_Kind.BOOTSTRAP, name, addr)
            self._start(r, self._chunk(self._pulled_after))
        elif self.alone:
            self.alone = False
            self._start(_Round(_Kind.MERGE, name, addr), self._chunk(""))
        elif self.table.pending_folds() > self.config.antientropy_fold_batch:
            self.stats["rounds_deferred"] += 1  # our digest is still folding
        elif (
            name not in self.repair
            and self._deferred < self.config.antientropy_max_deferred
            and self.streaming(name)
        ):
            self.stats["rounds_deferred"] += 1  # what differs is on its way
            self._deferred += 1
        else:
            self._deferred = 0
            table = self.table
            self._start(
                _Round(_Kind.ROUND, name, addr),
                AeOpen(self.name, table.summary(), len_all(table)),
            )
        return self._take()

    # --- initiator ---

    def done(
        self, token: int, reply: AeReply | None, now: float, wall: float
    ) -> list[Reconcile]:
        """The reply to our last request (None: it failed)."""
        r = self._round
        if r is None or r.token != token:
            return []
        if reply is None:
            self._end(r, "failed")
            if r.kind is _Kind.MERGE:
                self.alone = True  # merge with the next member we meet
            if r.kind is not _Kind.ROUND:
                self._next_at = now + min(1.0, self.config.antientropy_interval)
            return []
        try:
            self._advance(r, reply, wall)
        except _UnexpectedReplyError:
            self.stats["reply_unexpected"] += 1
            self._end(r, "failed")
        return self._take()

    def _advance(self, r: _Round, reply: AeReply, wall: float) -> None:
        if r.stage in (_Stage.OPEN, _Stage.MORE):
            if not isinstance(reply, AeSymbols):
                raise _UnexpectedReplyError
            self._on_symbols(r, reply)
        elif r.stage is _Stage.REPAIR:
            if not isinstance(reply, AeRepaired):
                raise _UnexpectedReplyError
            self._on_repaired(r, reply, wall)
        elif r.stage is _Stage.DROPS:
            if r.resume is None:
                self._end(r, "repaired")
            else:  # a chunked pull goes on after telling the peer a chunk's drops
                after, r.resume = r.resume, None
                self._send(r, _Stage.CHUNK, self._chunk(after))
        else:
            if not isinstance(reply, AeChunkReply):
                raise _UnexpectedReplyError
            self._on_chunk(r, reply, wall)

    def _on_symbols(self, r: _Round, reply: AeSymbols) -> None:
        if reply.status is SymbolsStatus.SAME:
            self.behind = 0
            self.repair.discard(r.peer)
            self._end(r, "same")
            return
        if reply.status is SymbolsStatus.BUSY:
            self._end(r, "busy")
            return
        if reply.start == 0:
            r.theirs = list(reply.symbols)
        elif reply.start == len(r.theirs) and reply.index == r.index:
            r.theirs.extend(reply.symbols)
        else:
            raise _UnexpectedReplyError
        r.index = reply.index
        self.stats["symbols_received"] += len(reply.symbols)
        m = len(r.theirs)
        if m == 0:
            raise _UnexpectedReplyError
        ours = self.table.symbols(0, m)
        result = peel(ours, r.theirs)
        limit = self.config.antientropy_max_symbols
        if result is None:
            if m >= limit:
                self.stats["fallbacks"] += 1
                r.kind = _Kind.FALLBACK
                self._send(r, _Stage.CHUNK, self._chunk(""))
                return
            # Ask for enough to peel the estimated difference (1.6 symbols per
            # element, with slack) rather than doubling blindly: a large
            # difference then costs two or three round trips, not log2 of it.
            estimate = estimate_difference(ours, r.theirs)
            needed = 8 * m if estimate is None else math.ceil(1.6 * estimate) + 16
            stop = min(limit, max(2 * m, needed))
            self._send(r, _Stage.MORE, AeMore(self.name, r.index, m, stop))
            return
        mine, other = result
        self.behind = len(other)
        cap = self.config.antientropy_repair_max
        routes, r.partial = self._entries(mine, cap)  # the rest: next round
        want = tuple(sorted(other)[:cap])
        r.partial = r.partial or len(other) > cap
        if not routes and not want:
            self.repair.discard(r.peer)
            self._end(r, "same")
            return
        self.stats["routes_sent"] += len(routes)
        self.stats["routes_wanted"] += len(want)
        self._send(r, _Stage.REPAIR, AeRepair(self.name, tuple(routes), want))

    def _on_repaired(self, r: _Round, reply: AeRepaired, wall: float) -> None:
        refused = self._apply(r, reply.routes, self.horizon(wall), wall)
        self._honour(reply.drops, wall)
        self.behind = r.full  # refused for lack of room: still missing
        self.repair.discard(r.peer)
        if refused:
            # Rare: the peer holds entries we know to be gone. Tell it.
            self._send(r, _Stage.DROPS, AeRepair(self.name, drops=tuple(refused)))
        else:
            self._end(r, "repaired")

    def _on_chunk(self, r: _Round, reply: AeChunkReply, wall: float) -> None:
        cap = self.config.antientropy_chunk_routes
        if len(reply.routes) > cap:
            raise _UnexpectedReplyError
        bootstrap = r.kind is _Kind.BOOTSTRAP
        horizon = None if bootstrap else self.horizon(wall)  # merge: None too
        full = r.full
        refused = self._apply(r, reply.routes, horizon, wall)
        self.stats["chunks"] += 1
        if bootstrap:
            # what the table had no room for is not pulled: still behind
            self._pulled += len(reply.routes) - (r.full - full)
            if reply.routes:
                self._pulled_after = reply.routes[-1].key
            self.behind = max(0, reply.size - self._pulled)
        if reply.more and reply.routes:
            if refused:
                # Tell the peer now, a chunk's worth (within its bounds), not
                # the last chunk's only at the end: a member back after more
                # than a tombstone lifetime forgets every deleted route it
                # still holds in this one round (audit 8: ~1,000 a round).
                r.resume = reply.routes[-1].key
                self._send(r, _Stage.DROPS, AeRepair(self.name, drops=tuple(refused)))
            else:
                self._send(r, _Stage.CHUNK, self._chunk(reply.routes[-1].key))
            return
        if bootstrap:
            self._caught_up(r.peer)
            self.behind = r.full
            self._end(r, "bootstrapped")
        elif r.kind is _Kind.MERGE:
            self._end(r, "merged")
        else:
            self.behind = r.full
            if refused:
                drops = AeRepair(self.name, drops=tuple(refused))
                self._send(r, _Stage.DROPS, drops)
            else:
                self.repair.discard(r.peer)
                self._end(r, "repaired")

    def _caught_up(self, source: str) -> None:
        self.caught_up = True
        self.behind = 0
        self.stats["caught_up"] += 1
        self.source = source

    def _chunk(self, after: str) -> AeChunk:
        return AeChunk(self.name, after, self.config.antientropy_chunk_routes)

    def _start(self, r: _Round, request: AeRequest) -> None:
        self._round = r
        self.stats[f"started_{r.kind.value}"] += 1
        self._send(
            r, _Stage.CHUNK if isinstance(request, AeChunk) else r.stage, request
        )

    def _send(self, r: _Round, stage: _Stage, request: AeRequest) -> None:
        self._tokens += 1
        r.token = self._tokens
        r.stage = stage
        self._out.append(Reconcile(r.token, r.peer, r.addr, request))

    def _end(self, r: _Round, outcome: str) -> None:
        self._round = None
        self.stats[f"rounds_{outcome}"] += 1
        if outcome in _RECONCILED and not (r.partial or r.predates_stall):
            self.stalled = None

    def _take(self) -> list[Reconcile]:
        out, self._out = self._out, []
        return out

    # --- both sides ---

    def _apply(
        self,
        r: _Round | None,
        routes: Sequence[Route],
        horizon: int | None,
        wall: float,
    ) -> list[Drop]:
        """Apply entries from a peer; returns those refused as expired. Those
        refused for lack of room are counted, in the round ``r`` too (we
        opened it) for ``behind``."""
        wall_ms = int(wall * 1000)
        refused: list[Drop] = []
        apply = self.table.apply
        full = 0
        for route in routes:
            status = apply(route, wall_ms=wall_ms, horizon_ms=horizon).status
            if status is OutcomeStatus.APPLIED:
                self.stats["routes_repaired"] += 1
            elif status is OutcomeStatus.EXPIRED:
                self.stats["routes_expired"] += 1
                if not route.deleted:
                    refused.append((route.key, route.version))
            elif status is OutcomeStatus.FULL:
                full += 1
        self.stats["routes_full"] += full
        if r is not None:
            r.full += full
        return refused

    def _honour(self, drops: Sequence[Drop], wall: float) -> None:
        """Forget our entries a peer refused, if below our horizon too."""
        horizon = self._drop_horizon(wall)
        if horizon is None:
            return
        for key, version in drops[: self.config.antientropy_repair_max]:
            if self.table.drop(key, version, horizon):
                self.stats["routes_dropped"] += 1

    # --- peer side (stateless) ---

    def handle(self, request: AeRequest, wall: float) -> AeReply:
        """Answer a peer's request; bounded whatever it asks."""
        cfg = self.config
        table = self.table
        self.stats[f"served_{type(request).__name__}"] += 1
        folding = table.pending_folds() > cfg.antientropy_fold_batch
        if isinstance(request, AeOpen):
            if not self.caught_up or folding:
                return AeSymbols(SymbolsStatus.BUSY)
            if table.summary() == request.summary:
                return AeSymbols(SymbolsStatus.SAME)
            gap = abs(len_all(table) - request.size)
            m = min(
                cfg.antientropy_max_symbols,
                cfg.antientropy_min_symbols + math.ceil(1.5 * gap),
            )
            return self._symbols(0, m)
        if isinstance(request, AeMore):
            if not self.caught_up or folding:
                return AeSymbols(SymbolsStatus.BUSY)
            start = request.start if request.index == table.index else 0
            stop = min(request.stop, cfg.antientropy_max_symbols)
            return self._symbols(min(start, stop), stop)
        if isinstance(request, AeRepair):
            cap = cfg.antientropy_repair_max
            refused = self._apply(None, request.routes[:cap], self.horizon(wall), wall)
            self._honour(request.drops, wall)
            # what does not fit, the initiator's next round asks for again
            routes, _ = self._entries(request.want[:cap], cap)
            self.stats["routes_served"] += len(routes)
            return AeRepaired(tuple(routes), tuple(refused))
        limit = max(1, min(request.limit, cfg.antientropy_chunk_routes))
        routes, more = table.chunk(request.after, limit)
        budget = _Budget(cfg.antientropy_max_bytes)
        for i, route in enumerate(routes):
            if not budget.take(route):
                # The next chunk starts after the last key sent.
                routes, more = routes[:i], True
                break
        self.stats["routes_served"] += len(routes)
        return AeChunkReply(tuple(routes), more, len_all(table))

    def _entries(self, elements: Iterable[int], cap: int) -> tuple[list[Route], bool]:
        """Our current entries for ``elements`` in order, skipping those
        rewritten since (they go by push), at most ``cap`` of them and
        ``antientropy_max_bytes`` (:class:`_Budget`): one repair's worth; and
        whether some were left for the next round."""
        routes: list[Route] = []
        budget = _Budget(self.config.antientropy_max_bytes)
        for element in elements:
            route = self.table.by_element(element)
            if route is None:
                continue
            if len(routes) >= cap or not budget.take(route):
                return routes, True
            routes.append(route)
        return routes, False

    def _symbols(self, start: int, stop: int) -> AeSymbols:
        symbols = self.table.symbols(start, stop)
        self.stats["symbols_sent"] += len(symbols)
        return AeSymbols(
            SymbolsStatus.SYMBOLS,
            self.table.index,
            start,
            len_all(self.table),
            tuple(symbols),
        )


class _Budget:
    """Bytes left for routes in one reply or request: the first route always
    fits (a chunk must make progress), the rest while the sizes add up to at
    most ``antientropy_max_bytes``. Sizes are upper bounds (``route_size``)."""

    __slots__ = ("left", "taken")

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.taken = 0

    def take(self, route: Route) -> bool:
        size = route_size(route)
        if self.taken and size > self.left:
            return False
        self.left -= size
        self.taken += 1
        return True


class _UnexpectedReplyError(Exception):
    """A reply that does not fit the request: the round fails (counted)."""


def len_all(table: RouteTable) -> int:
    """Entries including tombstones (what the digest covers)."""
    return len(table) + table.tombstones

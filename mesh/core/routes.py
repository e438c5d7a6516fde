"""The replicated route table: versions, a hybrid logical clock, tombstones.
(The values, :class:`Version`, :class:`Route` and the rest, and the clock live
in :mod:`mesh.core.route_types`; this module re-exports them.)

Theory of operation. A route is ``key -> (target, meta)`` with a :class:`Version`
that totally orders every write to that key across the mesh:

    (revision, hlc, origin)

``revision`` is the client's own version from its source of truth when it gives
one (a write without one inherits the stored revision, so it orders after it by
HLC); ``hlc`` is the accepting node's hybrid logical clock (milliseconds << 16 |
counter), so causally later writes sort later even with skewed wall clocks;
``origin`` breaks the last ties. Applying a route keeps whichever of stored and
incoming has the larger version, so ``apply`` is idempotent, commutative and
associative: replicas that see the same writes in any order, any number of times,
end identical (last writer wins on the version, a CRDT register per key). A delete
is a write of a *tombstone*, ordered like any other write, so a stale update can
never resurrect a deleted key.

The clock never goes backwards and witnesses remote HLCs, but clamps any that lie
more than ``hlc_max_skew`` ahead of our wall clock: a peer with a clock far in the
future cannot drag ours (and every later write) with it. Its write is still stored
with its own version: changing a version would break convergence.

Anti-entropy support (docs/antientropy.md). The table keeps a :class:`Digest`
of its entries (tombstones included) up to date lazily: each change records
an element toggle, folded into the digest only when symbols are read, so a key
rewritten many times between rounds costs nothing extra. ``element -> key``
maps recovered elements back to entries. Tombstones older than the
*horizon* (wall clock minus the tombstone lifetime) are garbage-collected; an
entry older than the horizon for a key we do not hold is refused as
``EXPIRED``, because it may be a write whose delete we have already
forgotten (see :meth:`RouteTable.apply`).

What it does not know: who the peers are, how routes travel, or what time it is;
wall-clock milliseconds come in with each call.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import operator
import sys
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

import numpy as np

from .digest import Digest, Symbol, new_element_hash
from .route_checks import (
    ascii_metas_ok,
    ascii_targets_ok,
    keys_ok,
    validate_route_fields,
)
from .route_types import (
    _HLC_LOGICAL_BITS,
    MAX_U64,
    HybridClock,
    Outcome,
    OutcomeStatus,
    Route,
    Version,
    Write,
    version_ms,
)

__all__ = [
    "HybridClock",
    "Outcome",
    "OutcomeStatus",
    "Route",
    "RouteTable",
    "Version",
    "Write",
    "version_ms",
]


def _u64(value: object) -> bool:
    """An integer in 0..2**64-1: not a bool, a float or a numeric string,
    which an embedding caller can pass (audit, session 14: a revision of 1.5
    was stored, and every peer then refused the batches that carried it)."""
    return type(value) is int and 0 <= value <= MAX_U64


_new = tuple.__new__


_DICT_TYPE = {dict}
_REVISION_TYPES = {int, type(None)}


_APPLIED = OutcomeStatus.APPLIED.value  # (the enum's value: see apply_many)


_NO_REVISION = "0" * 20
_DELETED = operator.attrgetter("deleted")


def _elements_of(keys: Sequence[str], versions: Sequence[Version]) -> list[int]:
    """``element_of(key, str(version))`` of each pair, in one loop and one
    format: the digest's element of every entry stored, on every replica, so
    no Python call per element (0.97 -> 0.76 µs per element, side by side).
    The text and hash are :func:`~mesh.core.digest.element_of_text`'s, which
    a test holds this to. str.zfill pads as the format spec 020d does, in
    about 60 % of its time; most writes carry no revision, so it is rarely
    padded at all."""
    fresh = new_element_hash
    from_bytes = int.from_bytes
    zero = _NO_REVISION
    out: list[int] = []
    add = out.append
    for key, version in zip(keys, versions, strict=True):
        revision = version.revision
        text = (
            f"{key}\x00{zero if revision == 0 else str(revision).zfill(20)}"
            f".{str(version.hlc).zfill(20)}.{version.origin}"
        )
        h = fresh()
        h.update(text.encode())
        add(from_bytes(h.digest(), "little") or 1)
    return out


def _element_of(key: str, version: Version) -> int:
    """The element of one entry (a single write's :meth:`RouteTable._put`)."""
    return _elements_of((key,), (version,))[0]


#: A batch stored in one pass folds its digest changes at once from this many
#: (old elements out plus new ones in) instead of queuing them: about where
#: the vectorised fold's cost per element levels off (docs/antientropy.md).
#: Not a tuning knob: the symbols are the same either way.
FOLD_AT_ONCE: Final = 256


def _all_newer(versions: list[Version], held: Sequence[Route | None]) -> bool:
    """Every version is newer than the entry held for its key (or none is)."""
    return all(
        old is None or version > old.version
        for version, old in zip(versions, held, strict=True)
    )


def _all_later(versions: list[Version], held: Sequence[Route | None]) -> bool:
    """Every write's version is later than the entry held for its key by
    revision, then HLC: what :meth:`RouteTable.write` makes sure of, bumping
    an HLC that does not pass the held one at the same revision (a held
    entry's clamped future HLC). A version newer only by its origin's name
    would store one HLC where the write goes on to store the next: such a
    batch goes in turn (a property test caught it, session 14)."""
    return all(
        old is None
        or version.revision > (had := old.version).revision
        or (version.revision == had.revision and version.hlc > had.hlc)
        for version, old in zip(versions, held, strict=True)
    )


def _revisions(
    revisions: Sequence[int | None], held: Sequence[Route | None]
) -> list[int]:
    """Each write's revision over the entry held for its key, as
    :meth:`RouteTable.write` sets it: the one given, or the held one (0 for
    a new key). One given older than the held one (a CONFLICT) makes a
    version older than the held one, which the caller's check of every
    version against its held entry then refuses."""
    return [
        (0 if old is None else old.version.revision) if revision is None else revision
        for revision, old in zip(revisions, held, strict=True)
    ]


class RouteTable:
    """Key -> newest :class:`Route` (tombstones included), with a change index.

    ``index`` increases by one on every applied change; it orders changes on this
    node (watchers, push low-water marks), never across nodes. It starts at
    ``index_base``: the shell passes a value above any index an earlier run of
    the same agent reached, so a watcher resuming with an index from that run
    is seen as behind the change log (and sent a snapshot), never handed the
    new run's changes as if they followed the ones it holds.
    """

    def __init__(
        self,
        *,
        origin: str,
        max_routes: int,
        hlc_max_skew_ms: int,
        max_symbols: int = 4096,
        change_log_max: int = 0,
        index_base: int = 0,
    ) -> None:
        self.origin = origin
        self.max_routes = max_routes
        self.clock = HybridClock(hlc_max_skew_ms)
        self._routes: dict[str, Route] = {}
        self.index = index_base
        self.tombstones = 0
        self.digest = Digest(max_symbols)
        # element toggles not yet folded into the digest (element -> +1/-1)
        self._pending: dict[int, int] = {}
        self._element: dict[str, int] = {}  # key -> element of its entry
        self._keys: dict[int, str] = {}  # element -> key
        # (ms, key) of tombstones, oldest first; entries whose key has since
        # been rewritten are skipped when popped (and compacted when many)
        self._graves: list[tuple[int, str]] = []
        # sorted keys for chunked transfer, built on first use, then kept;
        # keys new since the last page wait in _unsorted and are merged on
        # the next page (one linear merge, not an O(n) insort per new key)
        self._sorted: list[str] | None = None
        self._unsorted: set[str] = set()
        #: tombstones garbage-collected (a metric)
        self.collected = 0
        #: wall ms of the last peer entry refused for lack of room (FULL)
        self.missed_ms = -1 << 62
        # keys of peers' entries refused for lack of room -> wall ms of the
        # last refusal, oldest first, at most max_routes: this table missed
        # those writes, so it takes them even from below the horizon (it
        # cannot vouch they were deleted); any other unknown key below the
        # horizon stays refused, its own forgotten deletes included
        self._missed: dict[str, int] = {}
        # the last change_log_max changes, (index, key, entry or None when it
        # was forgotten), one per index: watchers resume from any of them
        self._changes: deque[tuple[int, str, Route | None]] | None = (
            deque(maxlen=change_log_max) if change_log_max > 0 else None
        )

    def __len__(self) -> int:
        """Live routes (tombstones excluded)."""
        return len(self._routes) - self.tombstones

    def __iter__(self) -> Iterator[Route]:
        """Every entry, tombstones included."""
        return iter(self._routes.values())

    def get(self, key: str) -> Route | None:
        """The stored entry for ``key``, tombstone included."""
        return self._routes.get(key)

    def live(self, prefix: str = "") -> list[Route]:
        """Live routes whose key starts with ``prefix``, sorted by key."""
        routes = self._routes
        return [r for k in self._prefix_keys(prefix) if not (r := routes[k]).deleted]

    def sorted_snapshot(self, prefix: str = "") -> tuple[list[str], dict[str, Route]]:
        """The keys starting with ``prefix`` in order (tombstones included)
        and a copy of the entries: the table at this instant (entries are
        immutable), for a caller that walks it in slices while the table
        changes. Two C-level copies (a few ms at 100,000 routes): no sort of
        the table, which keeps its sorted key list (:meth:`chunk`'s) and
        bisects to the prefix."""
        return self._prefix_keys(prefix), self._routes.copy()

    def _prefix_keys(self, prefix: str) -> list[str]:
        """The keys starting with ``prefix``, sorted, in a list of their own:
        a bisect into the sorted key list, no pass over the table."""
        keys = self._sorted_keys()
        if not prefix:
            return keys[:]
        start = bisect.bisect_left(keys, prefix)
        if ord(prefix[-1]) < sys.maxunicode:
            # Every key with the prefix sorts before the prefix with its last
            # character bumped, and every later key from ``start`` does not.
            bumped = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            return keys[start : bisect.bisect_left(keys, bumped, start)]
        return [k for k in keys[start:] if k.startswith(prefix)]

    def _sorted_keys(self) -> list[str]:
        """Every key (tombstones included), sorted; kept up to date lazily."""
        if self._sorted is None:
            self._sorted = sorted(self._routes)
            self._unsorted.clear()
        elif self._unsorted:
            # two sorted runs: timsort merges them in linear time
            self._sorted += sorted(self._unsorted)
            self._sorted.sort()
            self._unsorted.clear()
        return self._sorted

    def write(
        self,
        key: str,
        target: str,
        meta: Mapping[str, str],
        *,
        revision: int | None,
        wall_ms: int,
        deleted: bool = False,
    ) -> Outcome:
        """A client's write (or delete) accepted here: version it and apply."""
        error = validate_route_fields(key, "x" if deleted else target, meta)
        if error is None and revision is not None and not _u64(revision):
            error = "revision must be an integer in 0..2**64-1"
        if error is not None:
            return Outcome(OutcomeStatus.INVALID, self._routes.get(key), error)
        current = self._routes.get(key)
        if (
            current is not None
            and revision is not None
            and revision < current.version.revision
        ):
            return Outcome(
                OutcomeStatus.CONFLICT,
                current,
                f"revision {revision} is older than the stored revision "
                f"{current.version.revision}",
            )
        if revision is None:
            revision = current.version.revision if current is not None else 0
        hlc = self.clock.increment(wall_ms)
        if current is not None and current.version.revision == revision:
            # A write must supersede what it replaces, even one whose HLC was
            # clamped as too far ahead of our clock.
            hlc = max(hlc, current.version.hlc + 1)
        route = Route(
            key,
            "" if deleted else target,
            {} if deleted else dict(meta),
            Version(revision, hlc, self.origin),
            deleted,
        )
        return self._store(route, current)

    def write_many(
        self, writes: Sequence[Write], *, wall_ms: int
    ) -> tuple[list[Outcome], list[tuple[int, Route]]]:
        """Clients' writes in order, each as if alone (:meth:`write`): their
        outcomes, and ``(index, route)`` of each change (what peers get)."""
        if len(writes) > 1:
            done = self._write_newer(writes, wall_ms)
            if done is not None:
                return done
        outcomes: list[Outcome] = []
        changes: list[tuple[int, Route]] = []
        for key, target, meta, revision, deleted in writes:
            outcome = self.write(
                key, target, meta, revision=revision, wall_ms=wall_ms, deleted=deleted
            )
            outcomes.append(outcome)
            if outcome.changed and outcome.route is not None:
                changes.append((self.index, outcome.route))
        return outcomes, changes

    def _write_newer(
        self, writes: Sequence[Write], wall_ms: int
    ) -> tuple[list[Outcome], list[tuple[int, Route]]] | None:
        """:meth:`write_many` in one pass for valid writes to distinct keys,
        with room for the new ones, none with a revision older than its
        key's entry (a batch call creating routes, or rewriting them):
        versioned and stored as :meth:`write` would, one after the other
        (consecutive HLCs), with the indexes updated a batch at a time. None,
        having changed nothing, for any other batch. Why: :meth:`apply_many`'s."""
        keys = [w[0] for w in writes]
        held = self._held(keys)
        if held is None:
            return None
        n = len(writes)
        clock = self.clock
        first = max(clock.last + 1, wall_ms << _HLC_LOGICAL_BITS)
        routes = self._new_routes(keys, writes, first, held)
        if routes is None:
            return None
        versions = [r.version for r in routes]
        if held and not _all_later(versions, held):
            return None  # a CONFLICT, or a held clamped future HLC: in turn
        clock.last = first + n - 1  # what n increments leave
        self._routes.update(zip(keys, routes, strict=True))
        base = self.index
        self._index_batch(keys, versions, routes, held)
        outcomes = [_new(Outcome, (OutcomeStatus.APPLIED, r, "")) for r in routes]
        return outcomes, list(zip(range(base + 1, base + n + 1), routes, strict=True))

    def _new_routes(
        self,
        keys: list[str],
        writes: Sequence[Write],
        first: int,
        held: Sequence[Route | None],
    ) -> list[Route] | None:
        """The routes of valid ``writes``, versioned from HLC ``first`` on;
        None if one is invalid. ``held``: the entry per key, or empty when
        every key is new; a write without a revision takes the held one (one
        older than the held one is refused by the caller's check of every
        version against its held entry: a CONFLICT, in turn). Puts of ASCII
        routes (what a batch call mostly carries) are checked column by
        column, each check one pass in C (:mod:`route_checks`), and built
        with ``map``; anything else write by write. Same routes either way
        (a property test compares the batch with its writes one by one)."""
        _, targets, metas, revisions, gone = zip(*writes, strict=True)
        if (
            not any(gone)
            and set(map(type, metas)) == _DICT_TYPE
            and set(map(type, revisions)) <= _REVISION_TYPES
            and keys_ok(keys)
            and ascii_targets_ok(targets)
            and ascii_metas_ok(metas)
        ):
            given = [r for r in revisions if r is not None]
            if not given or (min(given) >= 0 and max(given) <= MAX_U64):
                n = len(keys)
                if held:
                    numbers = _revisions(revisions, held)
                elif given:
                    numbers = [0 if r is None else r for r in revisions]
                else:
                    numbers = [0] * n
                origins = [self.origin] * n
                hlcs = range(first, first + n)
                versions = map(Version, numbers, hlcs, origins)
                return list(map(Route, keys, targets, map(dict, metas), versions, gone))
        origin = self.origin
        routes: list[Route] = []
        entries = held or itertools.repeat(None)
        for hlc, (key, target, meta, revision, deleted), current in zip(
            itertools.count(first), writes, entries
        ):
            if validate_route_fields(key, "x" if deleted else target, meta) is not None:
                return None  # INVALID: in turn, for its message
            if revision is None:
                revision = 0 if current is None else current.version.revision
            elif not _u64(revision):
                return None
            routes.append(
                Route(
                    key,
                    "" if deleted else target,
                    {} if deleted else dict(meta),
                    Version(revision, hlc, origin),
                    deleted,
                )
            )
        return routes

    def apply(
        self, route: Route, *, wall_ms: int, horizon_ms: int | None = None
    ) -> Outcome:
        """A write from a peer (push or repair): keep the larger version.

        With ``horizon_ms`` (a caught-up node), an entry written before the
        horizon for a key we do not hold is refused as ``EXPIRED``: we may
        have held its delete and collected the tombstone, so accepting it
        could resurrect a deleted route. A node still bootstrapping passes
        None and takes everything. A key whose entry this table refused for
        lack of room since the horizon is taken too: the table missed that
        write, so it cannot call it expired, which would make its holder
        forget it (a write answered 200, lost mesh-wide a tombstone lifetime
        later: audit 8). Only those keys: a table that was full must still
        refuse the old versions of keys it deleted itself (audit 9).

        ``route`` is trusted to be within the contract's limits: a peer's
        routes reach the core only through the codec, which checks each one
        where bytes become a :class:`Route` (checking again here cost every
        replica ~1.4 µs per pushed route, of ~20 µs for decode and apply).
        """
        status = self._apply(route, wall_ms, horizon_ms)
        if status is OutcomeStatus.APPLIED:
            return Outcome(status, route)
        if status is OutcomeStatus.FULL:
            return self._full()
        if status is OutcomeStatus.EXPIRED:
            return Outcome(status, None, "older than the horizon")
        return Outcome(status, self._routes[route.key])

    def apply_many(
        self, routes: Sequence[Route], *, wall_ms: int, horizon_ms: int | None
    ) -> dict[str, int]:
        """:meth:`apply` for each of a pushed batch: counts by status value.
        No :class:`Outcome` per route: a batch's sender wants only counts,
        and every replica runs this for every route written in the mesh."""
        if len(routes) > 1 and self._apply_newer(routes, wall_ms, horizon_ms):
            return {_APPLIED: len(routes)}
        counts: dict[str, int] = {}
        apply = self._apply
        for route in routes:
            # (_value_: a plain attribute; .value is a property, and a dict
            # keyed by the member would call enum's __hash__, both Python)
            status = apply(route, wall_ms, horizon_ms)._value_
            counts[status] = counts.get(status, 0) + 1
        return counts

    def _apply_newer(
        self, routes: Sequence[Route], wall_ms: int, horizon_ms: int | None
    ) -> bool:
        """Store a pushed batch in one pass if its routes are for distinct
        keys, each newer than the entry held for its key or for a key we
        lack, with room for the new keys, all above the horizon (the common
        push: new routes, or rewrites and deletes of held ones): what
        :meth:`_apply` would do route by route, with the table's indexes
        updated a batch at a time. False, having changed nothing, for any
        other batch.

        Why: every replica stores every route written in the mesh, and per
        route the six calls of :meth:`_apply` and :meth:`_put` cost more than
        the stores themselves (1.5 of ~4.5 µs per new route; a rewrite
        paid 5.6 µs against 3.2 for a new key in one pass, session 13)."""
        keys = [r.key for r in routes]
        held = self._held(keys)
        if held is None:
            return False
        versions = [r.version for r in routes]
        if held and not _all_newer(versions, held):
            return False  # a duplicate or stale route: in turn, counted
        hlcs = [v.hlc for v in versions]
        if horizon_ms is not None and min(hlcs) >> _HLC_LOGICAL_BITS < horizon_ms:
            return False  # some may be EXPIRED: route by route
        clock = self.clock
        top = max(hlcs)
        if top >> _HLC_LOGICAL_BITS <= wall_ms + clock.max_skew_ms:
            clock.last = max(clock.last, top)  # every witness, at once
        else:
            for hlc in hlcs:
                clock.witness(hlc, wall_ms)
        self._routes.update(zip(keys, routes, strict=True))
        self._index_batch(keys, versions, routes, held)
        return True

    def _held(self, keys: list[str]) -> Sequence[Route | None] | None:
        """What a batch stored in one pass needs: ``keys`` distinct, and room
        for those the table lacks. None if not (a key twice, or too many new
        ones, goes in turn); else the entry held for each key (None for a
        new one), or an empty tuple when every key is new (the common batch:
        no lookup per key)."""
        table = self._routes
        if len(set(keys)) != len(keys):
            return None
        if table.keys().isdisjoint(keys):
            return () if len(table) + len(keys) <= self.max_routes else None
        held = list(map(table.get, keys))
        if len(table) + held.count(None) > self.max_routes:
            return None
        return held

    def _apply(
        self, route: Route, wall_ms: int, horizon_ms: int | None
    ) -> OutcomeStatus:
        key = route.key
        version = route.version
        current = self._routes.get(key)
        if current is None:
            if len(self._routes) >= self.max_routes:
                self._miss(key, wall_ms)
                return OutcomeStatus.FULL
            if horizon_ms is not None and version_ms(version) < horizon_ms:
                missed = self._missed.get(key)
                if missed is None or missed < horizon_ms:
                    return OutcomeStatus.EXPIRED
        self.clock.witness(version.hlc, wall_ms)
        if current is not None:
            if version == current.version:
                return OutcomeStatus.DUPLICATE
            if version < current.version:
                return OutcomeStatus.STALE
        self._put(route, current)
        return OutcomeStatus.APPLIED

    def _miss(self, key: str, wall_ms: int) -> None:
        """Remember a peer's entry refused for lack of room (see apply)."""
        self.missed_ms = wall_ms
        missed = self._missed
        missed.pop(key, None)
        missed[key] = wall_ms  # newest last: the front is the oldest
        if len(missed) > self.max_routes:
            del missed[next(iter(missed))]

    def missing(self) -> int:
        """Keys of peers' entries this table refused for lack of room, not
        taken since (within the last tombstone lifetime): known to be lacking."""
        return len(self._missed)

    def _full(self) -> Outcome:
        return Outcome(
            OutcomeStatus.FULL, None, f"table holds max_routes={self.max_routes}"
        )

    def _store(self, route: Route, current: Route | None) -> Outcome:
        if current is None and len(self._routes) >= self.max_routes:
            return self._full()
        self._put(route, current)
        return Outcome(OutcomeStatus.APPLIED, route)

    def _put(self, route: Route, current: Route | None) -> None:
        """Store ``route`` over ``current`` (there is room: checked by the
        callers) and index it: sorted keys, graves, digest element, log."""
        key = route.key
        self._routes[key] = route
        if current is not None:
            self._unindex(key)
            if current.deleted:
                self.tombstones -= 1
        else:
            if self._sorted is not None:
                self._unsorted.add(key)
            if self._missed:
                self._missed.pop(key, None)
        if route.deleted:
            self.tombstones += 1
            heapq.heappush(self._graves, (version_ms(route.version), key))
        element = _element_of(key, route.version)
        self._element[key] = element
        self._keys[element] = key
        pending = self._pending  # _toggle(element, 1), inlined: every route
        net = pending.get(element, 0) + 1
        if net:
            pending[element] = net
        else:
            del pending[element]
        self.index += 1
        if self._changes is not None:
            self._changes.append((self.index, key, route))

    def _index_batch(
        self,
        keys: list[str],
        versions: list[Version],
        routes: Sequence[Route],
        held: Sequence[Route | None],
    ) -> None:
        """:meth:`_put`'s indexing for entries just stored under distinct
        keys, in order, over ``held`` (the entries they replaced, None for a
        new key; empty when every key was new): dict updates a batch at a
        time, the replaced entries' elements taken out first."""
        fresh = keys
        olds: list[int] = []
        if held:
            if None in held:
                fresh = [k for k, old in zip(keys, held, strict=True) if old is None]
                replaced = [
                    k for k, old in zip(keys, held, strict=True) if old is not None
                ]
            else:  # every key held: a steady table's batch
                fresh, replaced = [], keys
            self.tombstones -= sum(map(_DELETED, filter(None, held)))
            # _unindex for each, a batch at a time (read, not popped: every
            # key of the batch gets its new element below, in place)
            olds = list(map(self._element.__getitem__, replaced))
            deque(map(self._keys.__delitem__, olds), maxlen=0)
        if self._sorted is not None:
            self._unsorted.update(fresh)
        if self._missed:
            for key in fresh:
                self._missed.pop(key, None)
        graves = (
            [(version_ms(r.version), r.key) for r in routes if r.deleted]
            if any(map(_DELETED, routes))
            else ()
        )
        if graves:
            self.tombstones += len(graves)
            for grave in graves:
                heapq.heappush(self._graves, grave)
        elements = _elements_of(keys, versions)
        self._element.update(zip(keys, elements, strict=True))
        by_element = self._keys
        before = len(by_element)
        by_element.update(zip(elements, keys, strict=True))
        if len(olds) + len(elements) >= FOLD_AT_ONCE:
            # Fold now, not through _pending: a batch this large fills a
            # vectorised fold by itself, and two dict passes per element
            # (queue, then take) cost ~5 % of a replica's CPU under batch
            # load. Sums commute, so what is still pending folds in later
            # to the same symbols, a key's old element included.
            signs = np.ones(len(olds) + len(elements), dtype=np.int64)
            signs[: len(olds)] = -1
            self.digest.fold(olds + elements, signs)
        else:
            if olds:
                self._toggle_all(olds, -1, distinct=True)
            # (an element twice in the batch: a 64-bit collision, in turn)
            distinct = len(by_element) - before == len(keys)
            self._toggle_all(elements, 1, distinct=distinct)
        first = self.index + 1
        self.index += len(keys)
        if self._changes is not None:
            self._changes.extend(
                zip(range(first, self.index + 1), keys, routes, strict=True)
            )

    def _unindex(self, key: str) -> None:
        old = self._element.pop(key)
        del self._keys[old]
        self._toggle(old, -1)

    def _toggle_all(self, elements: list[int], sign: int, *, distinct: bool) -> None:
        """:meth:`_toggle` each of ``elements``: in one dict update when they
        are ``distinct`` and none is pending (the batch paths' common case),
        else in turn, so that a pending one nets out."""
        pending = self._pending
        if distinct and pending.keys().isdisjoint(elements):
            pending.update(dict.fromkeys(elements, sign))
        else:
            for element in elements:
                self._toggle(element, sign)

    def _toggle(self, element: int, sign: int) -> None:
        pending = self._pending
        net = pending.get(element, 0) + sign
        if net:
            pending[element] = net
        else:
            del pending[element]

    # --- anti-entropy ---

    def pending_folds(self) -> int:
        """Changes not yet folded into the digest."""
        return len(self._pending)

    def fold(self, limit: int) -> int:
        """Fold up to ``limit`` pending changes into the digest (a few µs each);
        returns how many remain. The node calls this a batch per timer tick,
        so a bulk load of 100,000 routes never stalls its loop for seconds."""
        pending = self._pending
        # No loop in Python either way: every replica folds every route.
        if limit >= len(pending):
            elements, nets = list(pending), list(pending.values())
            pending.clear()
        else:  # the oldest first
            elements = list(itertools.islice(pending, limit))
            nets = list(map(pending.pop, elements))
        # added since the last fold (+1), or removed (-1); a net of 2 (two
        # keys with one 64-bit element) folds twice, as a batch folding at
        # once does, so replicas agree however their writes arrived
        self.digest.fold(elements, np.array(nets, dtype=np.int64))
        return len(pending)

    def symbols(self, start: int, stop: int) -> list[Symbol]:
        """Coded symbols ``[start, stop)`` of the table's digest (folding
        what is pending first: callers check ``pending_folds`` is small)."""
        self.fold(len(self._pending))
        return self.digest.symbols(start, stop)

    def summary(self) -> Symbol:
        """Symbol 0: equal summaries mean equal tables."""
        return self.symbols(0, 1)[0]

    def by_element(self, element: int) -> Route | None:
        """The entry whose current element is ``element``, if any."""
        key = self._keys.get(element)
        return None if key is None else self._routes[key]

    def chunk(self, after: str, limit: int) -> tuple[list[Route], bool]:
        """Up to ``limit`` entries with keys after ``after`` in key order, and
        whether more follow: a bounded page of a full transfer (bootstrap)."""
        keys = self._sorted_keys()
        start = bisect.bisect_right(keys, after) if after else 0
        page = keys[start : start + limit]
        routes = self._routes
        return [routes[k] for k in page], start + limit < len(keys)

    def collect(self, horizon_ms: int) -> int:
        """Forget tombstones written before ``horizon_ms``; returns how many."""
        graves = self._graves
        routes = self._routes
        removed = 0
        while graves and graves[0][0] < horizon_ms:
            ms, key = heapq.heappop(graves)
            route = routes.get(key)
            if route is None or not route.deleted or version_ms(route.version) != ms:
                continue  # rewritten (or already collected) since
            self._forget(key)
            removed += 1
        missed = self._missed
        while missed:  # refusals older than the horizon no longer protect
            key, ms = next(iter(missed.items()))
            if ms >= horizon_ms:
                break
            del missed[key]
        if len(graves) > 2 * self.tombstones + 1024:
            self._graves = [
                (version_ms(r.version), r.key) for r in routes.values() if r.deleted
            ]
            heapq.heapify(self._graves)
        self.collected += removed
        return removed

    def drop(self, key: str, version: Version, horizon_ms: int) -> bool:
        """A peer refused our entry as older than its horizon (it may hold the
        delete, long collected): forget it too if it is exactly that entry and
        below our own horizon as well. Never touches anything newer."""
        route = self._routes.get(key)
        if (
            route is None
            or route.version != version
            or version_ms(version) >= horizon_ms
        ):
            return False
        self._forget(key)
        return True

    def _forget(self, key: str) -> None:
        """Remove an entry outright (collected, or dropped on a peer's word)."""
        if self._routes.pop(key).deleted:
            self.tombstones -= 1
        self._unindex(key)
        if key in self._unsorted:
            self._unsorted.discard(key)
        elif self._sorted is not None:
            i = bisect.bisect_left(self._sorted, key)
            if i < len(self._sorted) and self._sorted[i] == key:
                del self._sorted[i]
        self.index += 1
        if self._changes is not None:
            self._changes.append((self.index, key, None))

    def changes_after(self, index: int) -> list[tuple[int, str, Route | None]] | None:
        """The changes after ``index``, oldest first, each with its own index
        (the entry it stored, or None when the key was forgotten); None when
        the change log no longer reaches back that far, or ``index`` is
        ahead of the table: the caller starts over from a snapshot."""
        if index > self.index:
            return None
        if index == self.index:
            return []
        log = self._changes
        # one entry per index, so the log covers (log[0].index - 1, index]
        if not log or log[0][0] > index + 1:
            return None
        out = []
        for entry in reversed(log):
            if entry[0] <= index:
                break
            out.append(entry)
        out.reverse()
        return out

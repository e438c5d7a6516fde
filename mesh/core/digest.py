"""Anti-entropy digests: a rateless invertible Bloom lookup table over the
route table, maintained incrementally (Yang, Gilad, Alizadeh, "Practical
Rateless Set Reconciliation", SIGCOMM 2024).

Theory of operation. Each entry of the table (live route or tombstone) is one
*element*: a 64-bit hash of ``(key, version)``. Two tables are equal exactly when
their element sets are; their difference is the set of elements only one side
has (a key whose versions differ contributes one element from each side).

Every element maps into an infinite stream of *coded symbols*: always symbol 0,
then a pseudo-random, ever sparser sequence of indices (element ``e`` lands in
symbol ``i`` with probability about ``1 / (1 + i/2)``), drawn from splitmix64
seeded by ``e`` so both sides agree. A symbol holds its elements' count, their
sum modulo 2^64 and the sum of their 32-bit checksums modulo 2^32 (a removed
element subtracts). This is the digest's scheme 2; scheme 1 (until session 15)
drew the indices from BLAKE2b and held XORs, which numpy cannot scatter fast:
see :meth:`Digest.fold`. We keep the first ``max_symbols`` symbols up to
date: adding or removing an element touches ~``2 ln(max_symbols)`` of them, so a
write costs O(log M), never a pass over the table.

Reconciliation: subtracting the peer's first ``m`` symbols from ours leaves the
symbols of the *difference* only; peeling (find a symbol holding exactly one
element, +1 or -1, confirmed by its checksum; remove that element everywhere)
recovers it when ``m`` is about 1.35-1.7 times the difference. A prefix that does
not peel completely is extended by asking for more symbols: the stream is
rateless, so nothing already sent is wasted. Equal tables are recognised from
the first symbol alone (count, sum and checksum all equal). Past
``max_symbols`` the caller falls back to a full transfer.

What it does not know: keys, versions or routes beyond their hashes; the caller
maps recovered elements back to keys (it keeps ``element -> key``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Final

import attrs
import numpy as np
import numpy.typing as npt

__all__ = [
    "SCHEME",
    "Digest",
    "Symbol",
    "element_of",
    "element_of_text",
    "estimate_difference",
    "peel",
]

_MASK = (1 << 64) - 1
_INV_2_32 = 1.0 / float(1 << 32)
# splitmix64 constants: a fast, well-mixed 64-bit PRNG step (Steele et al.)
_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK
    return z ^ (z >> 31)


def element_of(key: str, version: str) -> int:
    """The 64-bit element of one table entry (never 0)."""
    return element_of_text(f"{key}\x00{version}")


def element_of_text(text: str) -> int:
    """The element of an entry given as ``key NUL version``: for a caller
    that builds that text in one format (the route table, per entry stored)."""
    h = new_element_hash()
    h.update(text.encode())
    return int.from_bytes(h.digest(), "little") or 1


# A copy of a hash object set up once: the same BLAKE2b as the constructor
# with these parameters, without parsing its keywords on every call (0.62 ->
# 0.42 us an element, measured side by side), and every replica hashes every
# route it stores.
new_element_hash = hashlib.blake2b(digest_size=8).copy


def _checksum(element: int) -> int:
    # 32 bits: a false "pure" symbol needs a 2**-32 coincidence, and the wire
    # form of a symbol stays 16 bytes (8 sum + 4 checksum + 4 count)
    return _mix((element + _GAMMA) & _MASK) & 0xFFFFFFFF


#: The digest scheme: how elements map to symbols and what a symbol holds.
#: Part of the anti-entropy protocol (codec_ae sends it as the message types
#: of a round's first exchange), so that members of different schemes refuse
#: each other's digests instead of peeling garbage.
SCHEME: Final = 2


def uniform(element: int, j: int) -> int:
    """Uniform number ``j`` (from 1) of ``element``'s walk: the high 32 bits
    of splitmix64's mix of ``element + j * gamma`` (Steele et al.)."""
    return _mix((element + j * _GAMMA) & _MASK) >> 32


def indices(element: int, limit: int) -> list[int]:
    """Symbol indices of ``element`` below ``limit``: 0, then gaps that grow so
    that index ``i`` is hit with probability ~ 1 / (1 + i/2) (the paper's
    mapping). The reference of the mapping, one uniform at a time; the fold
    computes the same floats a block of 16 uniforms at a time in numpy."""
    out = [0]
    i = 0
    j = 0
    sqrt = math.sqrt
    while True:
        j += 1
        u = (uniform(element, j) + 1) * _INV_2_32  # in (0, 1]
        i += int((i + 1.5) * (1.0 / sqrt(u) - 1.0)) + 1
        if i >= limit:
            return out
        out.append(i)


@attrs.frozen
class Symbol:
    """One coded symbol: how many elements, their sum modulo 2^64, and the
    sum of their checksums modulo 2^32 (removed elements subtract)."""

    count: int
    total: int
    check: int

    def is_empty(self) -> bool:
        return self.count == 0 and self.total == 0 and self.check == 0


class Digest:
    """The first ``max_symbols`` coded symbols of a set, kept up to date.

    The symbols live in three numpy arrays, and a slice of changes is folded
    in one vectorised pass (:meth:`toggle`): every replica folds every route
    it stores, so this is on the hot path of replication, and in pure Python
    it cost ~15 µs per element, half a receiver's CPU per route."""

    def __init__(self, max_symbols: int) -> None:
        self.max_symbols = max_symbols
        self._count = np.zeros(max_symbols, dtype=np.int64)
        self._total = np.zeros(max_symbols, dtype=np.uint64)
        # checksums summed modulo 2**64; read modulo 2**32 (see symbols)
        self._check = np.zeros(max_symbols, dtype=np.uint64)
        self.size = 0

    def add(self, element: int) -> None:
        self.toggle([(element, 1)])

    def remove(self, element: int) -> None:
        self.toggle([(element, -1)])

    def toggle(self, changes: Sequence[tuple[int, int]]) -> None:
        """Add (sign +1) or remove (-1) each ``(element, sign)``."""
        if changes:
            elements, signs = zip(*changes, strict=True)
            self.fold(elements, signs)

    def fold(
        self, elements: Sequence[int], signs: Sequence[int] | npt.NDArray[np.int64]
    ) -> None:
        """Add (sign +1) or remove (-1) each element: :meth:`toggle` with the
        pairs already apart, as the route table keeps them.

        Below :data:`VECTOR_FROM` changes the walk of :func:`indices` runs in
        Python (numpy's fixed cost per step would dominate); from there on it
        runs a block of 16 steps at a time over all elements at once, its
        uniforms computed in numpy too. Either way the symbols touched are
        updated by ``np.add.at`` scatters, and both give bit for bit the
        symbols :func:`indices` defines (a test checks it): the mapping is
        part of the anti-entropy protocol.

        Why sums and splitmix64 (scheme 2): every update is then
        ``np.add.at``, for which numpy has a fast indexed loop (it has none
        for XOR: 0.39 against 0.05 µs per element for two arrays), and no
        step per element runs in Python (scheme 1 called BLAKE2b per element
        and block, 0.58 µs per element): the fold went from ~2.0 to ~1.1 µs
        per element, and every replica folds two elements per rewrite
        (docs/benchmarks.md, "Fifteenth round")."""
        if not elements:
            return
        values = np.array(elements, dtype=np.uint64)
        sign = np.array(signs, dtype=np.int64)
        usign = sign.astype(np.uint64)  # -1 as 2**64 - 1: a product negates
        totals = values * usign
        checks = _checksums(values) * usign
        net = int(sign.sum())
        self.size += net
        # symbol 0 holds every element (array sums wrap, as a scalar's would
        # with an overflow warning)
        self._count[0] += net
        self._total[:1] += totals.sum(keepdims=True)
        self._check[:1] += checks.sum(keepdims=True)
        if len(elements) < VECTOR_FROM:
            owners, where = self._walk_python(elements)
            np.add.at(self._count, where, sign[owners])
            np.add.at(self._total, where, totals[owners])
            np.add.at(self._check, where, checks[owners])
        else:
            self._fold_vector(values, sign, totals, checks)

    def _walk_python(
        self, elements: Sequence[int]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """(change number, symbol index) of every index past 0, from
        :func:`indices` itself (a few changes: a call per element is
        nothing beside its ~16 uniforms in Python)."""
        owners: list[int] = []
        where: list[int] = []
        for n, element in enumerate(elements):
            hits = indices(element, self.max_symbols)[1:]
            owners += [n] * len(hits)
            where += hits
        return np.array(owners, dtype=np.intp), np.array(where, dtype=np.intp)

    def _fold_vector(
        self,
        values: npt.NDArray[np.uint64],
        sign: npt.NDArray[np.int64],
        totals: npt.NDArray[np.uint64],
        checks: npt.NDArray[np.uint64],
    ) -> None:
        """The walk of :func:`indices` a block of 16 steps at a time for every
        element still below the limit, and its scatter: splitmix64 in uint64
        arithmetic (it wraps as ``& _MASK`` does), then the same IEEE
        operations in the same order, so the indices are identical.

        A block's steps past the limit are not masked out but clamped to
        one spare symbol past the end, which is dropped, and each block is
        scattered with its rows' values repeated 16 times: boolean masks and
        fancy-index gathers over every (element, step) pair cost more than
        scattering the ~30 % of steps that land past the limit: a fold of
        1,200 elements (a pushed batch of rewrites) went from 0.90 to 0.70
        µs per element, of 2,000 from 1.10 to 0.68 (side by side,
        ``scripts/bench/fold_ab.py``; docs/benchmarks.md, "Sixteenth
        round")."""
        limit = self.max_symbols
        count = np.zeros(limit + 1, dtype=np.int64)
        total = np.zeros(limit + 1, dtype=np.uint64)
        check = np.zeros(limit + 1, dtype=np.uint64)
        at = np.zeros(len(values), dtype=np.float64)
        first = 1
        while True:
            steps = walk_block(at, _uniforms(values, first), float(limit))
            where = steps.ravel()
            np.add.at(count, where, np.tile(sign, _BLOCK))
            np.add.at(total, where, np.tile(totals, _BLOCK))
            np.add.at(check, where, np.tile(checks, _BLOCK))
            going = at < limit
            if not going.any():
                break
            values, sign, totals, checks = (
                values[going],
                sign[going],
                totals[going],
                checks[going],
            )
            at = at[going]
            first += _BLOCK
        self._count += count[:limit]
        self._total += total[:limit]
        self._check += check[:limit]

    def symbols(self, start: int, stop: int) -> list[Symbol]:
        """Symbols ``[start, stop)`` (clipped to ``max_symbols``)."""
        start, stop = max(0, start), min(stop, self.max_symbols)
        if start >= stop:
            return []
        return [
            Symbol(c, t, k)
            for c, t, k in zip(
                self._count[start:stop].tolist(),
                self._total[start:stop].tolist(),
                (self._check[start:stop] & _LOW32).tolist(),
                strict=True,
            )
        ]


def walk_block(
    at: npt.NDArray[np.float64],
    uniforms: npt.NDArray[np.uint64],
    limit: float,
) -> npt.NDArray[np.intp]:
    """One block of :data:`_BLOCK` steps of the walk from positions ``at``
    (advanced in place), given the block's uniforms (one row per step, one
    column per element): the symbol index of every step, those at or past
    ``limit`` clamped to ``limit``. The float steps are :func:`indices`' own,
    in place to spare temporaries, so the indices are identical."""
    factors = uniforms.astype(np.float64)  # exact: uniforms are < 2**32
    factors += 1.0
    factors *= _INV_2_32
    np.sqrt(factors, out=factors)
    np.divide(1.0, factors, out=factors)
    factors -= 1.0
    gap = np.empty_like(at)
    for k in range(_BLOCK):
        np.add(at, 1.5, out=gap)
        gap *= factors[k]
        np.floor(gap, out=gap)
        gap += 1.0
        at += gap
        factors[k] = at  # the step's position, in the row just used
    np.minimum(factors, limit, out=factors)
    return factors.astype(np.intp)


#: From this many changes a fold runs vectorised: below it numpy's fixed cost
#: per block (~0.2 ms, until the last element passes the limit) outweighs
#: the Python walk (~15 µs per element). The fold of session 16 took, best of
#: 50, 0.12 ms in Python against 0.21 vectorised for 8 changes, 0.26 against
#: 0.22 for 16, 0.39 against 0.22 for 24; not a tuning knob.
VECTOR_FROM: Final = 16


_LOW32: Final = np.uint64(0xFFFFFFFF)
#: steps of the walk per vectorised block
_BLOCK: Final = 16
_STEPS: Final = np.arange(_BLOCK, dtype=np.uint64)[:, None]


def _uniforms(elements: npt.NDArray[np.uint64], first: int) -> npt.NDArray[np.uint64]:
    """:func:`uniform` ``first .. first + 15`` of each element, one row per
    step and a column per element (uint64 arithmetic wraps as the ``&
    _MASK`` of the scalar version does)."""
    z: npt.NDArray[np.uint64] = (_STEPS + np.uint64(first)) * np.uint64(
        _GAMMA
    ) + elements[None, :]
    z ^= z >> np.uint64(30)
    z *= np.uint64(_MIX1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_MIX2)
    z ^= z >> np.uint64(31)
    z >>= np.uint64(32)
    return z


def _checksums(elements: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """:func:`_checksum` of each element (uint64 arithmetic wraps as the
    ``& _MASK`` of the scalar version does)."""
    z = elements + np.uint64(_GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return (z ^ (z >> np.uint64(31))) & np.uint64(0xFFFFFFFF)


def peel(
    ours: Sequence[Symbol], theirs: Sequence[Symbol]
) -> tuple[set[int], set[int]] | None:
    """Decode the difference from equal-length prefixes of both streams.

    Returns (only ours, only theirs) element sets, or None when this prefix is
    too short to peel completely (ask for more symbols).
    """
    m = min(len(ours), len(theirs))
    count = [ours[i].count - theirs[i].count for i in range(m)]
    total = [(ours[i].total - theirs[i].total) & _MASK for i in range(m)]
    chk = [(ours[i].check - theirs[i].check) & 0xFFFFFFFF for i in range(m)]
    mine: set[int] = set()
    other: set[int] = set()
    pending = [i for i in range(m) if count[i] in (1, -1)]
    while pending:
        i = pending.pop()
        sign = count[i]
        if sign not in (1, -1):
            continue
        # a pure symbol holds +element (only ours) or -element (only theirs)
        element = total[i] if sign == 1 else -total[i] & _MASK
        check = _checksum(element)
        if element == 0 or chk[i] != (sign * check) & 0xFFFFFFFF:
            continue
        (mine if sign == 1 else other).add(element)
        for j in indices(element, m):
            count[j] -= sign
            total[j] = (total[j] - sign * element) & _MASK
            chk[j] = (chk[j] - sign * check) & 0xFFFFFFFF
            if count[j] in (1, -1):
                pending.append(j)
    if any(count) or any(total) or any(chk):
        return None
    return mine, other


def summary_equal(ours: Symbol, theirs: Symbol) -> bool:
    """Symbol 0 holds every element: equal symbol 0 means equal sets (up to a
    64-bit hash collision)."""
    return ours == theirs


def elements(pairs: Iterable[tuple[str, str]]) -> list[int]:
    """Elements of (key, version-string) pairs (tests and benchmarks)."""
    return [element_of(k, v) for k, v in pairs]


def estimate_difference(ours: Sequence[Symbol], theirs: Sequence[Symbol]) -> int | None:
    """How many elements differ, estimated from a prefix that did not peel.

    A differing element lands in symbol ``i`` with probability ~1/(1 + i/2), so
    with ``d`` differing elements symbol ``i`` of the difference is empty with
    probability (1 - p_i)**d. Solve sum_i (1 - p_i)**d = observed empties for
    ``d`` (bisection: the sum falls as d grows). None when no symbol is empty:
    the difference is too large to say, beyond ~2 * len(prefix).
    """
    m = min(len(ours), len(theirs))
    empty = sum(1 for i in range(1, m) if ours[i] == theirs[i])
    if empty == 0:
        return None
    keep = [1.0 - 1.0 / (1.0 + i / 2.0) for i in range(1, m)]

    def expected_empty(d: float) -> float:
        return float(sum(q**d for q in keep))

    lo, hi = 0.0, float(4 * m)
    for _ in range(40):
        mid = (lo + hi) / 2
        if expected_empty(mid) > empty:
            lo = mid
        else:
            hi = mid
    return max(1, round(hi))

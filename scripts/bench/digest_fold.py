"""Why the digest fold costs what it does: the production index walk against
the scheme it replaced and three cheaper-looking mappings, on fold CPU and on
peeling efficiency.

The fold (``Digest.toggle``) was the largest single item of a replica's CPU
under batch load (docs/benchmarks.md): every element lands in ~16 symbols,
and each of them was a few Python-level operations. Since session 9
production folds a slice at a time in numpy; since session 15 it is digest
scheme 2 (``production`` below): uniforms from splitmix64 computed in numpy,
symbols that hold sums, every update one ``np.add.at``. The other variants
are kept as evidence:

* ``lut``: the same gap process, its ``1/sqrt(u) - 1`` read from a 65,536-entry
  table of 16-bit uniforms instead of computed;
* ``tables``: each element's indices read from precomputed patterns, one per
  segment ``[1,16) [16,256) [256,4096)``, picked by 12 bits of the element:
  the walk becomes a plain loop over a tuple, but elements that share a
  pattern share all its symbols;
* ``alpha``: index ``i`` hit with probability ``1/(1 + 0.75 i)`` instead of
  ``1/(1 + i/2)``: fewer symbols per element (~11.5 instead of ~16);
* ``scheme 1``: the mapping and symbols of production until session 15, as
  its session-9 prototype folded them: the gap walk's uniforms from BLAKE2b
  (two calls per element, in Python), the walk and the updates vectorised in
  slices of 512, symbols holding XORs (``np.bitwise_xor.at``: numpy has no
  fast indexed loop for XOR); its mapping is checked at start against a
  plain walk of the same hash. Production's own scheme 1 fold was tighter
  (~2 µs per element): ``fold_ab.py`` compares the two production folds
  side by side, from two source trees.

Per variant: fold CPU per element (median over ``--reps`` alternating
repetitions, [min..max]) and the symbols needed to peel a difference of ``d``
elements, as a multiple of ``d`` (median and worst of ``--trials``; "fail"
means more than the 4,096 symbols a table keeps, so the round would fall back
to a full transfer).

Run: python scripts/bench/digest_fold.py [--reps 5] [--trials 8]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mesh.core import digest
from mesh.core.digest import Digest, Symbol

SYMBOLS = 4096
_INV_2_32 = 1.0 / float(1 << 32)
_U32 = struct.Struct("<16I").unpack
_U16 = struct.Struct("<32H").unpack
_SALTS = [b.to_bytes(16, "little") for b in range(64)]

Mapping = Callable[[int, int], list[int]]


def _walk(
    element: int, limit: int, gap: Callable[[int, int], int], wide: bool
) -> list[int]:
    """Indices below ``limit``: 0, then one gap per uniform of a keyed hash."""
    out = [0]
    i = 0
    seed = element.to_bytes(8, "little")
    unpack = _U32 if wide else _U16
    for salt in _SALTS:
        for x in unpack(hashlib.blake2b(seed, digest_size=64, salt=salt).digest()):
            i += gap(i, x)
            if i >= limit:
                return out
            out.append(i)
    return out


_G16 = [1.0 / math.sqrt((x + 1) / 65536.0) - 1.0 for x in range(65536)]


def lut(element: int, limit: int) -> list[int]:
    return _walk(element, limit, lambda i, x: int((i + 1.5) * _G16[x]) + 1, False)


def alpha(element: int, limit: int) -> list[int]:
    a = 0.75
    c = 1.0 / a - 0.5
    return _walk(
        element,
        limit,
        lambda i, x: int((i + c) * (((x + 1) * _INV_2_32) ** -a - 1.0)) + 1,
        True,
    )


def _patterns(segment: int, start: int, stop: int) -> list[tuple[int, ...]]:
    """4,096 draws of the production process restricted to [start, stop)."""
    out = []
    for p in range(4096):
        seed = (segment << 16 | p).to_bytes(8, "little")
        hits = [
            i
            for i in digest.indices(int.from_bytes(seed, "little") | 1, stop)
            if i >= start
        ]
        out.append(tuple(hits))
    return out


_SEGMENTS = [
    (52, _patterns(0, 1, 16)),
    (40, _patterns(1, 16, 256)),
    (28, _patterns(2, 256, 4096)),
]


def tables(element: int, limit: int) -> list[int]:
    out = [0]
    for shift, table in _SEGMENTS:
        out += [i for i in table[(element >> shift) & 4095] if i < limit]
    return out


class _Folded(Digest):
    """A digest whose fold walks ``mapping`` (production's inlines its own),
    its symbols kept in Python lists with production's arithmetic (sums), so
    that production's ``peel`` decodes them: how many symbols a difference
    needs depends on the mapping only."""

    def __init__(self, max_symbols: int, mapping: Mapping) -> None:
        super().__init__(max_symbols)
        self.mapping = mapping
        self._counts = [0] * max_symbols
        self._sums = [0] * max_symbols
        self._checks = [0] * max_symbols

    def toggle(self, changes: Sequence[tuple[int, int]]) -> None:
        count, sums, checks = self._counts, self._sums, self._checks
        for element, sign in changes:
            check = digest._checksum(element)
            for i in self.mapping(element, self.max_symbols):
                count[i] += sign
                sums[i] = (sums[i] + sign * element) % 2**64
                checks[i] = (checks[i] + sign * check) % 2**32
            self.size += sign

    def symbols(self, start: int, stop: int) -> list[Symbol]:
        return [
            Symbol(self._counts[i], self._sums[i], self._checks[i])
            for i in range(max(0, start), min(stop, self.max_symbols))
        ]


def _fold_tables(changes: list[tuple[int, int]]) -> None:
    """The ``tables`` fold as a replacement would inline it (timing only)."""
    count, xc = [0] * SYMBOLS, [0] * SYMBOLS
    mix = digest._checksum
    for element, sign in changes:
        both = element | (mix(element) << 64)
        count[0] += sign
        xc[0] ^= both
        for shift, table in _SEGMENTS:
            for i in table[(element >> shift) & 4095]:
                count[i] += sign
                xc[i] ^= both


def _fold_walk(gap_lut: bool) -> Callable[[list[tuple[int, int]]], None]:
    """The ``lut``/``alpha`` folds inlined like production (timing only)."""

    def fold(changes: list[tuple[int, int]]) -> None:
        count, xc, limit = [0] * SYMBOLS, [0] * SYMBOLS, SYMBOLS
        check, blake2b, g = digest._checksum, hashlib.blake2b, _G16
        a = 0.75
        c = 1.0 / a - 0.5
        for element, sign in changes:
            both = element | (check(element) << 64)
            seed = element.to_bytes(8, "little")
            count[0] += sign
            xc[0] ^= both
            i = 0
            block = 0
            while i < limit:
                raw = blake2b(seed, digest_size=64, salt=_SALTS[block]).digest()
                if gap_lut:
                    for x in _U16(raw):
                        i += int((i + 1.5) * g[x]) + 1
                        if i >= limit:
                            break
                        count[i] += sign
                        xc[i] ^= both
                else:
                    for x in _U32(raw):
                        i += int((i + c) * (((x + 1) * _INV_2_32) ** -a - 1.0)) + 1
                        if i >= limit:
                            break
                        count[i] += sign
                        xc[i] ^= both
                block += 1

    return fold


def _fold_production(changes: list[tuple[int, int]]) -> None:
    Digest(SYMBOLS).toggle(changes)


# --- vectorised folds (numpy) ---

_SLICE = 512  # the node folds in slices of antientropy_fold_batch


def _np_walk(np: Any, factors: Any, n: int) -> tuple[Any, Any]:
    """(row, index) pairs of the gap walk, column by column over all rows:
    the same floats as ``indices()``, so the same indices."""
    i = np.zeros(n, dtype=np.float64)
    alive = np.arange(n)
    rows, idx = [alive], [np.zeros(n, dtype=np.int64)]
    for k in range(factors.shape[1]):
        i = i + np.floor((i + 1.5) * factors[alive, k]) + 1.0
        keep = i < SYMBOLS
        alive, i = alive[keep], i[keep]
        if not alive.size:
            return np.concatenate(rows), np.concatenate(idx)
        rows.append(alive)
        idx.append(i.astype(np.int64))
    raise RuntimeError("walk longer than the uniforms drawn")


def _np_scatter(np: Any, changes: list[tuple[int, int]], rows: Any, idx: Any) -> Any:
    elements = np.array([e for e, _ in changes], dtype=np.uint64)
    signs = np.array([s for _, s in changes], dtype=np.int64)
    checks = np.array([digest._checksum(e) for e, _ in changes], dtype=np.uint64)
    count = np.zeros(SYMBOLS, dtype=np.int64)
    xor = np.zeros(SYMBOLS, dtype=np.uint64)
    chk = np.zeros(SYMBOLS, dtype=np.uint64)
    np.add.at(count, idx, signs[rows])
    np.bitwise_xor.at(xor, idx, elements[rows])
    np.bitwise_xor.at(chk, idx, checks[rows])
    return count, xor, chk


def scheme1(element: int, limit: int) -> list[int]:
    """Scheme 1's mapping: production's gap law over BLAKE2b uniforms."""
    return _walk(
        element,
        limit,
        lambda i, x: int((i + 1.5) * (1.0 / math.sqrt((x + 1) * _INV_2_32) - 1.0)) + 1,
        True,
    )


def _fold_scheme1(changes: list[tuple[int, int]]) -> Any:
    """Scheme 1's fold, vectorised per slice: BLAKE2b per element stays in
    Python (hashlib has no batch call), the walk and the XOR updates run in
    numpy. Returns the last slice's symbols (for the check at start)."""
    import numpy as np

    blake2b, s0, s1 = hashlib.blake2b, _SALTS[0], _SALTS[1]
    out = None
    for at in range(0, len(changes), _SLICE):
        part = changes[at : at + _SLICE]
        raw = b"".join(
            blake2b(seed, digest_size=64, salt=s0).digest()
            + blake2b(seed, digest_size=64, salt=s1).digest()
            for seed in (e.to_bytes(8, "little") for e, _ in part)
        )
        u = np.frombuffer(raw, dtype="<u4").reshape(len(part), 32)
        factors = 1.0 / np.sqrt((u + 1.0) * _INV_2_32) - 1.0
        rows, idx = _np_walk(np, factors, len(part))
        out = _np_scatter(np, part, rows, idx)
    return out


def _scheme1_matches_its_mapping() -> bool:
    """The scheme 1 fold must hit the symbols :func:`scheme1` names."""
    rng = random.Random(7)
    part = [(rng.getrandbits(64) | 1, 1) for _ in range(_SLICE)]
    count = _fold_scheme1(part)[0]
    expected = [0] * SYMBOLS
    for element, _ in part:
        for i in scheme1(element, SYMBOLS):
            expected[i] += 1
    return [int(c) for c in count] == expected


FOLDS = {
    "production": _fold_production,
    "lut": _fold_walk(True),
    "tables": _fold_tables,
    "alpha": _fold_walk(False),
}
MAPPINGS: dict[str, Mapping] = {
    "production": digest.indices,
    "lut": lut,
    "tables": tables,
    "alpha": alpha,
}
try:
    import numpy  # noqa: F401
except ImportError:  # the numpy variants are measured only where it is installed
    pass
else:
    FOLDS["scheme 1"] = _fold_scheme1
    MAPPINGS["scheme 1"] = scheme1


def peel_cost(name: str, d: int, trials: int) -> list[float]:
    """Symbols needed per differing element, ``trials`` times."""
    mapping = MAPPINGS[name]
    rng = random.Random(d)
    saved = digest.indices
    digest.indices = mapping  # peel() walks the mapping to remove what it found
    try:
        out = []
        for _ in range(trials):
            ours = _Folded(SYMBOLS, mapping)
            ours.toggle([(rng.getrandbits(64) | 1, 1) for _ in range(d)])
            empty = [Symbol(0, 0, 0)] * SYMBOLS
            m, step = 1, max(1, d // 50)
            while m <= SYMBOLS and digest.peel(ours.symbols(0, m), empty[:m]) is None:
                m += step
            out.append(m / d if m <= SYMBOLS else math.inf)
        return out
    finally:
        digest.indices = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--elements", type=int, default=5000)
    parser.add_argument(
        "--sizes",
        default="3,10,100,1000,2000",
        help="differences to peel, comma-separated",
    )
    args = parser.parse_args()
    if "scheme 1" in FOLDS and not _scheme1_matches_its_mapping():
        raise SystemExit("the scheme 1 fold does not walk scheme1()'s indices")
    rng = random.Random(1)
    changes = [(rng.getrandbits(64) | 1, 1) for _ in range(args.elements)]
    times: dict[str, list[float]] = {name: [] for name in FOLDS}
    for _ in range(args.reps):  # alternating: noise hits every variant alike
        for name, fold in FOLDS.items():
            start = time.process_time()
            fold(changes)
            times[name].append(1e6 * (time.process_time() - start) / len(changes))
    sizes = [int(d) for d in args.sizes.split(",")]
    print(
        f"fold: µs of CPU per element, median [min..max] of {args.reps}; "
        f"peel: symbols per differing element, median / worst of {args.trials}"
    )
    print()
    print(
        "| variant | symbols per element | fold µs | "
        + " | ".join(f"d={d}" for d in sizes)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(sizes))
    probe = [rng.getrandbits(64) | 1 for _ in range(2000)]
    for name in FOLDS:
        t = times[name]
        per = statistics.mean(len(MAPPINGS[name](e, SYMBOLS)) for e in probe)
        cells = []
        for d in sizes:
            cost = peel_cost(name, d, args.trials)
            worst = "fail" if math.isinf(max(cost)) else f"{max(cost):.2f}"
            cells.append(f"{statistics.median(cost):.2f} / {worst}")
        print(
            f"| {name} | {per:.1f} | {statistics.median(t):.2f} "
            f"[{min(t):.2f}..{max(t):.2f}] | " + " | ".join(cells) + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Why the digest fold costs what it does: the production index walk against
three cheaper-looking mappings, on fold CPU and on peeling efficiency.

The fold (``Digest.toggle``) is the largest single item of a replica's CPU
under batch load (docs/benchmarks.md): every element lands in ~16 symbols,
and each of them is a few Python-level operations. The variants here were
tried as replacements and are kept only as evidence (none is used):

* ``lut``: the same gap process, its ``1/sqrt(u) - 1`` read from a 65,536-entry
  table of 16-bit uniforms instead of computed;
* ``tables``: each element's indices read from precomputed patterns, one per
  segment ``[1,16) [16,256) [256,4096)``, picked by 12 bits of the element:
  the walk becomes a plain loop over a tuple, but elements that share a
  pattern share all its symbols;
* ``alpha``: index ``i`` hit with probability ``1/(1 + 0.75 i)`` instead of
  ``1/(1 + i/2)``: fewer symbols per element (~11.5 instead of ~16).

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
from collections.abc import Callable, Iterable
from pathlib import Path

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
    """A digest whose fold walks ``mapping`` (the production one inlines it)."""

    def __init__(self, max_symbols: int, mapping: Mapping) -> None:
        super().__init__(max_symbols)
        self.mapping = mapping

    def toggle(self, changes: Iterable[tuple[int, int]]) -> None:
        count, xc, limit = self._count, self._xc, self.max_symbols
        one = Digest(1)
        for element, sign in changes:
            one.toggle([(element, 1)])
            both = element | (one.symbols(0, 1)[0].check << 64)
            one.toggle([(element, -1)])
            for i in self.mapping(element, limit):
                count[i] += sign
                xc[i] ^= both
            self.size += sign


def _fold_tables(changes: list[tuple[int, int]]) -> None:
    """The ``tables`` fold as a replacement would inline it (timing only)."""
    d = Digest(SYMBOLS)
    count, xc = d._count, d._xc
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
        d = Digest(SYMBOLS)
        count, xc, limit = d._count, d._xc, SYMBOLS
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
    args = parser.parse_args()
    rng = random.Random(1)
    changes = [(rng.getrandbits(64) | 1, 1) for _ in range(args.elements)]
    times: dict[str, list[float]] = {name: [] for name in FOLDS}
    for _ in range(args.reps):  # alternating: noise hits every variant alike
        for name, fold in FOLDS.items():
            start = time.process_time()
            fold(changes)
            times[name].append(1e6 * (time.process_time() - start) / len(changes))
    sizes = [3, 10, 100, 1000, 2000]
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

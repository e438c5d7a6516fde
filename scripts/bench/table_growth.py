"""Where a growing route table stalls: the slowest pushed batches while a
receiver's table grows from empty, and the table size at each.

CPython grows a dict by rebuilding it once it is two-thirds full; the route
table keeps three dicts of one entry per key (key -> route, key -> element,
element -> key), so all three rebuild at the same sizes (2^k * 2/3: 87,381,
174,762, 349,525, 699,050 ...), with the loop held. Every replica holds the
same table, so in a mesh they all stall at about the same moment. This is
what tails the replication lag of ``routes_throughput.py`` steps whose keys
are all new (docs/benchmarks.md, "Thirteenth round"); a table that holds
steady (``--keyspace``) never rebuilds.

Each batch is applied as a receiver applies a push (``apply_many``), its
digest folded after it; the batch's time is reported with the table's size
before it. Medians of ``--reps`` fresh tables per rank.

Run: python scripts/bench/table_growth.py [--routes 800000] [--batch 1000] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mesh.core.routes import Route, RouteTable, Version


def grow(n: int, batch: int) -> list[tuple[float, int]]:
    """(seconds, table size before) of every batch, filling to ``n``."""
    table = RouteTable(origin="a", max_routes=n, hlc_max_skew_ms=10**9)
    hlc = 1 << 40
    out = []
    for start in range(0, n, batch):
        routes = [
            Route(
                f"w-1-{i}", "10.0.0.1:8080", {"bench": "wrk"}, Version(0, hlc + i, "n2")
            )
            for i in range(start, min(n, start + batch))
        ]
        began = time.perf_counter()
        table.apply_many(routes, wall_ms=1 << 30, horizon_ms=None)
        table.fold(table.pending_folds())
        out.append((time.perf_counter() - began, start))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=800_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--top", type=int, default=6, help="slowest batches shown")
    args = ap.parse_args()
    runs = [grow(args.routes, args.batch) for _ in range(args.reps)]
    typical = statistics.median(s for run in runs for s, _ in run)
    print(
        f"{args.routes:,} routes in batches of {args.batch:,}, {args.reps} reps: "
        f"median batch {typical * 1000:.1f} ms"
    )
    print()
    print("| rank | slowest batch ms, median [min..max] | table size before it |")
    print("|---|---|---|")
    ranked = [sorted(run, reverse=True)[: args.top] for run in runs]
    for rank in range(args.top):
        times = [r[rank][0] * 1000 for r in ranked]
        sizes = sorted({r[rank][1] for r in ranked})
        print(
            f"| {rank + 1} | {statistics.median(times):.1f} "
            f"[{min(times):.1f}..{max(times):.1f}] | "
            + ", ".join(f"{s:,}" for s in sizes)
            + " |"
        )


if __name__ == "__main__":
    main()

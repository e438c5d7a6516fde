"""CPU per route of storing new routes against rewriting held ones, in
process: pushed batches (``apply_many``, what every replica runs) and batch
calls (``write_many``, the writer's core step), on a table already holding
``--routes`` routes.

A fleet's table holds steady once it is full of its sandboxes: most writes
then replace a route (a rewrite, or a delete's tombstone), so their path
matters as much as the new-key path the unique-key throughput steps measure.

``--tree DIR`` imports ``mesh`` from another source tree (``git archive REV |
tar -x -C DIR``), to compare two trees by running this script once for each,
alternately. Medians of ``--reps`` batches, digest folded between them
(not timed: ``route_path_cost.py`` measures the fold).

Run: python scripts/bench/route_rewrite_cost.py [--tree DIR] [--routes 100000]
     [--batch 1000] [--reps 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[2]))
    ap.add_argument("--routes", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    sys.path.insert(0, args.tree)
    from mesh.core.routes import Route, RouteTable, Version, Write

    n, size = args.batch, args.routes
    wall_ms = 1 << 30
    table = RouteTable(origin="a", max_routes=10 * size, hlc_max_skew_ms=10**9)
    hlc = 1 << 40
    for start in range(0, size, n):
        table.apply_many(
            [
                Route(
                    f"k{i}",
                    "10.0.0.1:8080",
                    {"bench": "wrk"},
                    Version(0, hlc + i, "n2"),
                )
                for i in range(start, start + n)
            ],
            wall_ms=wall_ms,
            horizon_ms=None,
        )
    table.fold(table.pending_folds())
    hlc += size
    times: dict[str, list[float]] = {
        "pushed, new keys": [],
        "pushed, rewrites": [],
        "batch call, new keys": [],
        "batch call, rewrites": [],
    }

    def timed(name: str, step: Callable[..., object], batch: list[Any]) -> None:
        began = time.perf_counter()
        if step == table.apply_many:
            step(batch, wall_ms=wall_ms, horizon_ms=None)
        else:
            step(batch, wall_ms=wall_ms)
        times[name].append((time.perf_counter() - began) / n)

    for rep in range(args.reps):
        base = rep * n % size
        fresh = [
            Route(
                f"n{rep}-{i}",
                "10.0.0.1:8080",
                {"bench": "wrk"},
                Version(0, hlc + i, "n2"),
            )
            for i in range(n)
        ]
        hlc += n
        rewrites = [
            Route(f"k{i}", "10.0.0.2:8080", {"bench": "wrk"}, Version(0, hlc + i, "n3"))
            for i in range(base, base + n)
        ]
        hlc += n
        new_puts = [
            Write(f"m{rep}-{i}", "10.0.0.1:8080", {"bench": "wrk"}) for i in range(n)
        ]
        puts = [
            Write(f"k{i}", "10.0.0.3:8080", {"bench": "wrk"})
            for i in range(base, base + n)
        ]
        timed("pushed, new keys", table.apply_many, fresh)
        timed("pushed, rewrites", table.apply_many, rewrites)
        timed("batch call, new keys", table.write_many, new_puts)
        timed("batch call, rewrites", table.write_many, puts)
        table.fold(table.pending_folds())
    print(f"{args.tree}: {size:,} routes held, batches of {n:,}, {args.reps} reps")
    print()
    print("| step | µs per route, median [min..max] |")
    print("|---|---|")
    for name, values in times.items():
        us = [v * 1e6 for v in values]
        print(
            f"| {name} | {statistics.median(us):.2f} [{min(us):.2f}..{max(us):.2f}] |"
        )


if __name__ == "__main__":
    main()

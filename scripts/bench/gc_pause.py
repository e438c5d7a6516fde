"""How long one full collection of CPython's cyclic collector holds an agent's
loop once its route table is large, on code trees side by side.

A full collection walks every object the collector tracks; nothing else runs
meanwhile (no probe answered, no push applied). CPython runs one whenever the
objects that survived into the oldest generation grew by a quarter, so a
growing table pays it again and again. Each measurement runs in a fresh
process that imports ``mesh`` from its tree, fills a receiver's table through
the receive path (decode pushed batches of ``--batch`` routes, apply them, fold
them), with the collector as ``mesh agent`` sets it, then times
``gc.collect()`` three times and counts the objects the collector tracks;
it also reports the fill's CPU per route (full collections while the table
grew are part of it) and the process's peak RSS.
Trees alternate, ``--reps`` times; medians [min..max].

Run: python scripts/bench/gc_pause.py --trees before=/tmp/before,after=. \\
         --routes 200000,1000000 --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import gc, json, random, resource, sys, time
import mesh.cli
from mesh.codec_routes import decode_routes, encode_routes
from mesh.config import Config
from mesh.core.node import NodeCore
from mesh.core.routes import Route, Version

n, batch = int(sys.argv[1]), int(sys.argv[2])
gc.freeze()  # as mesh agent does once its libraries are imported
# the agent's own thresholds in trees that set them (until session 13)
gc.set_threshold(*getattr(mesh.cli, "_GC_THRESHOLDS", gc.get_threshold()))
config = Config.lan(name="a")
core = NodeCore(config, addr=("10.0.0.1", 1), rng=random.Random(1), now=0.0)
wall = time.time()
hlc = int(wall * 1000) << 16
made = 0
began = time.process_time()
while made < n:
    routes = [
        Route(f"w-1-{i}", "10.0.0.1:8080", {"bench": "wrk"}, Version(0, hlc + i, "n2"))
        for i in range(made, min(n, made + batch))
    ]
    _, rows = decode_routes(encode_routes("n2", routes), max_routes=batch)
    core.receive_routes(rows, 1.0, wall)
    core.routes.fold(len(rows))
    made += len(routes)
del routes, rows
fill = time.process_time() - began
pauses = []
for _ in range(3):
    start = time.perf_counter()
    gc.collect()
    pauses.append(time.perf_counter() - start)
print(json.dumps({
    "pauses_ms": [1000 * p for p in pauses],
    "tracked": len(gc.get_objects()),
    "routes": len(core.routes),
    "fill_us": 1e6 * fill / n,
    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def run(tree: Path, n: int, batch: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(batch)],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["routes"] == n, doc
    return {
        # the first collection after the fill is the one the agent would
        # have paid anyway; the next ones are what it pays from then on
        "pause_ms": statistics.median(doc["pauses_ms"][1:]),
        "tracked": doc["tracked"],
        # CPU per route of the fill (building and encoding the batches
        # included), full collections while the table grew among it
        "fill_us": doc["fill_us"],
        "rss_mb": doc["rss_mb"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", required=True, help="NAME=DIR,NAME=DIR")
    ap.add_argument("--routes", default="200000,1000000")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    trees = [
        (name, Path(path).resolve())
        for name, path in (item.split("=", 1) for item in args.trees.split(","))
    ]
    sizes = [int(x) for x in args.routes.split(",")]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for rep in range(args.reps):
        for n in sizes:
            for name, tree in trees if rep % 2 == 0 else reversed(trees):
                r = run(tree, n, args.batch)
                results.setdefault((name, n), []).append(r)
                print(f"rep {rep} {name} {n} routes: {r}", flush=True)
    print()
    print(f"Full collection with a table of N routes, {args.reps} reps:")
    print()
    columns = (
        ("pause_ms", "pause ms", 1),
        ("tracked", "tracked objects", 0),
        ("fill_us", "fill µs/route", 2),
        ("rss_mb", "peak RSS MB", 0),
    )
    print(
        "| routes | "
        + " | ".join(f"{name}: {title}" for _, title, _ in columns for name, _ in trees)
        + " |"
    )
    print("|---" * (1 + len(columns) * len(trees)) + "|")
    for n in sizes:
        cells = []
        for key, _, digits in columns:
            for name, _ in trees:
                vals = [r[key] for r in results[(name, n)]]
                mid, low, high = statistics.median(vals), min(vals), max(vals)
                cells.append(
                    f"{mid:,.{digits}f} [{low:,.{digits}f}..{high:,.{digits}f}]"
                )
        print(f"| {n:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

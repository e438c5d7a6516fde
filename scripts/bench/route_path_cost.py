"""CPU per route on a receiving replica, in process: decode a pushed batch,
apply it, fold it into the anti-entropy digest.

What every replica pays for every route written anywhere in the mesh (the
writer pays the same fold), without HTTP: the floor under the batch
throughput of ``routes_throughput.py``. Medians over repetitions.

Run: python scripts/bench/route_path_cost.py [--routes 20000] [--reps 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mesh.codec_routes import decode_routes, encode_routes
from mesh.config import Config
from mesh.core.node import NodeCore
from mesh.core.routes import Route, Version


def once(n: int, batch: int) -> tuple[float, float, float]:
    """Microseconds per route: decode, apply, fold."""
    core = NodeCore(
        Config.lan(name="a"), addr=("10.0.0.1", 1), rng=random.Random(1), now=0.0
    )
    wall = time.time()
    hlc = int(wall * 1000) << 16
    routes = [
        Route(f"w-1-{i}", "10.0.0.1:8080", {"bench": "wrk"}, Version(0, hlc + i, "n2"))
        for i in range(n)
    ]
    bodies = [encode_routes("n2", routes[i : i + batch]) for i in range(0, n, batch)]
    t0 = time.process_time()
    decoded = [decode_routes(b, max_routes=batch)[1] for b in bodies]
    t1 = time.process_time()
    for rs in decoded:
        core.receive_routes(rs, 1.0, wall)
    t2 = time.process_time()
    core.routes.fold(n)
    t3 = time.process_time()
    return tuple(1e6 * d / n for d in (t1 - t0, t2 - t1, t3 - t2))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    runs = [once(args.routes, args.batch) for _ in range(args.reps)]
    print(
        f"{args.routes} routes in batches of {args.batch}, {args.reps} reps; "
        "µs of CPU per route, median [min..max]"
    )
    print()
    print("| step | µs per route |")
    print("|---|---|")
    for i, name in enumerate(("decode (codec)", "apply (RouteTable)", "digest fold")):
        values = [r[i] for r in runs]
        print(
            f"| {name} | {statistics.median(values):.2f} "
            f"[{min(values):.2f}..{max(values):.2f}] |"
        )


if __name__ == "__main__":
    main()

"""Instructions per route on the per-route path, counted by callgrind: the
receiver's decode and apply, the writer's batch call (JSON, item checks, core
write, results and their JSON, push bodies for 4 peers), and the digest fold,
for one or more source trees side by side.

Why instructions: this machine is shared and its speed moves by 2x within a
session, so CPU seconds of two trees measured minutes apart compare badly;
callgrind's instruction count is the same for the same code and inputs
whatever else runs. Each part runs at two sizes and the difference is divided
by the routes added, so start-up and imports cancel out.

Run: python scripts/bench/route_path_instr.py [--trees before=/tmp/t,after=.]
     [--small 200] [--large 2200]   (valgrind required; ~1 min per part and tree)
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from route_bodies import put_bodies

PARTS = ("receive", "write", "fold")


def workload(tree: str, part: str, n: int) -> None:
    """One part for ``n`` routes, in batches of 100 (run under callgrind)."""
    sys.path.insert(0, tree)
    from mesh.codec_routes import decode_routes, encode_routes
    from mesh.config import Config
    from mesh.core.node import NodeCore
    from mesh.core.routes import Route, Version
    from mesh.shell import routes_api

    core = NodeCore(
        Config.lan(name="a"), addr=("10.0.0.1", 1), rng=random.Random(1), now=0.0
    )
    wall = 1.7e9
    hlc = int(wall * 1000) << 16
    if part in ("receive", "fold"):
        routes = [
            Route(
                f"w-1-{i}", "10.0.0.1:8080", {"bench": "wrk"}, Version(0, hlc + i, "n2")
            )
            for i in range(n)
        ]
        bodies = [encode_routes("n2", routes[i : i + 100]) for i in range(0, n, 100)]
        for body in bodies:
            core.receive_routes(decode_routes(body, max_routes=100)[1], 1.0, wall)
    else:
        bodies = put_bodies(n, 100)
        for b, body in enumerate(bodies):
            items = json.loads(body)["put"]
            writes = [routes_api._batch_item(item, deleted=False) for item in items]
            outcomes, _ = core.write_routes(writes, 1.0 + b, wall)  # type: ignore[arg-type]
            results = []
            for write, outcome in zip(writes, outcomes, strict=True):
                status, answer = routes_api._result(outcome)
                results.append({"key": write.key, "status": status, **answer})  # type: ignore[union-attr]
            json.dumps({"results": results}, separators=(",", ":")).encode()
            stored = [o.route for o in outcomes if o.route is not None]
            for _ in range(4):
                encode_routes("a", stored)
    if part == "fold":
        core.routes.fold(core.routes.pending_folds())


def count(tree: str, part: str, n: int) -> int:
    """Instructions of one run of ``workload`` under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/cg.out",
                sys.executable,
                __file__,
                "--run",
                tree,
                part,
                str(n),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    match = re.search(r"Collected : (\d+)", proc.stderr)
    if match is None:
        raise SystemExit(f"no instruction count from callgrind:\n{proc.stderr[-2000:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trees", default=f"this={Path(__file__).resolve().parents[2]}"
    )
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=2200)
    parser.add_argument(
        "--run", nargs=3, metavar=("TREE", "PART", "N"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.run:
        tree, part, n = args.run
        workload(tree, part, int(n))
        return
    trees = [item.split("=", 1) for item in args.trees.split(",")]
    added = args.large - args.small
    per: dict[str, dict[str, float]] = {}
    for part in PARTS:
        for name, path in trees:
            path = str(Path(path).resolve())
            big, small = count(path, part, args.large), count(path, part, args.small)
            per.setdefault(name, {})[part] = (big - small) / added
            print(
                f"{name} {part}: {per[name][part]:,.0f} instructions per route",
                flush=True,
            )
    print()
    print("| part, instructions per route | " + " | ".join(n for n, _ in trees) + " |")
    print("|---|" + "---|" * len(trees))
    for label, f in (
        ("a receiver: decode and apply", lambda p: p["receive"]),
        ("the fold (every replica)", lambda p: p["fold"] - p["receive"]),
        ("the writer's batch call, without its fold", lambda p: p["write"]),
        (
            "mesh-wide: writer + 4 receivers + 5 folds",
            lambda p: p["write"] + 4 * p["receive"] + 5 * (p["fold"] - p["receive"]),
        ),
    ):
        print(
            f"| {label} | " + " | ".join(f"{f(per[n]):,.0f}" for n, _ in trees) + " |"
        )


if __name__ == "__main__":
    main()

"""CPU per route in process, without HTTP: on a receiving replica (decode a
pushed batch, apply it, fold it into the anti-entropy digest) and on the
writer (the batch call's JSON, its item checks, the core write, the fold, the
results and their JSON, and the push body, built once for every peer: the
pusher's cache; until session 13 this built it 4 times).

What every replica pays for every route written anywhere in the mesh, and
what the replica that took the write pays besides: the floor under the batch
throughput of ``routes_throughput.py``. Medians over repetitions.

Run: python scripts/bench/route_path_cost.py [--routes 20000] [--reps 5]
     python scripts/bench/route_path_cost.py --routes 200000 --reps 2 \\
         --gc default,agent,off
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from route_bodies import put_bodies

from mesh.codec_routes import decode_routes, encode_routes
from mesh.config import Config
from mesh.core.node import NodeCore
from mesh.core.routes import Route, Version, Write
from mesh.shell import routes_api
from mesh.shell.asgi import json_response

RECEIVER = ("decode (codec)", "apply (RouteTable)", "digest fold")
WRITER = (
    "JSON body and item checks (API)",
    "core write",
    "digest fold",
    "results",
    "results JSON",
    "push body (one for all peers)",
)


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


def writer(n: int, batch: int) -> tuple[float, ...]:
    """Microseconds per route of the writer's steps (see WRITER). The core
    here knows no peers, so its write queues nothing: the 4 peers' queues
    are not in "core write" (a dict entry per peer per route)."""
    core = NodeCore(
        Config.lan(name="a"), addr=("10.0.0.1", 1), rng=random.Random(1), now=0.0
    )
    wall = time.time()
    bodies = put_bodies(n, batch)
    spent = [0.0] * len(WRITER)
    clock = time.process_time
    for b, body in enumerate(bodies):
        t0 = clock()
        # as the batch handler does: the typed decode, else item by item
        writes = routes_api._typed_puts(body) or [
            routes_api._batch_item(item, deleted=False)
            for item in json.loads(body)["put"]
        ]
        t2 = clock()
        assert all(isinstance(w, Write) for w in writes)
        outcomes, _ = core.write_routes(writes, 1.0 + b, wall)  # type: ignore[arg-type]
        t3 = clock()
        core.routes.fold(batch)
        t4 = clock()
        # as the batch handler answers a stored live route (every one here):
        # _stored, one dict per item (this step built each answer with
        # _result and a merge until session 13, which the handler no longer does)
        results = [routes_api._stored(o.route) for o in outcomes]  # type: ignore[arg-type]
        t5 = clock()
        json_response(200, {"results": results})
        t6 = clock()
        routes = [o.route for o in outcomes if o.route is not None]
        encode_routes("a", routes)  # (one body for all peers: the pusher's cache)
        t7 = clock()
        for i, d in enumerate((t2 - t0, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
            spent[i] += d
    return tuple(1e6 * d / n for d in spent)


def _table(title: str, names: tuple[str, ...], runs: list[tuple[float, ...]]) -> None:
    print()
    print(f"| {title} | µs per route |")
    print("|---|---|")
    for i, name in enumerate(names):
        values = [r[i] for r in runs]
        print(
            f"| {name} | {statistics.median(values):.2f} "
            f"[{min(values):.2f}..{max(values):.2f}] |"
        )
    totals = [sum(r) for r in runs]
    print(
        f"| total | {statistics.median(totals):.2f} "
        f"[{min(totals):.2f}..{max(totals):.2f}] |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--gc",
        default="",
        help="collector settings to compare on the receiver, alternating: "
        "comma-separated of default, agent (mesh agent's), off; the writer "
        "is then not run",
    )
    args = parser.parse_args()
    if args.gc:
        _compare_collectors(args)
        return
    runs, wruns = [], []
    for _ in range(args.reps):  # alternating: noise hits both sides alike
        runs.append(once(args.routes, args.batch))
        wruns.append(writer(args.routes, args.batch))
    print(
        f"{args.routes} routes in batches of {args.batch}, {args.reps} reps; "
        "µs of CPU per route, median [min..max]"
    )
    _table("each receiver", RECEIVER, runs)
    _table("the writer", WRITER, wruns)


def _compare_collectors(args: argparse.Namespace) -> None:
    """The receiver's steps under each collector setting, alternating. Until
    session 13 the table's entries were named tuples the collector tracked,
    so a full collection's cost grew with the table (``--routes 200000``);
    on a tree before that this still shows it."""
    import mesh.cli

    # the agent set its own thresholds until session 13; since, CPython's
    agent = getattr(mesh.cli, "_GC_THRESHOLDS", (700, 10, 10))
    settings = {"default": (700, 10, 10), "agent": agent}
    names = args.gc.split(",")
    runs: dict[str, list[tuple[float, ...]]] = {name: [] for name in names}
    full: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    began = [0.0]
    spent = [0, 0.0]  # full collections, their CPU seconds

    def watch(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            began[0] = time.process_time()
        else:
            spent[0] += 1
            spent[1] += time.process_time() - began[0]

    gc.callbacks.append(watch)
    for _ in range(args.reps):
        for name in names:
            gc.collect()
            spent[:] = [0, 0.0]
            if name == "off":
                gc.disable()
            else:
                gc.set_threshold(*settings[name])
            try:
                runs[name].append(once(args.routes, args.batch))
            finally:
                gc.enable()
                gc.set_threshold(*settings["default"])
            full[name].append((int(spent[0]), spent[1]))
    gc.callbacks.remove(watch)
    print(
        f"{args.routes} routes in batches of {args.batch}, {args.reps} reps "
        "alternating; µs of CPU per route, median [min..max]"
    )
    for name in names:
        _table(f"each receiver, collector {name}", RECEIVER, runs[name])
        shown = ", ".join(f"{n} taking {t:.2f} s" for n, t in full[name])
        print(f"full collections per repetition: {shown}")


if __name__ == "__main__":
    main()

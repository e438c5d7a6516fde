"""Instructions per route on the per-route path, counted by callgrind: the
receiver's decode and apply, the writer's batch call (JSON, item checks, core
write, results and their JSON, one push body: the pusher's cache shares it
among peers), and the digest fold, for one or more source trees side by side.

The request bodies are built beforehand and read from a file, so building
them counts for no tree. Why instructions: this machine is shared and its
speed moves by 2x within a session, so CPU seconds of two trees measured
minutes apart compare badly; callgrind's instruction count is the same for
the same code and inputs whatever else runs. Each part runs at two sizes and
the difference is divided by the routes added, so start-up and imports
cancel out.

Run: python scripts/bench/route_path_instr.py [--trees before=/tmp/t,after=.]
     [--small 200] [--large 10200] [--parts receive,fold]
     (valgrind; ~2 min per part and tree)
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgpack
from route_bodies import put_bodies

PARTS = ("receive", "write", "fold", "floor")


def pushed_bodies(n: int) -> list[bytes]:
    """``n`` routes as pushed route batches of 100 (``codec_routes``'s wire
    form, built here so that no tree's code builds them)."""
    from mesh.codec import PROTOCOL_VERSION

    hlc = int(1.7e12) << 16
    rows = [
        [f"w-1-{i}", "10.0.0.1:8080", {"bench": "wrk"}, 0, hlc + i, "n2", False]
        for i in range(n)
    ]
    return [
        msgpack.packb([PROTOCOL_VERSION, "n2", rows[i : i + 100]], use_bin_type=True)
        for i in range(0, n, 100)
    ]


def workload(tree: str, part: str, bodies_file: str) -> None:
    """One part over the bodies in ``bodies_file`` (run under callgrind).
    The cyclic collector is off: a full collection costs what the heap
    holds, not what the code does, and one more or less in either size of
    run moved a part's count by ~10 % (the agent's collector settings are
    measured in wall-clock terms, docs/benchmarks.md)."""
    gc.disable()
    sys.path.insert(0, tree)
    from mesh.codec_routes import decode_routes, encode_routes
    from mesh.config import Config
    from mesh.core.node import NodeCore
    from mesh.shell import routes_api

    bodies = msgpack.unpackb(Path(bodies_file).read_bytes())
    core = NodeCore(
        Config.lan(name="a"), addr=("10.0.0.1", 1), rng=random.Random(1), now=0.0
    )
    wall = 1.7e9
    if part in ("receive", "fold"):
        for body in bodies:
            core.receive_routes(decode_routes(body, max_routes=100)[1], 1.0, wall)
        if part == "fold":
            core.routes.fold(core.routes.pending_folds())
    elif part == "write":
        # as the batch handler of each tree does: its fast way to the writes
        # (typed decode since session 12, the column check before), the
        # item-by-item check otherwise, one result per item, one JSON body
        from mesh.shell.asgi import json_response

        typed = getattr(routes_api, "_typed_puts", None)
        at_once = getattr(routes_api, "_puts_at_once", None)
        for b, body in enumerate(bodies):
            writes = typed(body) if typed is not None else None
            if writes is None:
                items = json.loads(body)["put"]
                writes = (at_once(items) if at_once is not None else None) or [
                    routes_api._batch_item(item, deleted=False) for item in items
                ]
            outcomes, _ = core.write_routes(writes, 1.0 + b, wall)  # type: ignore[arg-type]
            results = [routes_api._stored(o.route) for o in outcomes]  # type: ignore[arg-type]
            json_response(200, {"results": results})
            stored = [o.route for o in outcomes if o.route is not None]
            encode_routes("a", stored)  # (one body for all peers: the pusher's cache)
    else:
        floor(bodies)


def floor(bodies: list[bytes]) -> None:
    """The least a receiver must do per pushed route in CPython, with no
    object, outcome, index or metric: unpack, check the key, order versions,
    store, hash the digest element (no fold). What a rewrite of the receive
    path down to bare tuples could at best reach."""
    import hashlib

    key_ok = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}").fullmatch
    table: dict[str, tuple[Any, ...]] = {}
    pending: dict[int, int] = {}
    blake2b = hashlib.blake2b
    for body in bodies:
        for key, target, meta, rev, hlc, origin, deleted in msgpack.unpackb(
            body, raw=False
        )[2]:
            if not key_ok(key) or type(target) is not str or type(meta) is not dict:
                raise ValueError(key)
            version = (rev, hlc, origin)
            current = table.get(key)
            if current is not None and current[0] >= version:
                continue
            table[key] = (version, target, meta, deleted)
            text = f"{key}\x00{rev:020d}.{hlc:020d}.{origin}"
            element = blake2b(text.encode(), digest_size=8).digest()
            pending[int.from_bytes(element, "little") or 1] = 1


def count(tree: str, part: str, n: int) -> int:
    """Instructions of one run of ``workload`` under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        bodies = put_bodies(n, 100) if part == "write" else pushed_bodies(n)
        Path(f"{tmp}/bodies").write_bytes(msgpack.packb(bodies, use_bin_type=True))
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
                f"{tmp}/bodies",
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
    # A run's start-up (imports) moves by 10-20 million instructions from one
    # run to the next, whatever the seed (session 12: the same tree's
    # receive part read 20,000-32,600 per route with 2,000 routes between
    # the sizes, its write part 59,472 and 62,684 with 10,000): read
    # differences under ~10 % as noise.
    parser.add_argument("--large", type=int, default=10200)
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="a subset of " + ",".join(PARTS)
    )
    parser.add_argument(
        "--run", nargs=3, metavar=("TREE", "PART", "BODIES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.run:
        tree, part, bodies_file = args.run
        workload(tree, part, bodies_file)
        return
    trees = [item.split("=", 1) for item in args.trees.split(",")]
    added = args.large - args.small
    per: dict[str, dict[str, float]] = {}
    parts = args.parts.split(",")
    for part in parts:
        for name, path in trees:
            path = str(Path(path).resolve())
            big, small = count(path, part, args.large), count(path, part, args.small)
            per.setdefault(name, {})[part] = (big - small) / added
            print(
                f"{name} {part}: {per[name][part]:,.0f} instructions per route",
                flush=True,
            )
    if set(parts) != set(PARTS):
        return  # the table needs every part
    print()
    print("| part, instructions per route | " + " | ".join(n for n, _ in trees) + " |")
    print("|---|" + "---|" * len(trees))
    for label, f in (
        ("a receiver: decode and apply", lambda p: p["receive"]),
        ("the fold (every replica)", lambda p: p["fold"] - p["receive"]),
        ("the writer's batch call, without its fold", lambda p: p["write"]),
        (
            "a receiver's floor in CPython (no objects), without the fold",
            lambda p: p["floor"],
        ),
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

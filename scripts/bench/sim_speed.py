"""How fast the simulator runs: N nodes of idle membership for T simulated seconds.

Usage: python scripts/bench/sim_speed.py [--nodes 1000] [--duration 600]
       [--profile lan] [--seed 1] [--json PATH]

The mesh is preloaded (``bootstrap="static"``: every table full, no join
traffic), so what is measured is steady state: each node probes one member per
``probe_interval`` (a ping and an ack, ~2 datagrams per node per second on lan)
plus the periodic push-pull exchanges. Prints a markdown table; ``--json``
also writes the numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time

from mesh.testing.simnet import SimNet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=600.0, help="simulated s")
    parser.add_argument("--profile", default="lan", choices=["lan", "local", "wan"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    sim = SimNet.cluster(
        args.nodes,
        seed=args.seed,
        profile=args.profile,
        bootstrap="static",
        net={"keep_events": False},
    )
    # The preloaded tables live for the whole run: keep the collector from
    # walking them again and again (a long-running process would do the same).
    gc.freeze()
    setup = time.perf_counter() - started

    cpu0 = time.process_time()
    started = time.perf_counter()
    sim.run_until(args.duration)
    run = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    stats = sim.stats

    result = {
        "nodes": args.nodes,
        "profile": args.profile,
        "seed": args.seed,
        "simulated_s": args.duration,
        "setup_wall_s": round(setup, 2),
        "run_wall_s": round(run, 2),
        "run_cpu_s": round(cpu, 2),
        "total_wall_s": round(setup + run, 2),
        "events": sim.events_processed,
        "events_per_s": round(sim.events_processed / run),
        "datagrams": stats["datagrams"],
        "datagrams_per_node_s": round(
            stats["datagrams"] / args.nodes / args.duration, 2
        ),
        "exchanges": stats["exchanges"],
        "speedup": round(args.duration * args.nodes / run),
        "views_agree": sim.views_agree(),
        "python": platform.python_version(),
    }
    rows = [
        ("nodes x simulated s", f"{args.nodes} x {args.duration:g} ({args.profile})"),
        ("setup (static preload)", f"{setup:.1f} s"),
        ("run, wall (cpu)", f"{run:.1f} s ({cpu:.1f} s)"),
        ("total wall", f"{setup + run:.1f} s"),
        ("heap events", f"{sim.events_processed:,}"),
        ("events / wall s", f"{result['events_per_s']:,}"),
        (
            "datagrams (per node per s)",
            f"{stats['datagrams']:,} ({result['datagrams_per_node_s']})",
        ),
        ("push-pull exchanges", f"{stats['exchanges']:,}"),
        ("node-seconds per wall s", f"{result['speedup']:,}"),
        ("all views agree at the end", str(result["views_agree"])),
    ]
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

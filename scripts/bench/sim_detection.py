"""Crash detection in the simulator, started the way the real-process benchmark
starts its agents: one node joins every ``--gap`` seconds (the first one is the
seed), then after ``--settle`` (+ a random part of a probe interval) a random
member other than the seed crashes (no TCP fallback: pure SWIM + Lifeguard).
Reports the time until every survivor has it dead, and the time of the first
suspicion (one probe of it failed), over ``--runs`` seeds.

    python scripts/bench/sim_detection.py --nodes 50 --runs 100

The same seed gives the same numbers; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mesh.core.effects import EventKind, MemberEvent
from mesh.testing.simnet import SimNet, node_address


def one(args: argparse.Namespace, seed: int) -> dict[str, float]:
    n = args.nodes
    rng = random.Random(f"detect/{seed}")
    sim = SimNet(
        seed,
        profile=args.profile,
        tcp_fallback_probe=False,
        delay=0.0002,
        jitter=0.0003,
    )
    sim.default_seeds = [node_address(0)]
    for i in range(1, n + 1):
        sim.add_node(f"n{i}")
        sim.run_for(args.gap)
    sim.run_until_converged(120)
    sim.run_for(args.settle + rng.random())
    victim = f"n{rng.randrange(2, n + 1)}"
    suspects: list[float] = []
    dead: dict[str, float] = {}

    def listen(now: float, observer: str, event: MemberEvent) -> None:
        if event.member.name != victim:
            return
        if event.kind is EventKind.SUSPECT:
            suspects.append(now)
        elif event.kind is EventKind.DEAD:
            dead.setdefault(observer, now)

    sim.listeners.append(listen)
    t0 = sim.now
    sim.crash(victim)
    end = t0 + 120
    while len(dead) < n - 1 and sim.now < end:
        sim.run_for(0.05)
    if len(dead) < n - 1:
        raise RuntimeError(f"seed {seed}: {victim} not dead everywhere")
    return {"detect_s": max(dead.values()) - t0, "first_suspect_s": min(suspects) - t0}


def stats(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {
        "median": statistics.median(s),
        "mean": statistics.mean(s),
        "p90": s[min(len(s) - 1, int(0.9 * len(s)))],
        "max": s[-1],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--gap", type=float, default=0.75, help="s between joins")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--profile", default="lan")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    rows = [one(args, seed) for seed in range(args.runs)]
    out: dict[str, Any] = {"args": vars(args)}
    for key in ("detect_s", "first_suspect_s"):
        out[key] = stats([r[key] for r in rows])
        q = out[key]
        print(
            f"N={args.nodes} {key:16} median {q['median']:.2f} mean {q['mean']:.2f}"
            f" p90 {q['p90']:.2f} max {q['max']:.2f}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

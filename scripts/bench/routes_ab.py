"""Before/after, side by side: the issue-3 route benchmarks on two code trees.

Runs ``routes_latency.py``, ``routes_lag.py`` and ``routes_throughput.py`` (one
run each per invocation, ``--runs 1``) alternately on each tree given with
``--trees NAME=DIR,...``, repeated ``--reps`` times in the order A B A B ..., so
machine noise (other jobs on the shared 2 cores) hits every tree alike. The
agents of an invocation import ``mesh`` from its tree: the benchmark process is
started in that directory, and ``python -m mesh`` puts the working directory
first on ``sys.path``. The benchmark scripts themselves are this directory's.

A "before" tree is any earlier commit, unpacked without touching the work tree:

    mkdir -p /tmp/before && git archive 3e34fb3 | tar -x -C /tmp/before
    python scripts/bench/routes_ab.py --trees before=/tmp/before,after=. \\
        --reps 3 --json bench-out/routes_ab.json

Reported per tree and figure: the median over repetitions with [min..max] of
each repetition's own figure (a p99 is a per-run p99), and the targets of
issue 3. Raw per-invocation outputs go to ``bench-out/routes_ab/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from routes_common import md_table, pct  # noqa: E402


def _spread(values: list[float], scale: float = 1000.0, digits: int = 1) -> str:
    vals = [v for v in values if v == v]
    if not vals:
        return "n/a"
    med = statistics.median(vals) * scale
    return (
        f"{med:.{digits}f} [{min(vals) * scale:.{digits}f}.."
        f"{max(vals) * scale:.{digits}f}]"
    )


def run_bench(
    script: str, tree: Path, out: Path, extra: list[str], timeout: float
) -> dict[str, Any] | None:
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE / script), "--runs", "1", "--json", str(out)]
    cmd += extra
    started = time.monotonic()
    with open(out.with_suffix(".txt"), "w") as log:
        proc = subprocess.run(
            cmd,
            cwd=tree,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    took = time.monotonic() - started
    print(f"  {script} in {tree}: exit {proc.returncode}, {took:.0f} s", flush=True)
    if proc.returncode != 0 or not out.exists():
        return None
    document: dict[str, Any] = json.loads(out.read_text())
    return document


def latency_figures(doc: dict[str, Any]) -> dict[str, float]:
    run = doc["runs"][0]
    c = run["conditions"]
    return {
        "put_median": c["healthy"]["median"],
        "put_p99": c["healthy"]["p99"],
        "paused_p99": c["paused"]["p99"],
        "p99_ratio": run["p99_ratio_paused_healthy"],
        "sync_median": c["sync_all"]["median"],
        "sync_p99": c["sync_all"]["p99"],
        "health_p99": c["health_get"]["p99"],
        "agents_cores": run["cpu"]["agents_cores"],
        "other_cores": run["cpu"]["other_cores"],
    }


def lag_figures(doc: dict[str, Any]) -> dict[str, float]:
    run = doc["runs"][0]
    phase = run["log"]
    lags = phase["log"]["per_write"]
    return {
        "lag_p50": pct(lags, 50),
        "lag_p99": pct(lags, 99),
        "lag_max": max(lags) if lags else float("nan"),
        "missing": float(phase["log"]["missing"]),
        "agents_cores": phase["cpu"]["agents_cores"],
        "other_cores": phase["cpu"]["other_cores"],
    }


def throughput_figures(doc: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for step in doc["steps"]:
        tag = f"i{step['interval']:g}_{step['mode']}{step['conns_per_node']}"
        out[f"{tag}_routes_per_s"] = step["accepted_routes_per_s"]
        out[f"{tag}_sync_lag_p99"] = step["sync_lag"]["p99"]
        out[f"{tag}_poll_lag_p99"] = step["lag"]["p99"]
        out[f"{tag}_errors"] = float(step["non2xx"] + step["socket_errors"])
        out[f"{tag}_agents_cores"] = step["cpu"]["agents_cores"]
        out[f"{tag}_other_cores"] = step["cpu"]["other_cores"]
        out[f"{tag}_avg_batch"] = step["push_avg_batch"]
    return out


def cpu_figures(doc: dict[str, Any]) -> dict[str, float]:
    run = doc["runs"][0]
    return {
        "cpu_per_route_ms": run["cpu_per_route_ms"] / 1000,
        "cpu_per_request_ms": run["cpu_per_request_ms"] / 1000,
        "capacity_routes_per_s": run["capacity_routes_per_s_2cores"],
        "api_p50": run["api_latency"]["median"],
        "api_p99": run["api_latency"]["p99"],
    }


BENCHES = {
    "cpu_single": ("routes_cpu.py", cpu_figures),
    "cpu_batch": ("routes_cpu.py", cpu_figures),
    "latency": ("routes_latency.py", latency_figures),
    "lag": ("routes_lag.py", lag_figures),
    "throughput": ("routes_throughput.py", throughput_figures),
}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trees", required=True, help="NAME=DIR,NAME=DIR")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--benches",
        default="cpu_single,cpu_batch,latency,lag,throughput",
        help="subset, in this order",
    )
    ap.add_argument(
        "--cpu-single-args",
        default="--mode single --rate 150 --duration 8",
        help="extra arguments of routes_cpu.py for cpu_single",
    )
    ap.add_argument(
        "--cpu-batch-args",
        default="--mode batch --batch 100 --rate 10 --duration 8",
        help="extra arguments of routes_cpu.py for cpu_batch",
    )
    ap.add_argument(
        "--latency-args",
        default="--rounds 4 --block 40",
        help="extra arguments of routes_latency.py",
    )
    ap.add_argument(
        "--lag-args",
        default="--nodes 20 --writes 150 --method log",
        help="extra arguments of routes_lag.py",
    )
    ap.add_argument(
        "--throughput-args",
        default="--intervals 0.02,0.1 --single-conns 16 --batch-conns 2 --duration 6",
        help="extra arguments of routes_throughput.py",
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="per invocation")
    ap.add_argument("--out-dir", default="bench-out/routes_ab")
    ap.add_argument(
        "--summarize",
        action="store_true",
        help="run nothing: tabulate the JSON outputs already in --out-dir",
    )
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    trees: list[tuple[str, Path]] = []
    for item in args.trees.split(","):
        name, _, path = item.partition("=")
        trees.append((name, Path(path).resolve()))
    out_dir = Path(args.out_dir).resolve()
    benches = [b for b in args.benches.split(",") if b]
    extras = {
        "cpu_single": shlex.split(args.cpu_single_args),
        "cpu_batch": shlex.split(args.cpu_batch_args),
        "latency": shlex.split(args.latency_args),
        "lag": shlex.split(args.lag_args),
        "throughput": shlex.split(args.throughput_args),
    }
    figures: dict[str, dict[str, list[dict[str, float]]]] = {
        b: {name: [] for name, _ in trees} for b in benches
    }
    failures: list[str] = []
    for bench in benches:
        script, extract = BENCHES[bench]
        for rep in range(args.reps):
            order = trees if rep % 2 == 0 else list(reversed(trees))
            for name, tree in order:
                out = out_dir / f"{bench}-{name}-{rep}.json"
                if args.summarize:
                    if out.exists():
                        figures[bench][name].append(
                            extract(json.loads(out.read_text()))
                        )
                    continue
                print(f"{bench} rep {rep} tree {name}", flush=True)
                doc = run_bench(
                    script,
                    tree,
                    out,
                    extras[bench],
                    args.timeout,
                )
                if doc is None:
                    failures.append(f"{bench} {name} rep {rep}")
                    continue
                figures[bench][name].append(extract(doc))

    for bench in benches:
        keys: list[str] = []
        for runs in figures[bench].values():
            for fig in runs:
                keys.extend(k for k in fig if k not in keys)
        rows = []
        for key in keys:
            cells = [key]
            for name, _ in trees:
                vals = [f[key] for f in figures[bench][name] if key in f]
                ms = key.endswith("_ms") or not (
                    key.endswith(("per_s", "cores", "ratio", "errors", "batch"))
                    or key == "missing"
                )
                cells.append(
                    _spread(vals, 1000.0 if ms else 1.0, 1 if ms else 2)
                    if vals
                    else "n/a"
                )
            rows.append(cells)
        print()
        print(f"## {bench}: median over repetitions [min..max] (ms unless named)")
        print()
        print(md_table(["figure", *(name for name, _ in trees)], rows))
    if failures:
        print("\nfailed invocations: " + "; ".join(failures))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "trees": {name: str(path) for name, path in trees},
                    "args": vars(args),
                    "figures": figures,
                    "failures": failures,
                    "loadavg_now": os.getloadavg(),
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

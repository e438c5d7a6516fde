"""CPU per replicated route write, summed over every agent of a mesh.

The throughput targets of issue 3 are a CPU budget: on the 2-core machine, 5
agents and the load generator share the cores, so the rate a mesh sustains is
about ``(2 - load generator) / (mesh CPU per write)``. Wall-clock throughput is
at the mercy of whatever else runs on a shared machine; CPU seconds used by our
own processes (``/proc/PID/stat`` utime + stime) much less so. This benchmark
measures that figure directly, at a fixed offered load well below saturation:

1. start an ``--nodes`` mesh, warm it up (connections, pools, code paths);
2. measure the agents' idle CPU for ``--idle`` seconds (SWIM, timers);
3. offer ``--rate`` requests/s for ``--duration`` seconds from this process
   (paced, one keep-alive connection per node, writers rotating), each a
   single ``PUT`` or a ``POST /v1/routes`` of ``--batch`` routes;
4. wait until every push queue is empty and nothing is in flight (every
   route replicated), then read the agents' CPU again.

Reported: mesh CPU per route (ms), with the idle CPU of the same duration
subtracted, the writer-side API latency, and what it implies for the 2-core
machine: ``routes/s = (2 - loadgen cores) / cpu_per_route``, with the load
generator's own cost measured as wrk's (``--loadgen-ms``, per request).

Usage:
    python scripts/bench/routes_cpu.py --mode single --rate 200 --duration 10
    python scripts/bench/routes_cpu.py --mode batch --batch 100 --rate 20
    python scripts/bench/routes_cpu.py --mode batch --batch 1000 --rate 8 \
        --keyspace 10000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from routes_common import (
    Conn,
    _proc_cpu,
    parse_sets,
    scrape_metrics,
    start_cluster,
    summary,
    wait_until,
    write_config,
    write_json,
)


def _queues_empty(cluster: Any) -> bool:
    for agent in cluster.agents.values():
        m = scrape_metrics(agent)
        if m.get("mesh_push_queue_depth", 1) or m.get("mesh_push_in_flight", 1):
            return False
    return True


def one_run(args: argparse.Namespace, run: int) -> dict[str, Any]:
    log_dir = tempfile.mkdtemp(prefix=f"routes-cpu-{run}-")
    extra = [*write_config(log_dir, args.config_values)]
    cluster = start_cluster(args.nodes, log_dir, profile=args.profile, extra=extra)
    try:
        agents = list(cluster.agents.values())
        pids = [a.pid() for a in agents]
        conns = [Conn(a.http_addr) for a in agents]
        target = '"target":"10.0.0.1:8080","meta":{"bench":"cpu"}'
        seq = iter(range(10**9))
        if args.keyspace:  # keys over and over: after the warm-up, rewrites
            seq = (n % args.keyspace for n in range(10**9))

        def request(i: int) -> tuple[str, str, bytes]:
            if args.mode == "single":
                return (
                    "PUT",
                    f"/v1/routes/c{run}-{next(seq)}",
                    ("{" + target + "}").encode(),
                )
            items = ",".join(
                f'{{"key":"c{run}-{next(seq)}",{target}}}' for _ in range(args.batch)
            )
            return "POST", "/v1/routes", ('{"put":[' + items + "]}").encode()

        def offer(count: int, rate: float) -> list[float]:
            lat: list[float] = []
            start = time.perf_counter()
            for i in range(count):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                method, path, body = request(i)
                t0 = time.perf_counter()
                status, _ = conns[i % len(conns)].request(method, path, body)
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(f"{method} {path}: {status}")
            return lat

        offer(max(20, int(args.rate)), args.rate)  # warm-up
        wait_until(lambda: _queues_empty(cluster), 30, interval=0.2, what="drain")
        time.sleep(0.5)

        c0 = sum(_proc_cpu(p) for p in pids)
        t0 = time.monotonic()
        time.sleep(args.idle)
        idle_rate = (sum(_proc_cpu(p) for p in pids) - c0) / (time.monotonic() - t0)

        count = int(args.rate * args.duration)
        c0 = sum(_proc_cpu(p) for p in pids)
        t0 = time.monotonic()
        lat = offer(count, args.rate)
        wait_until(lambda: _queues_empty(cluster), 60, interval=0.05, what="drain")
        elapsed = time.monotonic() - t0
        used = sum(_proc_cpu(p) for p in pids) - c0
        routes = count * (args.batch if args.mode == "batch" else 1)
        work = max(0.0, used - idle_rate * elapsed)
        per_route = work / routes
        per_request = work / count
        # capacity on 2 cores: each request also costs the load generator
        per_route_total = per_route + args.loadgen_ms / 1000 * count / routes
        result = {
            "run": run,
            "mode": args.mode,
            "rate_req_per_s": args.rate,
            "requests": count,
            "routes": routes,
            "elapsed_s": elapsed,
            "agents_cpu_s": used,
            "idle_cores": idle_rate,
            "cpu_per_route_ms": per_route * 1000,
            "cpu_per_request_ms": per_request * 1000,
            "capacity_routes_per_s_2cores": 2.0 / per_route_total,
            "api_latency": summary(lat),
        }
        for c in conns:
            c.close()
    finally:
        cluster.close()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mode", choices=["single", "batch"], default="single")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rate", type=float, default=200.0, help="requests/s offered")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--idle", type=float, default=3.0)
    ap.add_argument(
        "--loadgen-ms",
        type=float,
        default=0.05,
        help="CPU ms wrk spends per request (for the capacity estimate)",
    )
    ap.add_argument(
        "--keyspace",
        type=int,
        default=0,
        help="write at most K keys, over and over (0: every key new); the "
        "warm-up writes them all first when it writes K or more routes, so the "
        "measured writes all replace a route (two digest elements each)",
    )
    ap.add_argument("--profile", default="local", choices=["local", "lan", "wan"])
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    args.config_values = parse_sets(args.set)
    runs = []
    for run in range(args.runs):
        r = one_run(args, run)
        runs.append(r)
        print(
            f"run {run} {args.mode}: mesh CPU {r['cpu_per_route_ms']:.3f} ms/route "
            f"({r['cpu_per_request_ms']:.3f} ms/request), idle "
            f"{r['idle_cores']:.3f} cores, capacity on 2 cores "
            f"~{r['capacity_routes_per_s_2cores']:.0f} routes/s, API p50 "
            f"{r['api_latency']['median'] * 1000:.2f} ms p99 "
            f"{r['api_latency']['p99'] * 1000:.2f} ms",
            flush=True,
        )
    write_json(args.json, {"benchmark": "routes_cpu", "args": vars(args), "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

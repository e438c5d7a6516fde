"""Client-observed write latency of ``PUT /v1/routes/{key}`` on one node of a mesh.

Conditions, interleaved block by block in the same run on the same mesh so that
machine noise hits them alike (each round runs these blocks in turn; the first
two swap places every other round):

* ``healthy``   -- plain PUTs, every peer up;
* ``sync=all``  -- ``PUT ...?sync=all&timeout=T`` with every peer up (waits for
  every live peer's ack; issue 3's target p99 <= 10 ms);
* ``paused``    -- plain PUTs while one peer is hung by SIGSTOP (it is SIGCONTed
  after the block, and the next round waits until every agent sees it alive
  again plus ``--settle`` seconds). The block is kept shorter than the local
  profile's suspicion timeout, so the peer stays alive/suspect (not dead): the
  writer keeps pushing to it and its batches hang until they time out;
* ``GET health`` -- ``GET /v1/health`` on the writer, a reference floor for the
  server + client round trip with no write work.

The client is one persistent keep-alive connection (stdlib ``http.client``,
TCP_NODELAY) at a fixed rate (default 50 writes/s, one request in flight), so
latency is not queueing in the client. A request is timed from just before
``request()`` until its body has been read. Each run starts a fresh mesh.

Reported per condition: median and p99 of each run, the median over runs with
the spread [min..max], and the pooled median/p99 over all runs; the p99 ratio
paused/healthy (target <= 1.2). CPU accounting says how much foreign load was
on the machine during each run.

Usage:
    python scripts/bench/routes_latency.py --runs 3 --rounds 6 --block 40 \
        --json bench-out/routes_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

from routes_common import (
    Conn,
    CpuAccount,
    agg,
    fmt_ms,
    fmt_spread,
    md_table,
    other_busy_processes,
    parse_sets,
    start_cluster,
    summary,
    wait_until,
    write_config,
    write_json,
)

CONDITIONS = ("healthy", "sync_all", "paused", "health_get")
LABELS = {
    "healthy": "PUT, all peers up",
    "sync_all": "PUT ?sync=all, all peers up",
    "paused": "PUT, 1 peer SIGSTOPped",
    "health_get": "GET /v1/health (reference)",
}


class Paced:
    """Issues requests on one connection at a fixed rate, one in flight."""

    def __init__(self, conn: Conn, rate: float) -> None:
        self.conn = conn
        self.period = 1.0 / rate
        self.late = 0

    def block(
        self, n: int, make: Any
    ) -> tuple[list[float], list[int], list[bytes], list[float]]:
        """Latencies, statuses, bodies, and head-to-body gaps of n requests."""
        lat: list[float] = []
        gaps: list[float] = []
        statuses: list[int] = []
        bodies: list[bytes] = []
        start = time.perf_counter()
        for i in range(n):
            due = start + i * self.period
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -self.period:
                self.late += 1
            method, path, body = make(i)
            t0 = time.perf_counter()
            status, data = self.conn.request(method, path, body)
            lat.append(time.perf_counter() - t0)
            gaps.append(self.conn.body_at - self.conn.head_at)
            statuses.append(status)
            bodies.append(data)
        return lat, statuses, bodies, gaps


def one_run(args: argparse.Namespace, run: int) -> dict[str, Any]:
    log_dir = tempfile.mkdtemp(prefix=f"routes-latency-{run}-")
    extra = ["--log-format", "json", *write_config(log_dir, args.config_values)]
    cluster = start_cluster(args.nodes, log_dir, profile=args.profile, extra=extra)
    try:
        agents = list(cluster.agents.values())
        writer, victim = agents[0], agents[-1]
        conn = Conn(writer.http_addr)
        paced = Paced(conn, args.rate)
        body = json.dumps({"target": "10.1.2.3:8080", "meta": {"zone": "a"}}).encode()
        seq = iter(range(10**9))

        def put(query: str = "") -> Any:
            def make(_i: int) -> tuple[str, str, bytes]:
                return "PUT", f"/v1/routes/lat-{run}-{next(seq)}{query}", body

            return make

        sync_q = f"?sync=all&timeout={args.sync_timeout}"
        # warm-up: connections, pools, first batches (discarded)
        paced.block(args.warmup, put())
        paced.block(args.warmup // 2, put(sync_q))
        time.sleep(0.5)

        lat: dict[str, list[float]] = {c: [] for c in CONDITIONS}
        gaps: dict[str, list[float]] = {c: [] for c in CONDITIONS}
        errors = dict.fromkeys(CONDITIONS, 0)
        sync_pending = 0
        victim_status: list[str] = []
        cpu = CpuAccount([a.pid() for a in agents])
        for rnd in range(args.rounds):
            first = ["healthy", "sync_all"] if rnd % 2 == 0 else ["sync_all", "healthy"]
            for cond in [*first, "health_get"]:
                if cond == "health_get":
                    make = lambda _i: ("GET", "/v1/health", None)  # noqa: E731
                else:
                    make = put(sync_q if cond == "sync_all" else "")
                n = args.block if cond != "health_get" else args.block // 2
                got, statuses, bodies, gap = paced.block(n, make)
                lat[cond] += got
                gaps[cond] += gap
                errors[cond] += sum(1 for s in statuses if s != 200)
                if cond == "sync_all":
                    for b in bodies:
                        try:
                            sync_pending += bool(json.loads(b).get("pending"))
                        except ValueError:
                            sync_pending += 1
            victim.pause()
            try:
                got, statuses, _, gap = paced.block(args.block, put())
            finally:
                victim.resume()
            lat["paused"] += got
            gaps["paused"] += gap
            errors["paused"] += sum(1 for s in statuses if s != 200)
            victim_status.append(writer.statuses().get(victim.name, "?"))
            # recovery: everyone sees the victim alive, then a quiet spell
            wait_until(
                lambda: cluster.all_see(victim.name, "alive"),
                30,
                interval=0.1,
                what=f"{victim.name} alive again",
            )
            time.sleep(args.settle)
        usage = cpu.finish()
        conn.close()
    finally:
        cluster.close()
    out: dict[str, Any] = {
        "run": run,
        "cpu": usage,
        "late_starts": paced.late,
        "sync_all_with_pending": sync_pending,
        "victim_status_after_paused_block": victim_status,
        "errors": errors,
        "log_dir": log_dir,
        "conditions": {c: summary(v) for c, v in lat.items()},
        "head_body_gap": {c: summary(v) for c, v in gaps.items()},
        "gap_samples": gaps,
        "samples": lat,
    }
    h, p = out["conditions"]["healthy"]["p99"], out["conditions"]["paused"]["p99"]
    out["p99_ratio_paused_healthy"] = p / h if h else float("nan")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3, help="fresh mesh per run")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per run")
    ap.add_argument("--block", type=int, default=40, help="writes per block")
    ap.add_argument("--rate", type=float, default=50.0, help="requests/s")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="quiet seconds after the paused peer is seen alive",
    )
    ap.add_argument("--sync-timeout", type=float, default=1.0)
    ap.add_argument("--profile", default="local", choices=["local", "lan", "wan"])
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="Config override for every agent (TOML via --config)",
    )
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.block / args.rate > 0.9:
        print(
            f"note: a paused block lasts {args.block / args.rate:.2f} s; past about "
            "1 s the local profile may declare the paused peer dead"
        )
    args.config_values = parse_sets(args.set)

    runs = []
    for run in range(args.runs):
        r = one_run(args, run)
        runs.append(r)
        c = r["conditions"]
        print(
            f"run {run}: "
            + "  ".join(
                f"{k} med {fmt_ms(c[k]['median'])} p99 {fmt_ms(c[k]['p99'])}"
                for k in CONDITIONS
            )
            + f"  ratio {r['p99_ratio_paused_healthy']:.2f}"
            + f"  other-load {r['cpu']['other_cores']:.2f} cores",
            flush=True,
        )

    rows = []
    table: dict[str, Any] = {}
    for cond in CONDITIONS:
        med = agg(r["conditions"][cond]["median"] for r in runs)
        p99 = agg(r["conditions"][cond]["p99"] for r in runs)
        pooled = summary([x for r in runs for x in r["samples"][cond]])
        gap = summary([x for r in runs for x in r["gap_samples"][cond]])
        table[cond] = {
            "median_runs": med,
            "p99_runs": p99,
            "pooled": pooled,
            "head_body_gap_pooled": gap,
        }
        rows.append(
            [
                LABELS[cond],
                fmt_spread(med),
                fmt_spread(p99),
                fmt_ms(pooled["median"]),
                fmt_ms(pooled["p99"]),
                fmt_ms(pooled["max"]),
                pooled["n"],
                sum(r["errors"][cond] for r in runs),
                f"{fmt_ms(gap['median'])} / {fmt_ms(gap['p99'])}",
            ]
        )
    ratio_runs = agg(r["p99_ratio_paused_healthy"] for r in runs)
    pooled_ratio = table["paused"]["pooled"]["p99"] / table["healthy"]["pooled"]["p99"]
    print()
    print(
        f"## Write latency, {args.nodes}-node mesh, profile {args.profile}, "
        f"{args.rate:g} req/s, {args.runs} runs x {args.rounds} rounds x "
        f"{args.block} writes per block"
    )
    print()
    print(
        md_table(
            [
                "condition",
                "median ms: median of runs [min..max]",
                "p99 ms: median of runs [min..max]",
                "pooled median ms",
                "pooled p99 ms",
                "pooled max ms",
                "n",
                "errors",
                "head->body gap ms p50 / p99",
            ],
            rows,
        )
    )
    print()
    print(
        md_table(
            ["figure", "value", "target"],
            [
                [
                    "p99 ratio paused/healthy, median of runs [min..max]",
                    fmt_spread(ratio_runs, scale=1.0),
                    "<= 1.2",
                ],
                ["p99 ratio paused/healthy, pooled", f"{pooled_ratio:.2f}", "<= 1.2"],
                [
                    "sync=all p99 ms, median of runs [min..max]",
                    fmt_spread(table["sync_all"]["p99_runs"]),
                    "<= 10 ms",
                ],
                [
                    "sync=all answers with pending peers (timed out)",
                    sum(r["sync_all_with_pending"] for r in runs),
                    "0",
                ],
            ],
        )
    )
    print()
    print(
        "head->body gap: from reading the response head to reading its body on the "
        "client. The agent always writes head and body in separate sends with a "
        "scheduling point between (see the GET row); a longer gap on PUT means "
        "other tasks (its push fan-out) ran in between."
    )
    loads = [r["cpu"] for r in runs]
    print(
        "Machine during the runs (cores busy, averaged over each run): "
        + "; ".join(
            f"run {i}: agents {u['agents_cores']:.2f}, bench "
            f"{u['bench_cores']:.2f}, other processes {u['other_cores']:.2f}, "
            f"loadavg {u['loadavg1_before']:.2f}->{u['loadavg1_after']:.2f}"
            for i, u in enumerate(loads)
        )
    )
    others = other_busy_processes()
    if others:
        print("Busy foreign processes now: " + "; ".join(others))
    statuses = [s for r in runs for s in r["victim_status_after_paused_block"]]
    print(
        f"Paused peer's status in the writer's view after each paused block: "
        f"{ {s: statuses.count(s) for s in set(statuses)} }"
    )
    print(
        f"Late request starts (client behind schedule by > 1 period): "
        f"{sum(r['late_starts'] for r in runs)}"
    )
    write_json(
        args.json,
        {
            "benchmark": "routes_latency",
            "args": dict(vars(args)),
            "table": table,
            "p99_ratio_paused_healthy": {"runs": ratio_runs, "pooled": pooled_ratio},
            "runs": [
                {k: v for k, v in r.items() if k not in ("samples", "gap_samples")}
                for r in runs
            ],
            "samples_ms": [
                {c: [round(x * 1000, 4) for x in r["samples"][c]] for c in CONDITIONS}
                for r in runs
            ],
            "loadavg_now": os.getloadavg(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

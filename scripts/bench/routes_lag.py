"""Replication lag of a route write on a mesh of real agents (default 20).

One client writes routes at a steady rate (default 10/s), rotating the writer
over all nodes; for each write we measure the time until the route is visible
on every *other* live member (the write's lag is the slowest member's arrival).
Each run starts a fresh mesh (``--profile local``, ``--log-format json
--log-level debug``) and has two phases, same mesh, one after the other:

1. ``log`` phase (no polling at all): the arrival time at a member is the
   timestamp of its debug line ``route batch applied sender=WRITER`` (logged by
   mesh/shell/peer_http.py after the batch is applied, so the route is visible
   from then on). mesh logs no per-route arrival line, only per batch with the
   sender's name and the count, so a write is matched to the first such line
   from its writer after the client sent it (and before that writer's next
   write). Writes are spaced (100 ms, the same writer every N/rate s) and we are
   the only client, so each batch holds exactly our one route; batches holding
   more than one route are counted as ``ambiguous``. Both clocks are the wall
   clock of this machine (structlog ISO timestamps, microseconds).
2. ``poll`` phase: a thread per member polls ``GET /v1/routes/{key}`` on its own
   keep-alive connection every ``--poll-interval`` (5 ms) for each key it has not
   seen yet, starting right after the write's response; the arrival is when the
   first 200 was read (an upper bound: add up to one poll interval plus the
   client's GIL-serialized fan-out of ~19 requests, ~1-2 ms, of resolution).
   The same writes are also measured from the logs, which cross-checks the two
   methods and shows what polling itself costs.

Lags are measured from just before the client sent the PUT (so they include
the writer's own handling of the request). Percentiles are over writes;
``missing`` counts (write, member) pairs never seen within ``--give-up`` s.
memberlist's broadcast dissemination measured on this kind of machine (field
notes) is printed beside ours for reference.

Usage:
    python scripts/bench/routes_lag.py --nodes 20 --writes 200 --rate 10 --runs 3 \
        --json bench-out/routes_lag.json
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import os
import tempfile
import time
from collections import defaultdict
from typing import Any

from routes_common import (
    AgentCluster,
    Conn,
    CpuAccount,
    Poller,
    agg,
    fmt_ms,
    fmt_spread,
    md_table,
    other_busy_processes,
    start_cluster,
    summary,
    write_json,
)

REFERENCE = [
    # (what, median, worst) from /work/shared/field-notes.md and the brief
    ("memberlist 0.2.2 lan, broadcast to all, N=20..50", "7-290 ms", "0.2-1.0 s"),
    ("memberlist 0.2.2 lan, broadcast to all N=20 / 50, worst", "", "0.7 / 1.0 s"),
    ("swim-protocol (Python), metadata to all, N=20", "1.3 s", ""),
]


def write_series(
    cluster: AgentCluster,
    conns: dict[str, Conn],
    keys_prefix: str,
    n: int,
    rate: float,
    pollers: dict[str, Poller] | None,
    offset: int,
) -> list[dict[str, Any]]:
    """``n`` writes at ``rate``, writers rotating; returns one record per write."""
    agents = list(cluster.agents.values())
    body = json.dumps({"target": "10.9.8.7:443", "meta": {"svc": "lag"}}).encode()
    period = 1.0 / rate
    out = []
    start = time.perf_counter()
    for i in range(n):
        due = start + i * period
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        writer = agents[(i + offset) % len(agents)]
        key = f"{keys_prefix}-{i}"
        t_wall = time.time()
        t_send = time.perf_counter()
        status, _ = conns[writer.name].request("PUT", f"/v1/routes/{key}", body)
        t_ack = time.perf_counter()
        if pollers is not None:
            for name, poller in pollers.items():
                if name != writer.name:
                    poller.watch(key, t_send)
        out.append(
            {
                "key": key,
                "writer": writer.name,
                "wall": t_wall,
                "send": t_send,
                "ack": t_ack,
                "status": status,
            }
        )
    return out


def read_batches(path: str) -> dict[str, tuple[list[float], list[int]]]:
    """sender -> (sorted wall times, batch sizes) of ``route batch applied``."""
    per: dict[str, list[tuple[float, int]]] = defaultdict(list)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if '"route batch applied"' not in line:
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            t = dt.datetime.fromisoformat(e["timestamp"]).timestamp()
            per[e["sender"]].append((t, int(e.get("received", 0))))
    out = {}
    for sender, items in per.items():
        items.sort()
        out[sender] = ([t for t, _ in items], [c for _, c in items])
    return out


def lags_from_logs(
    cluster: AgentCluster, writes: list[dict[str, Any]], give_up: float
) -> dict[str, Any]:
    """Per-write lag (slowest member) and per-(write, member) arrivals, from logs."""
    batches = {a.name: read_batches(a.log_path or "") for a in cluster.agents.values()}
    # each writer's next write time bounds the match window
    next_wall: dict[int, float] = {}
    last: dict[str, int] = {}
    for idx, w in enumerate(writes):
        if w["writer"] in last:
            next_wall[last[w["writer"]]] = w["wall"]
        last[w["writer"]] = idx
    per_write: list[float] = []
    per_write_first: list[float] = []
    per_pair: list[float] = []
    missing = ambiguous = 0
    for idx, w in enumerate(writes):
        end = min(next_wall.get(idx, w["wall"] + give_up), w["wall"] + give_up)
        worst = 0.0
        first = give_up
        for name, by_sender in batches.items():
            if name == w["writer"]:
                continue
            times, sizes = by_sender.get(w["writer"], ([], []))
            j = bisect.bisect_left(times, w["wall"])
            if j < len(times) and times[j] < end:
                lag = times[j] - w["wall"]
                ambiguous += sizes[j] != 1
                per_pair.append(lag)
                worst = max(worst, lag)
                first = min(first, lag)
            else:
                missing += 1
                worst = max(worst, give_up)
        per_write.append(worst)
        per_write_first.append(first)
    return {
        "per_write": per_write,
        "per_member": per_pair,
        "per_write_first": per_write_first,
        "missing": missing,
        "ambiguous": ambiguous,
    }


def lags_from_polls(
    pollers: dict[str, Poller], writes: list[dict[str, Any]], give_up: float
) -> dict[str, Any]:
    per_write: list[float] = []
    per_pair: list[float] = []
    per_write_ack: list[float] = []
    missing = 0
    for w in writes:
        worst = 0.0
        for name, p in pollers.items():
            if name == w["writer"]:
                continue
            lag = p.arrived.get(w["key"])
            if lag is None:
                missing += 1
                lag = give_up
            else:
                per_pair.append(lag)
            worst = max(worst, lag)
        per_write.append(worst)
        per_write_ack.append(worst - (w["ack"] - w["send"]))
    return {
        "per_write": per_write,
        "per_member": per_pair,
        "missing": missing,
        "per_write_from_ack": per_write_ack,
    }


def count_everywhere(cluster: AgentCluster, prefix: str) -> list[int]:
    counts = []
    for a in cluster.agents.values():
        conn = Conn(a.http_addr)
        try:
            status, data = conn.request("GET", f"/v1/routes?prefix={prefix}")
            counts.append(json.loads(data)["count"] if status == 200 else -1)
        finally:
            conn.close()
    return counts


def one_run(args: argparse.Namespace, run: int) -> dict[str, Any]:
    log_dir = tempfile.mkdtemp(prefix=f"routes-lag-{run}-")
    extra = ["--log-format", "json", "--log-level", "debug"]
    t0 = time.monotonic()
    cluster = start_cluster(args.nodes, log_dir, profile=args.profile, extra=extra)
    startup = time.monotonic() - t0
    result: dict[str, Any] = {"run": run, "log_dir": log_dir, "startup_s": startup}
    try:
        agents = list(cluster.agents.values())
        conns = {a.name: Conn(a.http_addr) for a in agents}
        # warm-up: one write per node opens every writer's pooled connections
        write_series(cluster, conns, f"warm{run}", len(agents), args.rate, None, 0)
        time.sleep(1.0)
        phases = []
        if args.method in ("both", "log"):
            phases.append("log")
        if args.method in ("both", "poll"):
            phases.append("poll")
        for phase in phases:
            prefix = f"lag{run}{phase}"
            pollers = None
            if phase == "poll":
                pollers = {
                    a.name: Poller(
                        a.name,
                        a.http_addr,
                        interval=args.poll_interval,
                        give_up=args.give_up,
                    )
                    for a in agents
                }
                for p in pollers.values():
                    p.start()
            cpu = CpuAccount([a.pid() for a in agents])
            writes = write_series(
                cluster, conns, prefix, args.writes, args.rate, pollers, offset=run
            )
            if pollers is not None:
                deadline = time.monotonic() + args.give_up + 1
                while time.monotonic() < deadline and any(
                    p.pending() for p in pollers.values()
                ):
                    time.sleep(0.05)
            usage = cpu.finish()
            time.sleep(0.5)  # let the last log lines reach the files
            if pollers is not None:
                for p in pollers.values():
                    p.stop()
                for p in pollers.values():
                    p.join(5)
            ph: dict[str, Any] = {
                "cpu": usage,
                "errors": sum(1 for w in writes if w["status"] != 200),
                "put_latency": summary([w["ack"] - w["send"] for w in writes]),
                "log": lags_from_logs(cluster, writes, args.give_up),
            }
            if pollers is not None:
                ph["poll"] = lags_from_polls(pollers, writes, args.give_up)
                ph["poll_requests"] = sum(p.requests for p in pollers.values())
                ph["poll_errors"] = sum(p.errors for p in pollers.values())
            counts = count_everywhere(cluster, prefix)
            ph["converged"] = all(c == args.writes for c in counts)
            ph["counts"] = counts
            result[phase] = ph
            print(
                f"run {run} phase {phase}: "
                + "  ".join(
                    f"{m} p50 {fmt_ms(summary(ph[m]['per_write'])['median'])} "
                    f"p99 {fmt_ms(summary(ph[m]['per_write'])['p99'])} ms "
                    f"missing {ph[m]['missing']}"
                    for m in ("log", "poll")
                    if m in ph
                )
                + f"  converged {ph['converged']}  other-load "
                f"{usage['other_cores']:.2f} cores",
                flush=True,
            )
        for c in conns.values():
            c.close()
    finally:
        cluster.close()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--writes", type=int, default=200, help="writes per phase")
    ap.add_argument("--rate", type=float, default=10.0, help="writes/s")
    ap.add_argument("--runs", type=int, default=3, help="fresh mesh per run")
    ap.add_argument("--method", choices=["both", "log", "poll"], default="both")
    ap.add_argument("--poll-interval", type=float, default=0.005)
    ap.add_argument("--give-up", type=float, default=5.0)
    ap.add_argument("--profile", default="local", choices=["local", "lan", "wan"])
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    runs = [one_run(args, run) for run in range(args.runs)]

    def per_write(run: dict[str, Any], phase: str, method: str) -> list[float]:
        return run.get(phase, {}).get(method, {}).get("per_write", [])

    rows = []
    table: dict[str, Any] = {}
    combos = [
        ("log", "log", "log lines, no polling"),
        ("poll", "poll", "polling GET every %g ms" % (args.poll_interval * 1e3)),
        ("poll", "log", "log lines, while polling"),
    ]
    for phase, method, label in combos:
        if not any(per_write(r, phase, method) for r in runs):
            continue
        stats = [summary(per_write(r, phase, method)) for r in runs]
        pooled = summary([x for r in runs for x in per_write(r, phase, method)])
        member = summary([x for r in runs for x in r[phase][method]["per_member"]])
        missing = sum(r[phase][method]["missing"] for r in runs)
        p50, p99 = agg(s["median"] for s in stats), agg(s["p99"] for s in stats)
        mx = agg(s["max"] for s in stats)
        table[f"{phase}/{method}"] = {
            "p50_runs": p50,
            "p99_runs": p99,
            "max_runs": mx,
            "pooled": pooled,
            "per_member_pooled": member,
            "missing": missing,
        }
        rows.append(
            [
                label,
                fmt_spread(p50),
                fmt_spread(p99),
                fmt_spread(mx),
                fmt_ms(pooled["median"]),
                fmt_ms(pooled["p99"]),
                fmt_ms(pooled["max"]),
                fmt_ms(member["median"]),
                pooled["n"],
                missing,
            ]
        )
    print()
    print(
        f"## Replication lag to all {args.nodes - 1} other members, "
        f"{args.nodes} agents, profile {args.profile}, {args.writes} writes per "
        f"phase at {args.rate:g}/s, writer rotating, {args.runs} runs"
    )
    print()
    print(
        md_table(
            [
                "measured by",
                "p50 ms: median of runs [min..max]",
                "p99 ms: median of runs [min..max]",
                "max ms: median of runs [min..max]",
                "pooled p50",
                "pooled p99",
                "pooled max",
                "per-member arrival p50",
                "writes",
                "missing (write, member)",
            ],
            rows,
        )
    )
    print()
    print("Target: p99 <= 50 ms. Reference (not measured here; field notes):")
    print()
    print(md_table(["system", "median", "worst"], REFERENCE))
    print()
    amb = sum(
        r.get(p, {}).get("log", {}).get("ambiguous", 0)
        for r in runs
        for p in ("log", "poll")
    )
    put = agg(r["log"]["put_latency"]["median"] for r in runs if "log" in r)
    print(
        f"Notes: log matching found {amb} batches with more than one route "
        f"(0 means every match was unambiguous). PUT latency at the writer, median "
        f"of runs: {fmt_spread(put)} ms. Converged (every member holds every "
        f"route at the end): "
        f"{all(r[p]['converged'] for r in runs for p in ('log', 'poll') if p in r)}."
    )
    first = summary(
        [x for r in runs if "log" in r for x in r["log"]["log"]["per_write_first"]]
    )
    last = table.get("log/log", {}).get("pooled", summary([]))
    print(
        f"Fan-out (log phase, pooled): the first of the {args.nodes - 1} members "
        f"has the route after p50 {fmt_ms(first['median'])} ms, the last after "
        f"p50 {fmt_ms(last['median'])} ms: the writer delivers to its peers one "
        "HTTP request each."
    )
    for r in runs:
        parts = []
        for p in ("log", "poll"):
            if p in r:
                u = r[p]["cpu"]
                parts.append(
                    f"{p} phase: agents {u['agents_cores']:.2f} cores, bench "
                    f"{u['bench_cores']:.2f}, other processes "
                    f"{u['other_cores']:.2f}, loadavg "
                    f"{u['loadavg1_before']:.2f}->{u['loadavg1_after']:.2f}"
                    + (f", {r[p]['poll_requests']} polls" if p == "poll" else "")
                )
        print(f"Run {r['run']} (start-up {r['startup_s']:.1f} s): " + "; ".join(parts))
    others = other_busy_processes()
    if others:
        print("Busy foreign processes now: " + "; ".join(others))
    write_json(
        args.json,
        {
            "benchmark": "routes_lag",
            "args": vars(args),
            "reference": REFERENCE,
            "table": table,
            "runs": runs,
            "loadavg_now": os.getloadavg(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

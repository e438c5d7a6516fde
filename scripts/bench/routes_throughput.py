"""Sustained route-write throughput of a 5-node mesh, with lag under load.

Load generator: Debian's ``wrk`` (C, epoll), one process per node, all five in
parallel, each with ``-t1 -cC`` (C keep-alive connections, closed loop: a
connection sends its next request when the previous answer arrived) and the Lua
script ``scripts/bench/wrk_routes.lua``, which makes every key unique:

* ``single``: ``PUT /v1/routes/{key}`` with a small JSON body (one route each);
* ``batch``:  ``POST /v1/routes`` with ``{"put": [...]}`` of ``--batch`` (100)
  routes each.

wrk has no fixed-rate mode (that is wrk2, not packaged), so load is stepped up
by the number of connections per node (``--single-conns``, ``--batch-conns``):
``C`` is C closed-loop connections, which always drive the mesh to saturation;
``C@R`` paces each of C connections (wrk's ``delay()`` before every request) so
the mesh-wide offered load is at most R writes/s (routes/s for batches), to see
the lag below saturation. Each step reports the rate the mesh actually accepted.
The pauses are drawn from an exponential distribution (``--pacing poisson``,
the default): independent arrivals, as from many writers. ``--pacing fixed``
(every pause the same, as until the tenth round) keeps all connections in
lock-step, which with 1,000-route calls offered the mesh bursts of 20,000
routes followed by idle seconds (docs/benchmarks.md, "Tenth round").
``--keyspace K`` makes each node's wrk write at most K keys per step, over and
over: after the first K writes every write replaces a route, as in a fleet
whose table holds steady (sandboxes created and deleted). With unique keys
(the default) the table grows by every write: steps then also pay CPython's
dict resizes, which stall every replica at once as the table passes
2^k * 2/3 entries (~40 ms at 350,000, ~100 ms at 700,000 on this machine;
docs/benchmarks.md, "Thirteenth round"), and the default ``max_routes``
(10^6) caps how long such a step can run.
Install wrk first:

    apt-get install -y wrk

Per step we report

* accepted writes/s: wrk's completed requests minus non-2xx, summed over the
  five wrk processes, divided by wrk's own duration; for batches, routes/s =
  accepted requests x batch size. Cross-checked with the agents' own counters
  (``mesh_route_writes_total{result="applied"}`` summed over nodes);
* errors: wrk's socket errors (connect/read/write/timeout) and non-2xx answers;
* wrk's request latency p50/p99 (worst of the five processes);
* replication lag under load, two ways side by side: a separate probe writer
  in this process writes ``--probe-rate`` marked keys per second (about 100 in
  an 8 s step) to the nodes in turn, from a small thread pool with its own
  keep-alive connections. Even probes are ``PUT ...?sync=all&timeout=5``: their
  latency is an upper bound of the time until every other node applied the
  route (the answer waits for every peer's ack), with no polling at all. Odd
  probes are plain PUTs; one poller thread per node polls
  ``GET /v1/routes/{key}`` every ``--poll-interval`` (10 ms) for those it has
  not seen; the lag is from just before the PUT was sent until the slowest of
  the other nodes answered 200 (upper bound), with a lower bound from the last
  404 poll. The polls add load, counted and printed;
* drain: after wrk stops, time until every node's push queue is empty and
  nothing is in flight; converged: every node then holds the same route count.

``push_min_interval`` (0.05 is the default) is swept with ``--intervals``, one
fresh mesh per value and run (TOML ``--config``). Run each at least 3 times
(``--runs``): the machine is shared and noisy, and the foreign CPU load seen
during each step is printed.

Usage:
    python scripts/bench/routes_throughput.py --intervals 0.02,0.05,0.1 --runs 3 \
        --json bench-out/routes_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from routes_common import (
    AgentCluster,
    Conn,
    CpuAccount,
    Poller,
    agg,
    fmt_ms,
    md_table,
    other_busy_processes,
    parse_sets,
    scrape_metrics,
    start_cluster,
    summary,
    write_config,
    write_json,
)

LUA = str(Path(__file__).resolve().parent / "wrk_routes.lua")
WRKJSON = re.compile(r"^WRKJSON (\{.*\})$", re.M)
#: probe writer threads (one keep-alive connection each per node)
PROBE_WORKERS = 8


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "error: the load generator 'wrk' is not installed. Install Debian's "
            "package first:  apt-get install -y wrk"
        )
    return wrk


def parse_step(spec: str, mode: str, nodes: int, batch: int) -> tuple[int, int]:
    """A step ``C`` (C connections per node, closed loop) or ``C@R`` (C per
    node, each pausing between requests so the mesh-wide offered load is about
    R writes/s: routes/s for batches). wrk's ``delay()`` takes whole
    milliseconds and counts from the previous answer, so the offered rate is
    at most R; the accepted rate is what is reported."""
    conns_text, _, rate_text = spec.partition("@")
    conns = int(conns_text)
    if not rate_text:
        return conns, 0
    per_request = batch if mode == "batch" else 1
    requests_per_s = float(rate_text) / per_request
    return conns, max(1, round(1000.0 * conns * nodes / requests_per_s))


def metric_sum(m: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in m.items() if k.startswith(prefix))


def step_delta(
    after: list[dict[str, float]], before: list[dict[str, float]], prefix: str
) -> float:
    """How much the series starting with ``prefix`` grew over the step,
    summed over every agent."""
    return sum(
        metric_sum(a, prefix) - metric_sum(b, prefix)
        for a, b in zip(after, before, strict=True)
    )


def histogram_quantile(
    after: list[dict[str, float]], before: list[dict[str, float]], name: str, q: float
) -> float | None:
    """Quantile ``q`` of histogram ``name`` over the step, all agents pooled:
    the upper bound of the bucket it falls in (None when nothing observed)."""
    counts: dict[float, float] = {}
    for a, b in zip(after, before, strict=True):
        for key, value in a.items():
            m = re.fullmatch(rf'{name}_bucket\{{.*le="([^"]+)".*\}}', key)
            if m:
                le = float(m.group(1))
                counts[le] = counts.get(le, 0.0) + value - b.get(key, 0.0)
    if not counts or counts[max(counts)] <= 0:
        return None
    total = counts[max(counts)]
    for le in sorted(counts):
        if counts[le] >= q * total:
            return le
    return None


def snapshot(cluster: AgentCluster) -> list[dict[str, float]]:
    return [scrape_metrics(a) for a in cluster.agents.values()]


class ProbeWriter(threading.Thread):
    """Writes marked keys at a fixed rate, rotating over the nodes.

    Even-numbered probes are ``PUT ...?sync=all&timeout=G``: the answer comes
    once every live peer acknowledged (applied) the route, so its latency is an
    upper bound of the replication lag that needs no polling. Odd-numbered ones
    are plain PUTs handed to the pollers of the other nodes. Requests go out from
    a small thread pool (one keep-alive connection per worker and node), so a
    slow answer does not hold back the schedule.
    """

    def __init__(
        self,
        cluster: AgentCluster,
        pollers: dict[str, Poller],
        prefix: str,
        rate: float,
        start_after: float,
        stop_after: float,
        give_up: float,
    ):
        super().__init__(daemon=True, name="probe-writer")
        self.agents = list(cluster.agents.values())
        self.pool: dict[str, queue.SimpleQueue[Conn]] = {}
        for a in self.agents:
            q: queue.SimpleQueue[Conn] = queue.SimpleQueue()
            for _ in range(PROBE_WORKERS):
                q.put(Conn(a.http_addr, timeout=give_up + 5))
            self.pool[a.name] = q
        self.pollers = pollers
        self.prefix = prefix
        self.period = 1.0 / rate
        self.start_after = start_after
        self.stop_after = stop_after
        self.give_up = give_up
        self.writes: list[dict[str, Any]] = []

    def _one(self, i: int) -> None:
        body = json.dumps({"target": "10.7.7.7:80", "meta": {"probe": "1"}}).encode()
        writer = self.agents[i % len(self.agents)]
        kind = "sync" if i % 2 == 0 else "poll"
        key = f"{self.prefix}-{i}"
        path = f"/v1/routes/{key}"
        if kind == "sync":
            path += f"?sync=all&timeout={self.give_up:g}"
        conn = self.pool[writer.name].get()
        pending: list[str] = []
        t_send = time.perf_counter()
        try:
            status, data = conn.request("PUT", path, body)
            if kind == "sync" and status == 200:
                pending = json.loads(data).get("pending", [])
        except (OSError, ValueError):
            status = -1
        t_ack = time.perf_counter()
        self.pool[writer.name].put(conn)
        if kind == "poll" and status == 200:
            for name, p in self.pollers.items():
                if name != writer.name:
                    p.watch(key, t_send)
        self.writes.append(
            {
                "key": key,
                "kind": kind,
                "writer": writer.name,
                "send": t_send,
                "ack": t_ack,
                "status": status,
                "pending": pending,
            }
        )

    def run(self) -> None:
        t0 = time.perf_counter() + self.start_after
        i = 0
        with ThreadPoolExecutor(max_workers=PROBE_WORKERS) as ex:
            while True:
                due = t0 + i * self.period
                if due - (t0 - self.start_after) > self.stop_after:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                ex.submit(self._one, i)
                i += 1
        for q in self.pool.values():
            while not q.empty():
                q.get().close()


def wait_drained(cluster: AgentCluster, timeout: float) -> tuple[float, bool, list]:
    """Seconds until no push is queued or in flight anywhere; converged?"""
    t0 = time.monotonic()
    counts: list[float] = []
    while True:
        snaps = snapshot(cluster)
        busy = any(
            s.get("mesh_push_queue_depth", 0) or s.get("mesh_push_in_flight", 0)
            for s in snaps
        )
        counts = [s.get('mesh_routes{state="live"}', -1) for s in snaps]
        elapsed = time.monotonic() - t0
        if not busy and len(set(counts)) == 1:
            return elapsed, True, counts
        if elapsed > timeout:
            return elapsed, False, counts
        time.sleep(0.2)


def run_step(
    args: argparse.Namespace,
    cluster: AgentCluster,
    wrk: str,
    mode: str,
    spec: str,
    tag: str,
) -> dict[str, Any]:
    agents = list(cluster.agents.values())
    conns, delay_ms = parse_step(spec, mode, len(agents), args.batch)
    before = snapshot(cluster)
    pollers = {
        a.name: Poller(
            a.name, a.http_addr, interval=args.poll_interval, give_up=args.give_up
        )
        for a in agents
    }
    for p in pollers.values():
        p.start()
    probe = ProbeWriter(
        cluster,
        pollers,
        f"probe-{tag}",
        args.probe_rate,
        start_after=0.5,
        stop_after=args.duration - 1.0,
        give_up=args.give_up,
    )
    cpu = CpuAccount([a.pid() for a in agents])
    procs = []
    for i, a in enumerate(agents):
        cmd = [
            wrk,
            "-t1",
            f"-c{conns}",
            f"-d{args.duration}s",
            "--timeout",
            "5s",
            "-s",
            LUA,
            f"http://{a.http_addr}",
            "--",
            mode,
            f"{tag}-n{i}",
            str(args.batch),
            str(delay_ms),
            args.pacing,
            str(args.keyspace),
        ]
        procs.append(
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    probe.start()
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=args.duration + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outputs.append(out)
    probe.join(args.duration + args.give_up + 15)
    deadline = time.monotonic() + args.give_up + 1
    while time.monotonic() < deadline and any(p.pending() for p in pollers.values()):
        time.sleep(0.05)
    usage = cpu.finish()
    for p in pollers.values():
        p.stop()
    for p in pollers.values():
        p.join(5)
    drain_s, converged, counts = wait_drained(cluster, args.drain_timeout)
    after = snapshot(cluster)

    wrk_stats = []
    for out in outputs:
        m = WRKJSON.search(out)
        if not m:
            raise RuntimeError(f"wrk printed no summary:\n{out}")
        wrk_stats.append(json.loads(m.group(1)))
    duration = max(s["duration_us"] for s in wrk_stats) / 1e6
    requests = sum(s["requests"] for s in wrk_stats)
    non2xx = sum(s["status"] for s in wrk_stats)
    sock_err = sum(
        s["connect"] + s["read"] + s["write"] + s["timeout"] for s in wrk_stats
    )
    ok_req = requests - non2xx
    per_req = args.batch if mode == "batch" else 1
    applied = step_delta(after, before, 'mesh_route_writes_total{result="applied"}')
    batches = step_delta(after, before, "mesh_push_batch_size_count")
    batch_routes = step_delta(after, before, "mesh_push_batch_size_sum")
    dropped = step_delta(after, before, "mesh_push_dropped_total")
    rounds = [k for k in after[0] if k.startswith("mesh_antientropy_rounds_total{")]
    lags, lags_lo, missing = [], [], 0
    sync_lags, sync_missing = [], 0
    for w in probe.writes:
        if w["status"] != 200:
            continue
        if w["kind"] == "sync":
            if w["pending"]:
                sync_missing += 1
                sync_lags.append(args.give_up)
            else:
                sync_lags.append(w["ack"] - w["send"])
            continue
        worst = worst_lo = 0.0
        for name, p in pollers.items():
            if name == w["writer"]:
                continue
            lag = p.arrived.get(w["key"])
            if lag is None:
                missing += 1
                lag = lo = args.give_up
            else:
                lo = p.arrived_lo.get(w["key"], 0.0)
            worst = max(worst, lag)
            worst_lo = max(worst_lo, lo)
        lags.append(worst)
        lags_lo.append(worst_lo)
    return {
        "mode": mode,
        "conns_per_node": spec,
        "delay_ms": delay_ms,
        "pacing": args.pacing,
        "keyspace": args.keyspace,
        "wrk_duration_s": duration,
        "requests": requests,
        "non2xx": non2xx,
        "socket_errors": sock_err,
        "accepted_req_per_s": ok_req / duration,
        "accepted_routes_per_s": ok_req * per_req / duration,
        "agents_applied_routes_per_s": applied / duration,
        "wrk_p50_ms": max(s["lat_p50_us"] for s in wrk_stats) / 1000,
        "wrk_p99_ms": max(s["lat_p99_us"] for s in wrk_stats) / 1000,
        "probe_writes": len(probe.writes),
        "probe_errors": sum(1 for w in probe.writes if w["status"] != 200),
        "probe_put": summary(
            [w["ack"] - w["send"] for w in probe.writes if w["kind"] == "poll"]
        ),
        "lag": summary(lags),
        "lag_lower_bound": summary(lags_lo),
        "lag_missing": missing,
        "lag_samples_ms": [round(x * 1000, 2) for x in lags],
        "sync_lag": summary(sync_lags),
        "sync_missing": sync_missing,
        "sync_lag_samples_ms": [round(x * 1000, 2) for x in sync_lags],
        "polls": sum(p.requests for p in pollers.values()),
        "push_batches": batches,
        "push_avg_batch": batch_routes / batches if batches else 0.0,
        "push_dropped": dropped,
        "push_rtt_p50_s": histogram_quantile(
            after, before, "mesh_push_latency_seconds", 0.5
        ),
        "push_rtt_p99_s": histogram_quantile(
            after, before, "mesh_push_latency_seconds", 0.99
        ),
        # rounds by outcome (the label's value), those that happened
        "ae_rounds": {
            key.split('"')[1]: n
            for key in rounds
            if (n := step_delta(after, before, key))
        },
        "ae_routes_repaired": step_delta(
            after, before, 'mesh_antientropy_routes_total{kind="repaired"}'
        ),
        "timer_late_p99_s": histogram_quantile(
            after, before, "mesh_timer_lateness_seconds", 0.99
        ),
        "drain_s": drain_s,
        "converged": converged,
        "route_counts": counts,
        "cpu": usage,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument(
        "--intervals",
        default="0.02,0.05,0.1",
        help="push_min_interval values, one fresh mesh each",
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--single-conns",
        default="4,16",
        help="steps for single PUTs: C (wrk connections per node, closed loop) "
        "or C@R (paced to about R writes/s over the mesh)",
    )
    ap.add_argument(
        "--batch-conns",
        default="2",
        help="steps for batch POSTs: C or C@R (R in routes/s over the mesh)",
    )
    ap.add_argument("--batch", type=int, default=100, help="routes per batch POST")
    ap.add_argument("--duration", type=int, default=8, help="seconds per step")
    ap.add_argument(
        "--pacing",
        default="poisson",
        choices=["poisson", "fixed"],
        help="pauses of a C@R step: exponential with the mean that gives R, "
        "or all equal (connections in lock-step)",
    )
    ap.add_argument(
        "--keyspace",
        type=int,
        default=0,
        help="keys each node's wrk writes per step, over and over (0: every "
        "key new, the table grows by every write)",
    )
    ap.add_argument(
        "--probe-rate",
        type=float,
        default=14.0,
        help="marked keys per second for the lag probe",
    )
    ap.add_argument("--poll-interval", type=float, default=0.01)
    ap.add_argument("--give-up", type=float, default=5.0)
    ap.add_argument("--drain-timeout", type=float, default=30.0)
    ap.add_argument("--profile", default="local", choices=["local", "lan", "wan"])
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another config key for every agent, e.g. push_batch_max=250; repeatable",
    )
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    wrk = require_wrk()
    settings = parse_sets(args.set)
    intervals = [float(x) for x in args.intervals.split(",") if x]
    steps = [("single", c) for c in args.single_conns.split(",") if c]
    steps += [("batch", c) for c in args.batch_conns.split(",") if c]

    results: list[dict[str, Any]] = []
    for interval in intervals:
        for run in range(args.runs):
            log_dir = tempfile.mkdtemp(prefix=f"routes-tput-{interval}-{run}-")
            extra = [
                "--log-format",
                "json",
                *write_config(log_dir, {**settings, "push_min_interval": interval}),
            ]
            cluster = start_cluster(
                args.nodes, log_dir, profile=args.profile, extra=extra
            )
            try:
                # warm-up: pools, connections, code paths (discarded)
                warm = dict(vars(args), duration=2, probe_rate=2.0)
                warm_args = argparse.Namespace(**warm)
                run_step(warm_args, cluster, wrk, "single", "2", f"warm{run}")
                for mode, conns in steps:
                    tag = f"i{interval}r{run}{mode}{conns.replace('@', 'at')}"
                    r = run_step(args, cluster, wrk, mode, conns, tag)
                    r.update(interval=interval, run=run, log_dir=log_dir)
                    results.append(r)
                    print(
                        f"min_interval {interval:g} run {run} {mode:6} c={conns:<8}"
                        f" accepted {r['accepted_routes_per_s']:8.0f} routes/s"
                        f" ({r['accepted_req_per_s']:6.0f} req/s) errors "
                        f"{r['non2xx'] + r['socket_errors']}"
                        f"  wrk p99 {r['wrk_p99_ms']:6.1f} ms"
                        f"  lag sync=all p50 {fmt_ms(r['sync_lag']['median'], 1)}"
                        f" p99 {fmt_ms(r['sync_lag']['p99'], 1)}"
                        f" poll p50 {fmt_ms(r['lag']['median'], 1)}"
                        f" p99 {fmt_ms(r['lag']['p99'], 1)} ms"
                        f" (missing {r['lag_missing'] + r['sync_missing']})"
                        f"  avg push batch {r['push_avg_batch']:.1f}"
                        f" push RTT p50/p99 <= {r['push_rtt_p50_s']}"
                        f"/{r['push_rtt_p99_s']} s"
                        f" timer late p99 <= {r['timer_late_p99_s']} s"
                        f"  AE rounds {r['ae_rounds']}"
                        f" repaired {r['ae_routes_repaired']:.0f}"
                        f"  drain {r['drain_s']:.1f} s conv {r['converged']}"
                        f"  other-load {r['cpu']['other_cores']:.2f} cores",
                        flush=True,
                    )
            finally:
                cluster.close()

    print()
    print(
        f"## Throughput, {args.nodes}-node mesh, profile {args.profile}, wrk "
        f"{args.duration} s per step, one wrk -t1 per node, {args.pacing} "
        f"pacing, {args.runs} runs (median over runs [min..max]), "
        + (
            f"{args.keyspace:,} keys per node rewritten over and over"
            if args.keyspace
            else "every key new"
        )
    )
    print()
    rows = []
    table = []
    for interval in intervals:
        for mode, conns in steps:
            rs = [
                r
                for r in results
                if r["interval"] == interval
                and r["mode"] == mode
                and r["conns_per_node"] == conns
            ]
            if not rs:
                continue
            acc = agg(r["accepted_routes_per_s"] for r in rs)
            req = agg(r["accepted_req_per_s"] for r in rs)
            sync50 = agg(r["sync_lag"]["median"] for r in rs)
            sync99 = agg(r["sync_lag"]["p99"] for r in rs)
            sync_pooled = summary(
                [x / 1000 for r in rs for x in r["sync_lag_samples_ms"]]
            )
            lag50 = agg(r["lag"]["median"] for r in rs)
            lag99 = agg(r["lag"]["p99"] for r in rs)
            lo50 = agg(r["lag_lower_bound"]["median"] for r in rs)
            lo99 = agg(r["lag_lower_bound"]["p99"] for r in rs)
            probe_put = agg(r["probe_put"]["median"] for r in rs)
            pooled = summary([x / 1000 for r in rs for x in r["lag_samples_ms"]])
            wrk99 = agg(r["wrk_p99_ms"] for r in rs)
            other = agg(r["cpu"]["other_cores"] for r in rs)
            agents = agg(r["cpu"]["agents_cores"] for r in rs)
            busy = agg(r["cpu"]["machine_busy_cores"] for r in rs)
            # agents' CPU per accepted route, all five together: what the
            # mesh costs per route whatever the machine's share of it
            per_route = agg(
                1e6 * r["cpu"]["agents_cores"] / max(r["accepted_routes_per_s"], 1e-9)
                for r in rs
            )
            row = {
                "push_min_interval": interval,
                "mode": mode,
                "conns_per_node": conns,
                "accepted_routes_per_s": acc,
                "accepted_req_per_s": req,
                "sync_lag_p50": sync50,
                "sync_lag_p99": sync99,
                "sync_lag_pooled": sync_pooled,
                "lag_p50": lag50,
                "lag_p99": lag99,
                "lag_lower_bound_p50": lo50,
                "lag_lower_bound_p99": lo99,
                "probe_put_p50": probe_put,
                "lag_pooled": pooled,
                "wrk_p99_ms": wrk99,
                "other_cores": other,
                "agents_cores": agents,
                "machine_busy_cores": busy,
                "agents_us_per_route": per_route,
                "errors": sum(r["non2xx"] + r["socket_errors"] for r in rs),
                "lag_missing": sum(r["lag_missing"] + r["sync_missing"] for r in rs),
                "converged": all(r["converged"] for r in rs),
            }
            table.append(row)

            def s(a: dict[str, float], scale: float = 1.0, d: int = 0) -> str:
                return (
                    f"{a['median'] * scale:.{d}f} "
                    f"[{a['min'] * scale:.{d}f}..{a['max'] * scale:.{d}f}]"
                )

            rows.append(
                [
                    f"{interval:g}",
                    mode,
                    conns,
                    s(acc),
                    s(req),
                    row["errors"],
                    s(wrk99, d=1),
                    s(sync50, 1000, 1),
                    s(sync99, 1000, 1),
                    fmt_ms(sync_pooled["p99"], 1),
                    s(lag50, 1000, 1),
                    s(lag99, 1000, 1),
                    f"{lo50['median'] * 1000:.1f} / {lo99['median'] * 1000:.1f}",
                    f"{probe_put['median'] * 1000:.1f}",
                    f"{sync_pooled['n']} + {pooled['n']}",
                    row["lag_missing"],
                    f"{statistics_median([r['push_avg_batch'] for r in rs]):.1f}",
                    f"{statistics_median([r['drain_s'] for r in rs]):.1f}",
                    "yes" if row["converged"] else "NO",
                    s(agents, d=2),
                    s(per_route),
                    s(busy, d=2),
                    s(other, d=2),
                ]
            )
    print(
        md_table(
            [
                "push_min_interval",
                "mode",
                "conns/node",
                "accepted routes/s",
                "accepted requests/s",
                "errors",
                "wrk p99 ms",
                "lag sync=all p50 ms",
                "lag sync=all p99 ms",
                "lag sync=all p99 pooled",
                "lag poll p50 ms",
                "lag poll p99 ms",
                "poll lower bound p50 / p99 ms",
                "probe PUT p50 ms",
                "probes sync + poll",
                "probe misses",
                "avg push batch",
                "drain s",
                "converged",
                "agents cores",
                "agents CPU µs per route",
                "machine busy cores",
                "other cores",
            ],
            rows,
        )
    )
    print()
    print(
        "Targets: single PUTs >= 2,000/s with lag p99 <= 250 ms; batch POSTs "
        ">= 20,000 routes/s. Lag = marked-key PUT sent -> visible on all other "
        "nodes, two ways side by side: 'sync=all' = latency of a marked PUT "
        "?sync=all (answered once every peer applied and acked it; upper bound, "
        "no polling); 'poll' = plain marked PUT, then GET on each other node every "
        f"{args.poll_interval * 1000:g} ms until 200 (upper bound; the lower bound "
        "is when the last 404 poll was sent: under saturation a poll itself waits "
        "in the node's queue, so that window is wide). 'probe PUT' = a plain marked "
        "write's own latency."
    )
    polls = sum(r["polls"] for r in results)
    secs = sum(r["wrk_duration_s"] for r in results)
    print(
        f"Lag polling added {polls / max(secs, 1e-9):.0f} GET/s on average over "
        "all nodes during the steps. 'agents CPU µs per route' is the five "
        "agents' CPU over the routes accepted (each route is stored by all "
        "five). 'machine busy cores' is everything that ran, of the machine's "
        f"{os.cpu_count()}; 'other cores' is CPU used by processes we did not "
        "start (other engineers' jobs) during each step."
    )
    others = other_busy_processes()
    if others:
        print("Busy foreign processes now: " + "; ".join(others))
    write_json(
        args.json,
        {
            "benchmark": "routes_throughput",
            "args": vars(args),
            "table": table,
            "steps": results,
            "loadavg_now": os.getloadavg(),
        },
    )
    return 0


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values) if values else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())

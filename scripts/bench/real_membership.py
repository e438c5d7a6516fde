"""Membership benchmarks with real `mesh agent` processes on 127.0.0.1.

Measures, per profile and cluster size:
  * bootstrap: from the last process being ready until every agent sees all;
  * crash detection: SIGKILL one member, time until every survivor marks it
    dead, in two modes: `refused` (default config: the TCP fallback probe sees
    the port refuse) and `swim` (tcp_fallback_probe = false: pure SWIM +
    Lifeguard, as memberlist without its TCP fallback noticing the refusal);
  * false deaths: dead events for members that were not killed;
  * idle CPU and RSS of one agent (5-node lan mesh at rest).

Times come from the agents' own JSON log lines (wall clock, microseconds), so the
measurement adds no polling load. Usage:

    python scripts/bench/real_membership.py --sizes 5,20,50 --profiles lan,local \
        --runs 5 --json bench-out/membership.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mesh.testing.agents import AgentCluster, AgentProcess, wait_until

_EVENTS: dict[str, tuple[int, list[dict[str, Any]]]] = {}


def read_events(path: str) -> list[dict[str, Any]]:
    """Every JSON log event of one agent so far; only new bytes are read, so
    polling 50 growing logs stays cheap and does not load the agents."""
    offset, events = _EVENTS.get(path, (0, []))
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return events
    end = data.rfind(b"\n") + 1  # leave a partly written line for next time
    for line in data[:end].splitlines():
        if line.startswith(b"{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    _EVENTS[path] = (offset + end, events)
    return events


def ts(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["timestamp"]).timestamp()


def make_cluster(
    n: int, profile: str, mode: str, log_dir: str
) -> tuple[AgentCluster, list[str]]:
    extra = ["--log-format", "json"]
    if mode == "swim":
        cfg = os.path.join(log_dir, "swim.toml")
        Path(cfg).write_text("tcp_fallback_probe = false\n")
        extra += ["--config", cfg]
    cluster = AgentCluster(log_dir=log_dir, profile=profile)
    for i in range(1, n + 1):
        cluster.add(f"n{i}", extra=extra)
    return cluster, extra


def sees_all(cluster: AgentCluster, agent: AgentProcess, since: float) -> float | None:
    """Wall time at which ``agent`` had logged every other live member alive."""
    names = {a.name for a in cluster.live()} - {agent.name}
    first: dict[str, float] = {}
    for e in read_events(agent.log_path or ""):
        if (
            e.get("event") in ("member joined", "member alive")
            and e.get("peer") in names
        ):
            t = ts(e)
            if t >= since:
                first.setdefault(e["peer"], t)
    return max(first.values()) if len(first) == len(names) else None


def bootstrap(
    cluster: AgentCluster, started_wall: float, last_ready_wall: float
) -> float:
    def done() -> list[float] | None:
        times = [sees_all(cluster, a, started_wall) for a in cluster.live()]
        return None if any(t is None for t in times) else [t for t in times if t]

    times = wait_until(done, 120, interval=0.2, what="bootstrap")
    return max(0.0, max(times) - last_ready_wall)


def crash_run(cluster: AgentCluster, victim: AgentProcess) -> tuple[float, int]:
    survivors = [a for a in cluster.live() if a is not victim]
    t0 = time.time()
    victim.kill()

    def dead_times() -> list[float] | None:
        out = []
        for agent in survivors:
            times = [
                ts(e) for e in read_events(agent.log_path or "")
                if e.get("event") == "member dead" and e.get("peer") == victim.name
                and ts(e) >= t0
            ]  # fmt: skip
            if not times:
                return None
            out.append(min(times))
        return out

    times = wait_until(dead_times, 120, interval=0.2, what=f"{victim.name} dead")
    false = 0
    for agent in survivors:
        false += sum(
            1 for e in read_events(agent.log_path or "")
            if e.get("event") == "member dead" and e.get("peer") != victim.name
            and ts(e) >= t0
        )  # fmt: skip
    return max(times) - t0, false


def idle_usage(seconds: float) -> dict[str, float]:
    log_dir = tempfile.mkdtemp(prefix="mesh-idle-")
    with AgentCluster(log_dir=log_dir, profile="lan") as cluster:
        cluster.start(5)
        wait_until(cluster.converged, 30, what="idle cluster converged")
        time.sleep(5)  # let start-up work finish before measuring the idle state
        agent = cluster.agents["node3"]
        tick = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = (
                Path(f"/proc/{agent.pid()}/stat").read_text().rsplit(")", 1)[1].split()
            )
            return (int(fields[11]) + int(fields[12])) / tick

        c0, w0 = cpu(), time.monotonic()
        time.sleep(seconds)
        c1, w1 = cpu(), time.monotonic()
        rss = 0
        for line in Path(f"/proc/{agent.pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return {"cpu_percent": 100 * (c1 - c0) / (w1 - w0), "rss_mib": rss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="5,20,50")
    ap.add_argument("--profiles", default="lan,local")
    ap.add_argument("--modes", default="refused,swim")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    results: list[dict[str, Any]] = []
    for profile in args.profiles.split(","):
        for n in [int(x) for x in args.sizes.split(",")]:
            for mode in args.modes.split(","):
                log_dir = tempfile.mkdtemp(prefix=f"mesh-bench-{profile}-{n}-{mode}-")
                started = time.time()
                cluster, extra = make_cluster(n, profile, mode, log_dir)
                try:
                    boot = bootstrap(cluster, started, time.time())
                    detections, falses = [], 0
                    for run in range(args.runs):
                        victim = cluster.agents[f"n{2 + run % (n - 1)}"]
                        took, false = crash_run(cluster, victim)
                        detections.append(took)
                        falses += false
                        # Bring it back for the next run and wait for convergence.
                        seed = cluster.agents["n1"].mesh_addr
                        cluster.add(victim.name, join=[seed], extra=extra)
                        wait_until(
                            cluster.converged, 60, interval=0.3, what="reconverge"
                        )
                    row = {
                        "profile": profile,
                        "n": n,
                        "mode": mode,
                        "bootstrap_s": boot,
                        "detect_median_s": statistics.median(detections),
                        "detect_min_s": min(detections),
                        "detect_max_s": max(detections),
                        "detections": detections,
                        "false_deaths": falses,
                    }
                    results.append(row)
                    print(
                        f"{profile:5} N={n:<3} {mode:7} bootstrap {boot:5.2f} s  "
                        f"detect median {row['detect_median_s']:5.2f} s "
                        f"[{row['detect_min_s']:.2f}..{row['detect_max_s']:.2f}]  "
                        f"false deaths {falses}",
                        flush=True,
                    )
                finally:
                    cluster.close()
    idle = idle_usage(args.idle_seconds) if args.idle_seconds else {}
    if idle:
        print(
            f"idle agent (lan, 5 nodes): {idle['cpu_percent']:.2f} % CPU, "
            f"{idle['rss_mib']:.1f} MiB RSS"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"runs": results, "idle": idle}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

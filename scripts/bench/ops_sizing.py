"""Sizing numbers for docs/operations.md, from real `mesh agent` processes.

Two measurements, each bounded in time and memory:

* ``memory``: RSS of one agent with an empty table, then after loading routes
  through the batch API (``POST /v1/routes``, 1000 per request), then the RSS
  of a second agent that joins and bootstraps the whole table by anti-entropy
  (a replica). Reports bytes of RSS per route.

      python scripts/bench/ops_sizing.py memory --routes 100000

* ``idle``: N agents at rest (no writes, no API calls during the window), and
  the traffic they make on loopback: bytes and packets per second per member,
  read from the loopback interface counters. Run inside a fresh network
  namespace (``--netns``: re-executes itself under ``unshare -rn``) so the
  counters hold mesh traffic only.

      python scripts/bench/ops_sizing.py idle --nodes 5 --seconds 30 --netns

* ``members``: memory per member known, in-process (a real agent per member
  is not possible at 10,000 members on one machine): one ``NodeCore`` is fed
  Alive messages for N members, measured with tracemalloc.

      python scripts/bench/ops_sizing.py members --members 10000

Prints a JSON document on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from mesh.testing.agents import AgentCluster, AgentProcess, wait_until


def _log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settled_rss(agent: AgentProcess, seconds: float = 3.0) -> int:
    """RSS after the agent had a few seconds to settle (max of 3 samples)."""
    time.sleep(seconds)
    samples = []
    for _ in range(3):
        samples.append(rss_kib(agent.pid()))
        time.sleep(0.2)
    return max(samples)


def ready(agent: AgentProcess) -> bool:
    try:
        return agent.get("/v1/health?ready").status_code == 200
    except httpx.HTTPError:
        return False


def load_routes(agent: AgentProcess, start: int, stop: int) -> None:
    client = httpx.Client(timeout=60.0)
    try:
        for base in range(start, stop, 1000):
            puts = [
                {
                    "key": f"svc-{i:07d}.example",
                    "target": f"http://10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:80",
                }
                for i in range(base, min(base + 1000, stop))
            ]
            r = client.post(agent.base_url + "/v1/routes", json={"put": puts})
            r.raise_for_status()
            bad = [x for x in r.json()["results"] if x["status"] != 200]
            if bad:
                raise RuntimeError(f"batch refused: {bad[:1]}")
    finally:
        client.close()


def memory(args: argparse.Namespace) -> dict[str, Any]:
    steps = sorted({0, *args.steps, args.routes})
    out: dict[str, Any] = {"profile": args.profile, "rss_kib": {}}
    with AgentCluster(profile=args.profile) as cluster:
        a = cluster.add("a", join=[])
        wait_until(lambda: ready(a), 20, what="a ready")
        loaded = 0
        for step in steps:
            if step > loaded:
                t0 = time.monotonic()
                load_routes(a, loaded, step)
                _log(f"loaded {step} routes ({time.monotonic() - t0:.1f} s)")
                loaded = step
            out["rss_kib"][step] = settled_rss(a)
            _log(f"a: {step} routes, RSS {out['rss_kib'][step]} KiB")
        base = out["rss_kib"][0]
        out["bytes_per_route"] = round(
            (out["rss_kib"][args.routes] - base) * 1024 / max(args.routes, 1)
        )
        if args.replica:
            t0 = time.monotonic()
            b = cluster.add("b", join=[a.mesh_addr])
            wait_until(lambda: ready(b), args.timeout, what="b ready")
            out["replica_ready_seconds"] = round(time.monotonic() - t0, 1)
            # Ready is not the whole table yet if b lost sight of a meanwhile
            # (a long digest fold stalls a process): wait for every route.
            slow = httpx.Client(timeout=60.0)

            def count() -> int:
                try:
                    r = slow.get(b.base_url + "/v1/routes?prefix=svc-")
                    return int(r.json()["count"])
                except httpx.HTTPError:
                    return 0

            wait_until(lambda: count() >= args.routes, args.timeout, interval=1.0,
                       what="b holds every route")  # fmt: skip
            out["replica_complete_seconds"] = round(time.monotonic() - t0, 1)
            out["replica_routes"] = count()
            slow.close()
            out["replica_rss_kib"] = settled_rss(b)
            _log(f"b: {out['replica_routes']} routes, RSS {out['replica_rss_kib']} KiB")
    return out


def _lo_counters() -> dict[str, int]:
    # /proc/net/* follows the reader's network namespace (/sys/class/net
    # follows the one that mounted sysfs: the host's).
    counters = {}
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            values = fields.split()
            counters["bytes"] = int(values[8])  # transmit bytes
            counters["packets"] = int(values[9])  # transmit packets
    lines = Path("/proc/net/snmp").read_text().splitlines()
    for proto, names in (("Udp:", ("OutDatagrams",)), ("Tcp:", ("OutSegs",))):
        header, values = (ln.split() for ln in lines if ln.startswith(proto))
        for name in names:
            counters[f"{proto[:-1].lower()}_{name}"] = int(values[header.index(name)])
    return counters


def idle(args: argparse.Namespace) -> dict[str, Any]:
    extra = ["--encrypt", args.encrypt] if args.encrypt else []
    with AgentCluster(profile=args.profile) as cluster:
        for i in range(1, args.nodes + 1):
            cluster.add(f"n{i}", extra=extra)
        wait_until(cluster.converged, 60, interval=0.5, what="mesh converged")
        _log(f"{args.nodes} agents converged; settling {args.settle} s")
        time.sleep(args.settle)  # first push-pulls and anti-entropy rounds
        before, t0 = _lo_counters(), time.monotonic()
        time.sleep(args.seconds)  # no API calls: only the mesh talks
        after, elapsed = _lo_counters(), time.monotonic() - t0
        rss = [rss_kib(a.pid()) for a in cluster.live()]
        converged = cluster.converged()
    per_member = {
        k: round((after[k] - before[k]) / elapsed / args.nodes, 1) for k in before
    }
    return {
        "profile": args.profile,
        "nodes": args.nodes,
        "seconds": round(elapsed, 1),
        "encrypt": bool(args.encrypt),
        "per_member_per_second": per_member,
        "rss_kib_median": sorted(rss)[len(rss) // 2],
        "still_converged": converged,
    }


def members(args: argparse.Namespace) -> dict[str, Any]:
    import gc
    import random
    import tracemalloc

    from mesh.config import Config
    from mesh.core.node import NodeCore
    from mesh.messages import Alive

    core = NodeCore(
        Config.lan(name="n0"),
        addr=("10.0.0.1", 7946),
        rng=random.Random(1),
        now=0.0,
        incarnation=1,
    )
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tags = {"zone": "a", "role": "web"}
    for i in range(1, args.members):
        addr = (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 7946)
        alive = Alive(1, f"member-{i:05d}", addr, tags)
        core.receive(("10.0.0.2", 7946), [alive], 0.0)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "members": len(core.members()),
        "bytes_per_member": round(used / max(args.members - 1, 1)),
        "broadcast_queue": len(core.membership.broadcasts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--routes", type=int, default=100_000)
    m.add_argument("--steps", type=int, nargs="*", default=[10_000, 50_000])
    m.add_argument("--profile", default="lan")
    m.add_argument("--no-replica", dest="replica", action="store_false")
    m.add_argument("--timeout", type=float, default=300.0)
    i = sub.add_parser("idle")
    i.add_argument("--nodes", type=int, default=5)
    i.add_argument("--seconds", type=float, default=30.0)
    i.add_argument("--settle", type=float, default=10.0)
    i.add_argument("--profile", default="lan")
    i.add_argument("--encrypt", default=None, help="a key: measure sealed traffic")
    i.add_argument("--netns", action="store_true", help="run in a new netns")
    mm = sub.add_parser("members")
    mm.add_argument("--members", type=int, default=10_000)
    args = parser.parse_args(argv)
    if args.mode == "idle" and args.netns and not os.environ.get("_MESH_NETNS"):
        # A private loopback: its counters see our agents and nothing else.
        argv = [a for a in (argv or sys.argv[1:]) if a != "--netns"]
        script = 'ip link set lo up && exec "$0" "$@"'
        cmd = ["unshare", "-rn", "sh", "-c", script, sys.executable, __file__,
               *argv]  # fmt: skip
        env = {**os.environ, "_MESH_NETNS": "1"}
        return subprocess.call(cmd, env=env)
    modes = {"memory": memory, "idle": idle, "members": members}
    result = modes[args.mode](args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

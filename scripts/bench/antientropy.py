"""Anti-entropy cost: bytes, round trips and CPU per round vs a full-state
exchange, and (with real processes) repair and bootstrap times.

Part ``rounds`` (in process, deterministic): two route tables of ``--size``
entries (default 100,000) that differ in D keys, D in 0/1/10/100/1000; one
anti-entropy round between them through the real core and codec. Reports round
trips, body bytes, wire bytes (bodies plus the HTTP/1.1 request and response
headers mesh actually sends, measured once against a live agent in part
``wire``; 0 when that part is skipped), CPU per round (median of ``--repeat``),
and the full-state baseline measured in the same run: every entry encoded as
one push body each way (what memberlist's push-pull does with its state),
decoded and applied.

Two shapes of difference: ``missed`` (the peer holds D writes the initiator
missed: a paused or partitioned member) and ``both`` (D writes on each side,
2D differing keys in all).

Part ``flat``: CPU of an idle round and of a 10-key round at table sizes 1k,
10k and 100k: flat in table size.

Part ``real`` (real processes, loopback): a 2-node mesh loaded with
``--size`` routes; one member SIGSTOPped for 30 s while 1,000 writes land on
the other; time from resume to repaired. Then a third member joins: time to
``caught up`` with the whole table.

Run:
    python scripts/bench/antientropy.py                 # all parts
    python scripts/bench/antientropy.py --parts rounds flat --size 100000
Results: a markdown table on stdout, JSON in bench-out/antientropy.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx

from mesh.codec_ae import (
    AeLimits,
    decode_ae_reply,
    decode_ae_request,
    encode_ae_reply,
    encode_ae_request,
)
from mesh.codec_routes import decode_routes, encode_routes
from mesh.config import Config
from mesh.core.antientropy import AeOpen, AntiEntropy, Reconcile
from mesh.core.digest import Symbol
from mesh.core.routes import Route, RouteTable, Version
from mesh.testing.agents import AgentCluster, wait_until

IMG = Path(__file__).resolve().parents[2] / "docs" / "img" / "antientropy.png"
WALL = 1_900_000_000.0  # a fixed wall clock (seconds) for deterministic versions


class Node:
    def __init__(self, name: str) -> None:
        self.config = Config.lan(name=name)
        self.table = RouteTable(
            origin=name,
            max_routes=2_000_000,
            hlc_max_skew_ms=60_000,
            max_symbols=self.config.antientropy_max_symbols,
        )
        self.ae = AntiEntropy(
            self.config,
            self.table,
            name=name,
            repair=set(),
            rng=random.Random(name),
            now=0.0,
            caught_up=True,
        )


def route(i: int, origin: str = "writer") -> Route:
    return Route(
        f"sandbox-{i:07d}.proxy",
        f"http://10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:8080",
        {"zone": "a"},
        Version(0, (int(WALL * 1000) << 16) + i, origin),
    )


def base_pair(size: int) -> tuple[Node, Node]:
    """Two equal tables of ``size`` entries."""
    a, b = Node("a"), Node("b")
    wall_ms = int(WALL * 1000)
    for i in range(size):
        r = route(i)
        a.table.apply(r, wall_ms=wall_ms)
        b.table.apply(r, wall_ms=wall_ms)
    a.table.summary()  # fold digest toggles, as a live node does between rounds
    b.table.summary()
    return a, b


def diverge(a: Node, b: Node, size: int, diff: int, shape: str) -> list[str]:
    """Make ``diff`` keys differ: all missed by ``a`` (``missed``), or split
    between the sides (``both``). Returns the keys, to undo afterwards."""
    wall_ms = int(WALL * 1000)
    keys = []
    for j in range(diff):
        r = route(size + j, "x")
        side = b if shape == "missed" or j % 2 == 0 else a
        side.table.apply(r, wall_ms=wall_ms)
        keys.append(r.key)
    a.table.summary()
    b.table.summary()
    return keys


def undo(a: Node, b: Node, keys: list[str]) -> None:
    for node in (a, b):
        for key in keys:
            if node.table.get(key) is not None:
                node.table._forget(key)
        node.table.summary()


def one_round(a: Node, b: Node) -> dict[str, Any]:
    """Initiator ``a`` with peer ``b``, through the codec both ways."""
    limits = AeLimits.from_config(a.config)
    a.ae._next_at = 0.0
    start = time.process_time()
    effects = a.ae.tick(1.0, WALL, [("b", ("127.0.0.1", 1))], joined=True)
    trips = 0
    sent = received = 0
    while effects:
        (effect,) = effects
        assert isinstance(effect, Reconcile)
        body = encode_ae_request(effect.request)
        request = decode_ae_request(body, limits)
        reply_body = encode_ae_reply(b.ae.handle(request, WALL))
        reply = decode_ae_reply(reply_body, limits)
        trips += 1
        sent += len(body)
        received += len(reply_body)
        effects = a.ae.done(effect.token, reply, 2.0, WALL)
    cpu = time.process_time() - start
    same = {r.key: r.version for r in a.table} == {r.key: r.version for r in b.table}
    return {"trips": trips, "sent": sent, "received": received, "cpu": cpu, "ok": same}


def full_state(a: Node, b: Node) -> dict[str, Any]:
    """Baseline: each side sends its whole table; the other decodes and applies."""
    start = time.process_time()
    total = 0
    wall_ms = int(WALL * 1000)
    for src, dst in ((a, b), (b, a)):
        rows = list(src.table)
        body = encode_routes(src.config.name, rows)
        total += len(body)
        _, decoded = decode_routes(body, max_routes=len(rows) + 1)
        for r in decoded:
            dst.table.apply(r, wall_ms=wall_ms)
    return {"bytes": total, "cpu": time.process_time() - start}


def wire_overhead() -> dict[str, int]:
    """HTTP/1.1 header bytes of one anti-entropy request and its answer, as a
    live agent's peer client and server send them (status/request line
    included; TCP/IP headers not)."""
    with AgentCluster(profile="local") as cluster:
        agent = cluster.add("wire")
        host, port = agent.mesh_addr.rsplit(":", 1)
        body = encode_ae_request(AeOpen("probe", Symbol(0, 0, 0), 0))
        with httpx.Client(trust_env=False) as client:
            # the peer client's own header set (see open_peer_client)
            for name in ("user-agent", "accept", "accept-encoding", "connection"):
                client.headers.pop(name, None)
            request = client.build_request(
                "POST",
                f"http://{host}:{port}/mesh/v1/ae",
                content=body,
                headers={"content-type": "application/msgpack"},
            )
            response = client.send(request)
        line = len("POST /mesh/v1/ae HTTP/1.1\r\n")
        req = line + sum(len(k) + len(v) + 4 for k, v in request.headers.raw) + 2
        status = len(f"HTTP/1.1 {response.status_code} \r\n")
        resp = status + sum(len(k) + len(v) + 4 for k, v in response.headers.raw) + 2
        return {"request_headers": req, "response_headers": resp}


def part_rounds(size: int, repeat: int, overhead: int) -> list[dict[str, Any]]:
    rows = []
    a, b = base_pair(size)
    for shape in ("missed", "both"):
        for diff in (0, 1, 10, 100, 1000):
            cpus, result = [], None
            for _ in range(repeat):
                keys = diverge(a, b, size, diff, shape)
                result = one_round(a, b)
                assert result["ok"], (shape, diff)
                cpus.append(result["cpu"])
                undo(a, b, keys)
            assert result is not None
            keys = diverge(a, b, size, diff, shape)
            base = full_state(a, b)
            undo(a, b, keys)
            body = result["sent"] + result["received"]
            wire = body + result["trips"] * overhead
            rows.append(
                {
                    "shape": shape,
                    "diff": diff,
                    "trips": result["trips"],
                    "body_bytes": body,
                    "wire_bytes": wire,
                    "cpu_ms": 1000 * statistics.median(cpus),
                    "full_bytes": base["bytes"],
                    "full_cpu_ms": 1000 * base["cpu"],
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def part_flat(repeat: int) -> list[dict[str, Any]]:
    rows = []
    for size in (1_000, 10_000, 100_000):
        a, b = base_pair(size)
        for diff in (0, 10):
            cpus = []
            for _ in range(repeat):
                keys = diverge(a, b, size, diff, "missed")
                cpus.append(one_round(a, b)["cpu"])
                undo(a, b, keys)
            cpu_ms = 1000 * statistics.median(cpus)
            rows.append({"size": size, "diff": diff, "cpu_ms": cpu_ms})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def part_real(size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with AgentCluster(profile="lan") as cluster:
        a = cluster.add("ae-a", extra=["--profile", "lan"])
        b = cluster.add("ae-b", extra=["--profile", "lan"])
        wait_until(lambda: a.statuses().get("ae-b") == "alive", 30, what="mesh")
        for start in range(0, size, 1000):
            batch = {
                "put": [
                    {
                        "key": f"sandbox-{i:07d}",
                        "target": f"http://10.0.0.1:{i % 60000}",
                    }
                    for i in range(start, min(size, start + 1000))
                ]
            }
            assert (
                a.request("POST", "/v1/routes", json=batch, timeout=60).status_code
                == 200
            )
        wait_until(
            lambda: b.get("/v1/health").status_code == 200 and _count(b) == size,
            300,
            what="loaded",
        )
        b.pause()
        try:
            t0 = time.monotonic()
            for i in range(1000):
                a.request(
                    "PUT", f"/v1/routes/missed-{i:04d}", json={"target": "http://x"}
                )
            time.sleep(max(0.0, 30.0 - (time.monotonic() - t0)))  # the 30 s pause
        finally:
            b.resume()
        resumed = time.monotonic()
        wait_until(
            lambda: _count(b) == size + 1000, 120, what="repaired", interval=0.05
        )
        out["repair_after_30s_pause_s"] = time.monotonic() - resumed
        started = time.monotonic()
        c = cluster.add("ae-c", extra=["--profile", "lan"])
        wait_until(lambda: _caught_up(c), 300, what="bootstrap", interval=0.05)
        done = time.monotonic()
        out["bootstrap_s"] = done - started  # process start included
        out["bootstrap_after_ready_s"] = done - c.ready_at
        out["bootstrap_routes"] = _count(c)
    return out


def _count(agent: Any) -> int:
    """Live routes on ``agent`` (-1 when it does not answer in time: busy)."""
    try:
        text = agent.get("/metrics", timeout=30).text
    except httpx.HTTPError:
        return -1
    for line in text.splitlines():
        if line.startswith('mesh_routes{state="live"}'):
            return int(float(line.split()[-1]))
    return -1


def _caught_up(agent: Any) -> bool:
    try:
        text = agent.get("/metrics", timeout=30).text
    except httpx.HTTPError:
        return False
    return "mesh_routes_caught_up 1.0" in text


def plot(results: dict[str, Any], path: Path) -> None:
    """Bytes per round vs differing keys, anti-entropy and full state (log y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for shape, style in (("missed", "o-"), ("both", "s--")):
        rows = [r for r in results["rounds"] if r["shape"] == shape]
        xs = [max(r["diff"], 0.5) for r in rows]
        left.plot(xs, [r["wire_bytes"] for r in rows], style, label=f"mesh ({shape})")
        right.plot(xs, [r["cpu_ms"] for r in rows], style, label=f"mesh ({shape})")
    rows = [r for r in results["rounds"] if r["shape"] == "missed"]
    xs = [max(r["diff"], 0.5) for r in rows]
    left.plot(xs, [r["full_bytes"] for r in rows], "k:", label="full-state exchange")
    right.plot(xs, [r["full_cpu_ms"] for r in rows], "k:", label="full-state exchange")
    left.plot(
        xs,
        [256 if r["diff"] == 0 else 1024 + 120 * r["diff"] for r in rows],
        "g-.",
        label="target",
    )
    for ax, label in ((left, "bytes per round (wire)"), (right, "CPU ms per round")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("differing keys (0 plotted at 0.5)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"One anti-entropy round, {results['size']:,}-route table")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts", nargs="+", default=["wire", "rounds", "flat", "real"]
    )
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--plot-from", help="render docs/img/antientropy.png from a JSON result"
    )
    args = parser.parse_args()
    if args.plot_from:
        plot(json.loads(Path(args.plot_from).read_text()), IMG)
        return
    results: dict[str, Any] = {"size": args.size}
    overhead = 0
    if "wire" in args.parts:
        results["wire"] = wire_overhead()
        overhead = sum(results["wire"].values())
        print(f"HTTP overhead per round trip: {results['wire']}")
    if "rounds" in args.parts:
        results["rounds"] = part_rounds(args.size, args.repeat, overhead)
        print(f"\nOne round, {args.size:,} routes, median CPU of {args.repeat}\n")
        print(
            "| shape | D | round trips | body B | wire B | target B | CPU ms "
            "| full-state B | full-state CPU ms |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in results["rounds"]:
            target = 256 if r["diff"] == 0 else 1024 + 120 * r["diff"]
            print(
                f"| {r['shape']} | {r['diff']} | {r['trips']} | {r['body_bytes']:,} | "
                f"{r['wire_bytes']:,} | {target:,} | {r['cpu_ms']:.2f} | "
                f"{r['full_bytes']:,} | {r['full_cpu_ms']:.0f} |"
            )
    if "flat" in args.parts:
        results["flat"] = part_flat(args.repeat)
        print("\n| table size | D | CPU ms per round |\n|---|---|---|")
        for r in results["flat"]:
            print(f"| {r['size']:,} | {r['diff']} | {r['cpu_ms']:.2f} |")
    if "real" in args.parts:
        results["real"] = part_real(args.size)
        print(f"\nreal processes: {results['real']}")
    out = Path("bench-out")
    out.mkdir(exist_ok=True)
    (out / "antientropy.json").write_text(json.dumps(results, indent=2))
    if "rounds" in results:
        plot(results, IMG)


if __name__ == "__main__":
    main()

"""What gossip encryption costs: CPU per packet and replication latency, with
encryption on and off side by side in one run.

1. CPU per packet (this process, ``time.process_time``, median of ``--repeats``
   rounds of ``--loops`` calls each):
   * probe path: a ping datagram with piggybacked gossip (encode, seal) and the
     receiving side (open + replay check, decode), against encode/decode alone;
   * push path: a route batch body (1 and 100 routes) sealed as a peer request
     and opened, against encode/decode alone.
2. Replication latency: two 3-node meshes of real agents (``--profile local``)
   run at once, one plain and one with ``--encrypt``; writes alternate between
   them, each a ``PUT ...?sync=all&timeout=2`` on node1, which answers once
   both peers acknowledged the pushed batch (seal, send, open, apply, sealed
   ack, open). Medians and p90 over ``--writes`` writes per mesh.
3. Idle CPU of each mesh's agents (probing and gossip only) over ``--idle`` s,
   from /proc.

Usage:
    python scripts/bench/crypto_cost.py --writes 300 --idle 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mesh.codec import decode_packet, encode_packet
from mesh.codec_routes import decode_routes, encode_routes
from mesh.core.routes import Route, Version
from mesh.messages import Alive, Ping, Suspect
from mesh.security import Keyring, Kind, ReplayGuard, encode_key, generate_key
from mesh.testing.agents import AgentCluster, wait_until


def cpu_per_call(fn: Callable[[], object], loops: int, repeats: int) -> float:
    """Median CPU seconds per call."""
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(loops):
            fn()
        samples.append((time.process_time() - start) / loops)
    return statistics.median(samples)


def side_by_side(
    plain: Callable[[], object],
    sealed: Callable[[], object],
    loops: int,
    repeats: int,
) -> tuple[float, float]:
    """Median CPU seconds per call of each, rounds interleaved so that both
    see the same background load."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeats):
        a.append(cpu_per_call(plain, loops, 1))
        b.append(cpu_per_call(sealed, loops, 1))
    return statistics.median(a), statistics.median(b)


def packet_costs(loops: int, repeats: int) -> list[tuple[str, int, float, float]]:
    """(what, sealed bytes, plain s, encrypted s) per row: the plain column is
    the codec alone, the encrypted one the codec plus what sealing adds on that
    side (seal; or open plus the replay check)."""
    ring = Keyring([generate_key(32)])
    name = "node-17"
    now = 1.8e9
    guard = ReplayGuard(30.0, 10**9)
    counter = iter(range(10**9))

    def replay_check() -> None:
        # A fresh nonce each time, as real traffic has.
        guard.check(int(now * 1000), next(counter).to_bytes(12, "big"), now)

    probe = [
        Ping(42, "node-3", name),
        Alive(1_795_000_000, "node-9", ("10.0.0.9", 7946), {"zone": "a"}),
        Suspect(1_795_000_001, "node-4", name),
    ]
    plain_probe = encode_packet(probe)
    sealed_probe = ring.seal(plain_probe, sender=name, kind=Kind.DATAGRAM, now=now)

    def send_probe() -> bytes:
        data = encode_packet(probe)
        return ring.seal(data, sender=name, kind=Kind.DATAGRAM, now=now)

    def receive_probe() -> object:
        envelope = ring.open(sealed_probe, kind=Kind.DATAGRAM)
        replay_check()
        return decode_packet(envelope.payload)

    rows = [
        (
            "probe datagram (ping + 2 gossip), send",
            len(sealed_probe),
            *side_by_side(lambda: encode_packet(probe), send_probe, loops, repeats),
        ),
        (
            "probe datagram (ping + 2 gossip), receive",
            len(sealed_probe),
            *side_by_side(
                lambda: decode_packet(plain_probe), receive_probe, loops, repeats
            ),
        ),
    ]
    bind = b"POST /mesh/v1/routes"
    for count in (1, 100):
        routes = [
            Route(
                f"svc.{i}",
                f"http://10.1.{i // 250}.{i % 250}:8080",
                {"v": "1"},
                Version(0, 1_795_000_000_000 << 16, name),
            )
            for i in range(count)
        ]
        body = encode_routes(name, routes)
        sealed = ring.seal(body, sender=name, kind=Kind.REQUEST, now=now, bind=bind)

        def send_push(r: list[Route] = routes) -> bytes:
            data = encode_routes(name, r)
            return ring.seal(data, sender=name, kind=Kind.REQUEST, now=now, bind=bind)

        def receive_push(s: bytes = sealed) -> object:
            envelope = ring.open(s, kind=Kind.REQUEST, bind=bind)
            replay_check()
            return decode_routes(envelope.payload, max_routes=1000)

        n = max(1, loops // count)
        rows += [
            (
                f"push body, {count} route(s), send",
                len(sealed),
                *side_by_side(
                    lambda r=routes: encode_routes(name, r), send_push, n, repeats
                ),
            ),
            (
                f"push body, {count} route(s), receive",
                len(sealed),
                *side_by_side(
                    lambda b=body: decode_routes(b, max_routes=1000),
                    receive_push,
                    n,
                    repeats,
                ),
            ),
        ]
    return rows


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(writes: int, idle: float) -> dict[str, dict[str, float]]:
    key = encode_key(generate_key(32))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as logs:
        plain = AgentCluster(log_dir=os.path.join(logs, "plain"))
        sealed = AgentCluster(log_dir=os.path.join(logs, "sealed"))
        os.makedirs(plain.log_dir or "", exist_ok=True)
        os.makedirs(sealed.log_dir or "", exist_ok=True)
        with plain, sealed:
            for i in (1, 2, 3):
                plain.add(f"p{i}")
                sealed.add(f"s{i}", extra=["--encrypt", key])
            wait_until(lambda: plain.converged() and sealed.converged(), 20)
            meshes = {"off": plain, "on": sealed}
            samples: dict[str, list[float]] = {"off": [], "on": []}
            with httpx.Client(timeout=5.0) as http:
                for i in range(writes):
                    # Alternate which mesh goes first, so neither always
                    # writes right after the other's burst of work.
                    order = list(meshes.items())
                    for label, mesh in order if i % 2 else order[::-1]:
                        node = next(iter(mesh.agents.values()))
                        url = f"{node.base_url}/v1/routes/bench.{i}"
                        start = time.perf_counter()
                        response = http.put(
                            url + "?sync=all&timeout=2", json={"target": f"http://{i}"}
                        )
                        elapsed = time.perf_counter() - start
                        body = response.json()
                        if response.status_code != 200 or body.get("pending"):
                            raise SystemExit(f"write not acked by all: {body}")
                        samples[label].append(elapsed)
                    time.sleep(0.01)
            for label, values in samples.items():
                results[label] = {
                    "median_ms": statistics.median(values) * 1000,
                    "p90_ms": pct(values, 0.9) * 1000,
                }
            pids = {
                label: [a.pid() for a in m.agents.values()]
                for label, m in meshes.items()
            }
            before = {label: sum(map(_proc_cpu, p)) for label, p in pids.items()}
            time.sleep(idle)
            for label, p in pids.items():
                used = sum(map(_proc_cpu, p)) - before[label]
                results[label]["idle_cpu_pct_per_agent"] = used / idle / len(p) * 100
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    print("## CPU per packet (µs, median of interleaved repeats)\n")
    print("| what | bytes sealed | plain | encrypted | added |")
    print("|---|---|---|---|---|")
    for what, size, plain, sealed in packet_costs(args.loops, args.repeats):
        print(
            f"| {what} | {size} | {plain * 1e6:.1f} | {sealed * 1e6:.1f} | "
            f"+{(sealed - plain) * 1e6:.1f} |"
        )
    print(f"\n## Replication of a write, 3 agents, sync=all ({args.writes} writes)\n")
    results = latency(args.writes, args.idle)
    print("| encryption | median | p90 | idle CPU per agent |")
    print("|---|---|---|---|")
    for label in ("off", "on"):
        r = results[label]
        print(
            f"| {label} | {r['median_ms']:.2f} ms | {r['p90_ms']:.2f} ms | "
            f"{r['idle_cpu_pct_per_agent']:.2f} % |"
        )


if __name__ == "__main__":
    main()

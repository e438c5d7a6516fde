"""Client CPU of one push request: httpx over mesh's h11 transport vs httpx's
default transport, against a real agent's peer port on loopback.

What a route push costs the writer before any mesh logic: the fan-out of a
write is one such request per peer from the writer's single loop.

Run: python scripts/bench/push_client_cost.py [--requests 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx
import trio

from mesh.codec import encode_routes
from mesh.core.routes import Route, Version
from mesh.shell.http_client import H11Transport
from mesh.testing.agents import AgentCluster


async def measure(url: str, requests: int) -> None:
    hlc = int(time.time() * 1000) << 16
    body = encode_routes(
        "bench", [Route("k", "http://x", {}, Version(0, hlc, "bench"))]
    )
    clients = (
        (
            "httpx + mesh h11 transport",
            H11Transport(max_connections=8, keepalive_expiry=60.0),
        ),
        ("httpx default transport", None),
    )
    target = httpx.URL(url)
    headers = {"content-type": "application/msgpack"}
    for label, transport in clients:
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(50):  # warm up: connection open, caches
                await client.post(target, content=body, headers=headers)
            cpu, wall = time.process_time(), time.monotonic()
            for _ in range(requests):
                response = await client.post(target, content=body, headers=headers)
                assert response.status_code == 200
            cpu_ms = 1000 * (time.process_time() - cpu) / requests
            wall_ms = 1000 * (time.monotonic() - wall) / requests
            print(f"| {label} | {cpu_ms:.3f} | {wall_ms:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    with AgentCluster(profile="local") as cluster:
        agent = cluster.add("push-target")
        print("| client | CPU ms per request | wall ms per request |\n|---|---|---|")
        trio.run(measure, f"http://{agent.mesh_addr}/mesh/v1/routes", args.requests)


if __name__ == "__main__":
    main()

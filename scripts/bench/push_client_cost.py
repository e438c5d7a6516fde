"""Client CPU of one route push, path by path, against a real agent's peer port
on loopback.

What a route push costs the writer: the fan-out of a write is one such request
per peer from the writer's single loop, so this CPU bounds ``?sync=all``
latency. Rows, each timed in turn in every repetition (the machine is shared
and noisy, so the table shows the median over repetitions and their spread):

* ``client.post``: a plain httpx call over mesh's h11 transport;
* ``client.stream`` + ``read_limited``: the request path the pusher used
  before it sent prebuilt requests (build_request merges the client's default
  headers, which both ends then validate);
* ``client.send`` of a prebuilt ``httpx.Request``: what the pusher sends now,
  with the same bounded ack read;
* the transport alone (``handle_async_request``): the floor under httpx;
* ``Pusher``: a whole batch as the agent runs it, from ``push()`` to
  ``push_done`` (encode, sealing, limiter, timeouts, ack check, metrics);
* httpx's default transport (httpcore + anyio), ``client.post``, for scale.

Run: python scripts/bench/push_client_cost.py [--requests 1000] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx
import trio

from mesh.codec_routes import encode_routes
from mesh.config import Config
from mesh.core.effects import Push
from mesh.core.routes import Route, Version
from mesh.core.sync import Batch
from mesh.shell.agent import Agent
from mesh.shell.http_client import H11Transport
from mesh.shell.peer_http import ACK_LIMIT, MSGPACK, read_limited
from mesh.shell.pusher import open_pusher
from mesh.testing.agents import AgentCluster

Call = Callable[[], Awaitable[None]]
#: requests that open connections and warm caches before each timed row
WARMUP = 50


def _route() -> Route:
    hlc = int(time.time() * 1000) << 16
    return Route("k", "http://x", {}, Version(0, hlc, "bench"))


async def _time(path: Call, requests: int) -> tuple[float, float]:
    """CPU and wall ms per call of ``path``."""
    for _ in range(WARMUP):
        await path()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        await path()
    return (
        1000 * (time.process_time() - cpu) / requests,
        1000 * (time.perf_counter() - wall) / requests,
    )


async def measure(addr: str, requests: int, reps: int, default: bool) -> None:
    host, port = addr.rsplit(":", 1)
    route = _route()
    body = encode_routes("bench", [route])
    target = httpx.URL(f"http://{addr}/mesh/v1/routes")
    headers = {"content-type": MSGPACK}
    timeout = httpx.Timeout(1.0)
    config = Config.local(name="bench", bind=("127.0.0.1", 0), http=("127.0.0.1", 0))
    agent = Agent(config, addr=("127.0.0.1", 1), now=trio.current_time())
    pushed = trio.Event()

    def push_done(batch: Batch, ok: bool, reason: str) -> None:
        assert ok, reason
        pushed.set()

    agent.push_done = push_done  # type: ignore[method-assign]
    transport = H11Transport(max_connections=8, keepalive_expiry=60.0)
    async with (
        httpx.AsyncClient(transport=transport, timeout=timeout) as client,
        httpx.AsyncClient(timeout=timeout) as default_client,
        open_pusher(agent) as pusher,
    ):
        raw_headers = httpx.Headers(headers)
        timeout_ext = timeout.as_dict()

        async def post() -> None:
            response = await client.post(target, content=body, headers=headers)
            assert response.status_code == 200

        async def stream() -> None:
            async with client.stream(
                "POST", target, content=body, headers=headers
            ) as response:
                assert response.status_code == 200
                await read_limited(response, ACK_LIMIT)

        async def send() -> None:
            request = httpx.Request("POST", target, content=body, headers=raw_headers)
            request.extensions["timeout"] = timeout_ext
            response = await client.send(request, stream=True)
            try:
                assert response.status_code == 200
                await read_limited(response, ACK_LIMIT)
            finally:
                await response.aclose()

        async def bare() -> None:
            request = httpx.Request("POST", target, content=body, headers=raw_headers)
            request.extensions["timeout"] = timeout_ext
            response = await transport.handle_async_request(request)
            try:
                assert response.status_code == 200
                await response.aread()
            finally:
                await response.aclose()

        serial = 0

        async def push() -> None:
            nonlocal pushed, serial
            serial += 1
            pushed = trio.Event()
            batch = Batch(
                serial,
                "push-target",
                (host, int(port)),
                (route,),
                0,
                trio.current_time() + 60.0,
            )
            pusher.push(Push(batch))
            await pushed.wait()

        async def post_default() -> None:
            response = await default_client.post(target, content=body, headers=headers)
            assert response.status_code == 200

        paths: list[tuple[str, Call]] = [
            ("client.post (h11 transport)", post),
            ("client.stream + read_limited (pusher before)", stream),
            ("client.send(prebuilt Request) + read_limited", send),
            ("transport alone (floor)", bare),
            ("Pusher: push() to push_done, whole batch", push),
        ]
        if default:
            paths.append(("client.post (httpx default transport)", post_default))
        results: dict[str, list[tuple[float, float]]] = {
            label: [] for label, _ in paths
        }
        for _ in range(reps):
            for label, path in paths:
                results[label].append(await _time(path, requests))
    print(
        f"{requests} requests x {reps} repetitions; median [min..max]\n\n"
        "| path | CPU ms per request | wall ms per request |\n|---|---|---|"
    )
    for label, samples in results.items():
        cpu = [c for c, _ in samples]
        wall = [w for _, w in samples]
        print(f"| {label} | {_fmt(cpu)} | {_fmt(wall)} |")


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}..{max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--no-default",
        action="store_true",
        help="skip httpx's default transport (slow, for scale only)",
    )
    args = parser.parse_args()
    with AgentCluster(profile="local") as cluster:
        agent = cluster.add("push-target")
        trio.run(
            measure, agent.mesh_addr, args.requests, args.reps, not args.no_default
        )


if __name__ == "__main__":
    main()

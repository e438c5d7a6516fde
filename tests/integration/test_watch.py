"""Route watchers against a real ``mesh agent`` process: a client that goes
away (killed, timed out) frees its ``watch_max_clients`` slot at once, for
blocking queries and the change stream alike. Every wait is a condition polled
under a deadline."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx

from mesh.testing.agents import AgentCluster, AgentProcess, wait_until

#: "at once": the slot used to stay taken for the whole wait (60 s here) or
#: until a heartbeat write failed (15 s and more)
PROMPTLY = 3.0


def watchers(agent: AgentProcess) -> float | None:
    """The agent's ``mesh_route_watchers`` gauge."""
    for line in agent.get("/metrics").text.splitlines():
        if line.startswith("mesh_route_watchers "):
            return float(line.split()[1])
    return None


def test_watch_clients_that_go_away_free_their_slots(cluster: AgentCluster) -> None:
    agent = cluster.add("w", env={"MESH_WATCH_MAX_CLIENTS": "2"})
    host, port = agent.http_addr.rsplit(":", 1)
    clients: list[socket.socket] = []
    index = agent.get("/v1/routes").json()["index"]  # parks: nothing changes
    try:
        for target in (f"/v1/routes?index={index}&wait=60s", "/v1/watch/routes"):
            sock = socket.create_connection((host, int(port)), timeout=5)
            clients.append(sock)
            sock.sendall(f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        wait_until(lambda: watchers(agent) == 2, 10.0, what="two watchers parked")
        full = agent.get(f"/v1/routes?index={index}&wait=1ms")
        assert full.status_code == 429
        assert full.headers["retry-after"] == "1"
    finally:
        for sock in clients:
            sock.close()
    wait_until(lambda: watchers(agent) == 0, PROMPTLY, what="both slots freed")
    assert agent.get(f"/v1/routes?index={index}&wait=1ms").status_code == 200
    assert agent.alive()


def first_stream_event(agent: AgentProcess, query: str) -> dict[str, Any]:
    """The first document of ``GET /v1/watch/routes{query}``."""
    url = f"{agent.base_url}/v1/watch/routes{query}"
    with httpx.stream("GET", url, timeout=5.0, trust_env=False) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                document: dict[str, Any] = json.loads(line)
                return document
    raise AssertionError("the stream ended without a document")


def test_a_watcher_resuming_across_a_restart_gets_a_snapshot(
    cluster: AgentCluster,
) -> None:
    # A client applied everything up to `held`; the agent then restarts
    # (empty, alone) and takes new writes. Resuming with `held` must not be
    # answered with the new life's changes after that number: the client
    # would keep r0..r9, which this agent no longer holds, and never learn.
    agent = cluster.add("w", join=[])
    for i in range(10):
        agent.request("PUT", f"/v1/routes/r{i}", json={"target": "old"})
    held = agent.get("/v1/routes").json()["index"]
    agent.kill()
    agent = cluster.add("w", join=[])
    for i in range(12):
        agent.request("PUT", f"/v1/routes/s{i:02d}", json={"target": "new"})
    event = first_stream_event(agent, f"?index={held}")
    assert event["event"] == "snapshot"
    assert [r["key"] for r in event["routes"]] == [f"s{i:02d}" for i in range(12)]
    assert event["index"] > held

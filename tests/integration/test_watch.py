"""Route watchers against a real ``mesh agent`` process: a client that goes
away (killed, timed out) frees its ``watch_max_clients`` slot at once, for
blocking queries and the change stream alike. Every wait is a condition polled
under a deadline."""

from __future__ import annotations

import socket

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
    try:
        for target in ("/v1/routes?index=0&wait=60s", "/v1/watch/routes"):
            sock = socket.create_connection((host, int(port)), timeout=5)
            clients.append(sock)
            sock.sendall(f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        wait_until(lambda: watchers(agent) == 2, 10.0, what="two watchers parked")
        full = agent.get("/v1/routes?index=0&wait=1ms")
        assert full.status_code == 429
        assert full.headers["retry-after"] == "1"
    finally:
        for sock in clients:
            sock.close()
    wait_until(lambda: watchers(agent) == 0, PROMPTLY, what="both slots freed")
    assert agent.get("/v1/routes?index=0&wait=1ms").status_code == 200
    assert agent.alive()

"""Connection slots of real agents: silent TCP connections filling a member's
mesh port or client API must not shut it for new connections (audit 2,
finding 2; mesh/shell/http_server.py, "Connection slots")."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from mesh.testing.agents import AgentCluster, AgentProcess, wait_until

#: small, so the test needs few sockets; the header timeout stays the default
#: (10 s): within it, only evicting idle connections can admit new ones
ENV = {"MESH_HTTP_MAX_CONNECTIONS": "50"}
SILENT = 200  # 4 x the slots: the rest wait in the listen backlog


def _addr(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


@contextmanager
def silent_connections(hostport: str, count: int) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections to ``hostport`` that never send a byte."""
    with ExitStack() as stack:
        socks = [
            stack.enter_context(socket.create_connection(_addr(hostport), timeout=5))
            for _ in range(count)
        ]
        yield socks


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True  # reset: closed too


def test_silent_connections_do_not_shut_the_mesh_port_or_the_api(
    cluster: AgentCluster,
) -> None:
    a = cluster.add("a", env=ENV)
    b = cluster.add("b", env=ENV)
    wait_until(cluster.converged, 10.0, what="convergence")
    started = time.monotonic()
    with silent_connections(b.mesh_addr, SILENT) as silent:
        # a sync write needs b's mesh port, and so does a join through b
        response = a.request(
            "PUT",
            "/v1/routes/x1?sync=all&timeout=5",
            json={"target": "x"},
            timeout=10,
        )
        assert response.status_code == 200
        assert response.json()["acked"] == ["b"], response.json()
        c: AgentProcess = cluster.add("c", join=[b.mesh_addr], env=ENV)
        wait_until(
            lambda: set(c.statuses()) == {"a", "b", "c"}, 10.0, what="c joined via b"
        )
        # Every silent connection is closed at the header timeout (10 s) of
        # its accept at the latest, not held for the keep-alive timeout.
        wait_until(
            lambda: all(closed_by_server(s) for s in silent), 30.0, what="closed"
        )
    assert time.monotonic() - started < 30.0
    # the client API likewise
    with silent_connections(a.http_addr, SILENT):
        assert a.get("/v1/health").status_code == 200

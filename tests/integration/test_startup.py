"""``mesh agent`` started with ports it cannot have: one line naming the
address and a non-zero exit, never a traceback (a black-box audit, session
13, got a 68-line exception group for ``--http`` on the ``--bind`` port).
Real processes and real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

#: start-up fails before anything is served: this only guards against a hang
DEADLINE = 30.0


@pytest.fixture
def held_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", "agent", "--name", "s1", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def _one_line(run: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("mesh: error")]
    assert len(lines) == 1, run.stderr
    return lines[0]


def test_a_port_another_process_holds_is_named(held_port: int) -> None:
    run = agent("--bind", f"127.0.0.1:{held_port}", "--http", "127.0.0.1:0")
    assert run.returncode == 1
    assert f"cannot bind mesh address 127.0.0.1:{held_port}" in _one_line(run)
    run = agent("--bind", "127.0.0.1:0", "--http", f"127.0.0.1:{held_port}")
    assert run.returncode == 1
    assert f"cannot bind http address 127.0.0.1:{held_port}" in _one_line(run)


def test_the_api_on_the_mesh_port_is_refused() -> None:
    with socket.socket() as probe:  # a port free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    same = agent("--bind", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{port}")
    assert same.returncode == 2  # an inconsistent config
    assert "are one TCP port" in _one_line(same)
    # One host spelt two ways (a name, and the address the agent binds for
    # it, which is the resolver's first): only binding can tell.
    info = socket.getaddrinfo(
        "localhost", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    host = str(info[0][4][0])
    literal = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    named = agent("--bind", f"localhost:{port}", "--http", literal)
    assert named.returncode == 1
    assert "cannot bind http address" in _one_line(named)

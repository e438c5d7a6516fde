"""``mesh up`` stopped by a signal: SIGTERM (``timeout``, systemd, CI), SIGHUP (a
closed terminal) and SIGINT end it as ``q`` does; every agent it started leaves
gracefully and none outlives it, also when the signal arrives during start-up.

Agents are found through /proc by a token in their environment (inherited from
``mesh up``), so we see them even once reparented, and kill them at the end
whatever happened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pty
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.testing.agents import wait_until

DEADLINE = 30.0
#: mesh up waits at most 10 s (mesh.tui.LEAVE_TIMEOUT) for the agents to leave,
#: then kills them: this only guards against a hang.
EXIT_DEADLINE = 60.0
_TOKEN = "MESHTEST_UP_TOKEN"  # not MESH_*: an agent warns of unknown MESH_ variables


def _agents(token: str) -> list[int]:
    """Live ``mesh agent`` processes carrying ``token`` (zombies have neither
    a command line nor an environment)."""
    mark = f"{_TOKEN}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent" in cmdline and mark in environ:
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def _mesh_up(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, **kw: object
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m mesh up ARGS`` with its agents' logs under tmp_path; on exit
    kill it and every agent it started, whatever the test did."""
    token = uuid.uuid4().hex
    full_env = {**os.environ, "TMPDIR": str(tmp_path), _TOKEN: token, **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh", "up", *args],
        env=full_env,
        **kw,  # type: ignore[call-overload]
    )
    try:
        yield proc, token
    finally:
        _kill_all(proc, token)


def _kill_all(proc: subprocess.Popen[bytes], token: str) -> None:
    """Whatever a failed test left: ``mesh up`` and every agent it started."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for pid in _agents(token):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


def _assert_all_left(tmp_path: Path, names: list[str]) -> None:
    """Each named agent logged its graceful stop (SIGKILL leaves no line)."""
    (log_dir,) = tmp_path.glob("mesh-up-*")
    for name in names:
        log = (log_dir / f"{name}.log").read_text()
        assert "agent stopped" in log, f"{name} did not leave:\n{log}"


@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
    ids=["SIGTERM", "SIGHUP", "SIGINT"],
)
def test_a_stop_signal_makes_every_agent_leave(
    tmp_path: Path, signum: signal.Signals
) -> None:
    out = tmp_path / "out.txt"
    with (
        out.open("wb") as stdout,
        _mesh_up(
            tmp_path,
            *("--nodes", "2", "--plain", "--duration", "600"),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
        ) as (proc, token),
    ):
        wait_until(
            lambda: (
                "2/2 processes running" in out.read_text() and len(_agents(token)) == 2
            ),
            DEADLINE,
            what="mesh up showing both agents",
        )
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=EXIT_DEADLINE)
        # mesh up waits for its agents: none may be left once it has exited
        assert _agents(token) == [], "agents outlived mesh up"
        assert proc.returncode == 0, stderr.decode()
    assert "stopped; agent logs are in" in out.read_text()
    _assert_all_left(tmp_path, ["node1", "node2"])


def test_a_signal_during_start_up_stops_the_agents_started(tmp_path: Path) -> None:
    # The agents read their config from a FIFO: the first one blocks there,
    # before its ready line, holding mesh up in start-up until we write it.
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    with _mesh_up(
        tmp_path,
        *("--nodes", "3", "--plain", "--duration", "600"),
        env={"MESH_CONFIG": str(fifo)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as (proc, token):
        wait_until(lambda: _agents(token), DEADLINE, what="the first agent")
        proc.send_signal(signal.SIGTERM)  # mesh up waits for its ready line
        wait_until(
            lambda: _release(fifo), DEADLINE, what="the agent reading its config"
        )
        stdout, stderr = proc.communicate(timeout=EXIT_DEADLINE)
        assert _agents(token) == [], "agents outlived mesh up"
        assert proc.returncode == 0, stderr.decode()
    assert b"processes running" not in stdout  # stopped before the view
    _assert_all_left(tmp_path, ["node1"])
    (log_dir,) = tmp_path.glob("mesh-up-*")
    assert not (log_dir / "node2.log").exists()  # no agent started after it


def _release(fifo: Path) -> bool:
    """Let whoever reads ``fifo`` go on (an empty config); False while nobody
    reads it (a non-blocking open fails then, rather than waits)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
    os.close(fd)
    return True


def test_a_closed_terminal_stops_the_mesh(tmp_path: Path) -> None:
    """mesh up on a terminal of its own (its controlling terminal, in full-screen
    mode); closing the terminal hangs it up: the kernel sends SIGHUP to mesh up
    only (the agents run in sessions of their own) and its writes then fail."""
    master, slave = pty.openpty()
    slave_name = os.ttyname(slave)
    os.close(slave)
    # a session leader opening a terminal makes it its controlling terminal
    become_session_leader = (
        "import os, sys\n"
        "os.setsid()\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "for n in (0, 1, 2):\n"
        "    os.dup2(fd, n)\n"
        "os.close(fd)\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'mesh', *sys.argv[2:]])\n"
    )
    token = uuid.uuid4().hex
    env = {**os.environ, "TMPDIR": str(tmp_path), _TOKEN: token}
    proc = subprocess.Popen(
        [sys.executable, "-c", become_session_leader, slave_name,
         "up", "--nodes", "2", "--duration", "600"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    screen = bytearray()

    def shows_both() -> bool:
        while select.select([master], [], [], 0.05)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal was hung up (mesh up died)
                break
            if not chunk:
                break
            screen.extend(chunk)
        return b"2/2 processes running" in screen and len(_agents(token)) == 2

    try:
        try:
            wait_until(shows_both, DEADLINE, what="mesh up showing both agents")
        finally:
            os.close(master)  # the terminal closes
        proc.wait(timeout=EXIT_DEADLINE)
        assert _agents(token) == [], "agents outlived mesh up"
        assert proc.returncode == 0
    finally:
        _kill_all(proc, token)
    _assert_all_left(tmp_path, ["node1", "node2"])

"""``mesh up``: the metrics parsing behind its activity table, and one short
plain-text run against real agents."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from mesh.tui import _act, _process_state, _render, _total, parse_metrics

SAMPLE = """\
# HELP mesh_routes Routes in this node's table by state
# TYPE mesh_routes gauge
mesh_routes{state="live"} 3.0
mesh_routes{state="tombstone"} 1.0
mesh_pushes_total{result="ok"} 7.0
mesh_pushes_total{result="failed"} 2.0
mesh_pushes_total{result="deadline"} 1.0
mesh_push_queue_depth 4.0
"""


def test_parse_and_total() -> None:
    metrics = parse_metrics(SAMPLE)
    assert _total(metrics, "mesh_routes", state="live") == 3
    assert _total(metrics, "mesh_routes", state="tombstone") == 1
    assert _total(metrics, "mesh_pushes_total") == 10
    assert _total(metrics, "mesh_pushes_total", result="ok") == 7
    assert _total(metrics, "mesh_push_queue_depth") == 4
    assert _total(metrics, "mesh_antientropy_rounds_total") == 0  # absent


def test_up_shows_routes_and_push_activity() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mesh", "up", "--nodes", "2", "--duration", "2",
         "--plain"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    frames = result.stdout.split("routes and replication")
    assert len(frames) >= 2
    last = frames[-1].splitlines()
    header = last[1].split()
    assert header[:7] == ["#", "agent", "routes", "tombs", "pushed", "failed", "queue"]
    rows = [line.split() for line in last[2:4]]
    assert [r[1] for r in rows] == ["node1", "node2"]
    assert all(r[2] == "0" for r in rows)  # nothing written yet


class _StoppedAgent:
    """A stopped process posing as an agent: asking it would wait out the
    client's timeout, so any request is a failure here."""

    name = "node1"

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pid(self) -> int:
        return self.proc.pid

    def statuses(self) -> dict[str, str]:
        raise AssertionError("asked a paused agent for its members")

    def get(self, path: str, **kw: object) -> object:
        raise AssertionError(f"asked a paused agent for {path}")


class _Cluster:
    def __init__(self, agent: _StoppedAgent) -> None:
        self.agents = {agent.name: agent}

    def live(self) -> list[_StoppedAgent]:
        return [a for a in self.agents.values() if a.alive()]


def test_a_paused_agent_is_not_asked_and_shows_as_paused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while _process_state(_StoppedAgent(proc)) != "paused":  # type: ignore[arg-type]
            assert time.monotonic() < deadline, "the process never stopped"
            time.sleep(0.01)
        _render(_Cluster(_StoppedAgent(proc)), "", plain=True)  # type: ignore[arg-type]
    finally:
        proc.kill()
        proc.wait()
    out = capsys.readouterr().out
    assert "node1    paused" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0"], "--nodes must be in 1..100"),
        (["--duration", "-1"], "--duration must be >= 0"),
        (["--duration", "nan"], "--duration must be >= 0"),
    ],
)
def test_bad_up_arguments_exit_2_before_any_agent_starts(
    args: list[str], message: str
) -> None:
    """A negative duration started the agents and stopped at once, exit 0
    (audit, session 14)."""
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "up", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "starting" not in done.stdout


class _FakeAgent:
    def __init__(self, name: str) -> None:
        self.name = name
        self.killed = False

    def kill(self) -> None:
        self.killed = True


class _FakeCluster:
    def __init__(self, n: int) -> None:
        self.agents = {f"node{i}": _FakeAgent(f"node{i}") for i in range(1, n + 1)}


def _typed(*keys: str | None) -> object:
    """A key reader that hands out ``keys`` in turn, then None (a timeout)."""
    pending = list(keys)

    def read(timeout: float) -> str | None:
        return pending.pop(0) if pending else None

    return read


@pytest.mark.parametrize(
    ("members", "typed", "killed"),
    [
        (12, ("1", "2"), "node12"),  # node10 and up could not be named (audit)
        (12, ("1", None), "node1"),  # no second digit in time: node1
        (12, ("2",), "node2"),  # 20 > 12: no wait for another digit
        (5, ("1", "2"), "node1"),  # below ten members a number is one digit
        (100, ("1", "0", "0"), "node100"),
    ],
)
def test_a_members_number_may_have_several_digits(
    members: int, typed: tuple[str | None, ...], killed: str
) -> None:
    cluster = _FakeCluster(members)
    message = _act(cluster, "k", _typed(*typed))  # type: ignore[arg-type]
    assert message == f"killed {killed}"
    assert [a.name for a in cluster.agents.values() if a.killed] == [killed]

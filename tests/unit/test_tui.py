"""``mesh up``: the metrics parsing behind its activity table, and one short
plain-text run against real agents."""

from __future__ import annotations

import subprocess
import sys

from mesh.tui import _total, parse_metrics

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

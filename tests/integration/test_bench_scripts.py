"""The in-process benchmark scripts still run.

Why: docs/benchmarks.md quotes their tables with the commands that reproduce
them, and nothing else imports them, so a change to the code they measure
can break them unnoticed (``digest_fold.py`` failed from session 9, when the
digest moved to numpy, until session 14). Each runs here as a real process
with the smallest arguments that still take every path, and must print its
table; the numbers themselves are not asserted (tests never judge speed).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPTS = [
    (
        "digest_fold.py",
        ["--reps", "1", "--trials", "1", "--elements", "600", "--sizes", "3,10"],
        "| scheme 1 |",
    ),
    ("fold_ab.py", ["--trees", "a=.,b=.", "--slices", "64", "--reps", "1"], "| 64 |"),
    (
        "route_path_cost.py",
        ["--routes", "2000", "--batch", "100", "--reps", "1"],
        "| digest fold |",
    ),
    (
        "route_rewrite_cost.py",
        ["--routes", "2000", "--batch", "100", "--reps", "1"],
        "| pushed, rewrites |",
    ),
    (
        "table_growth.py",
        ["--routes", "20000", "--batch", "1000", "--reps", "1"],
        "| table size before it |",
    ),
    ("gc_pause.py", ["--trees", "a=.", "--routes", "5000", "--reps", "1"], "| 5,000 |"),
    ("loopback_cost.py", ["--round-trips", "200", "--reps", "1"], "send: "),
    (
        "sim_speed.py",
        ["--nodes", "20", "--duration", "5"],
        "all views agree at the end | True",
    ),
]


@pytest.mark.parametrize(
    ("script", "args", "expected"), SCRIPTS, ids=[s[0] for s in SCRIPTS]
)
def test_benchmark_script_runs(script: str, args: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout, done.stdout[-2000:]

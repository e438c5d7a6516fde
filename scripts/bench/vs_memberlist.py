"""Crash detection side by side: mesh (SWIM mode) against hashicorp/memberlist.

For each cluster size N and each run, one fresh mesh cluster and one fresh
memberlist cluster are started in turn (the order alternates from run to run so
that slow phases of a noisy machine hit both alike), on 127.0.0.1:

* mesh: ``mesh agent --profile lan`` with ``tcp_fallback_probe = false`` (pure
  SWIM + Lifeguard: the refused port of the crashed process is not used);
* memberlist 0.2.2: ``DefaultLANConfig()`` through the small program in
  ``scripts/bench/memberlist/main.go`` (built on first use, see there).

Once every node sees every other alive and the cluster has settled for
``--settle`` seconds, the same randomly chosen member (never the seed) is
SIGKILLed; the detection time is from the kill until the last survivor has
recorded it dead. Both sides timestamp an event in the process that sees it,
with the wall clock at the time of the event (mesh: the JSON log line's
``timestamp``; memberlist: the time printed by the NotifyLeave callback), and
the driver only reads the files afterwards, so polling adds no load.

Per run the phases are also split from the same logs: kill -> first suspicion
(one probe of the victim ended without an ack: memberlist's "Suspect X has
failed" line, mesh's first "member suspect"), first suspicion -> first dead
(the suspicion timeout), first dead -> every survivor (dissemination).

    python scripts/bench/vs_memberlist.py --sizes 5,20,50 --runs 5,10,10 \\
        --json bench-out/vs_memberlist.json

Outputs (logs, the memberlist binary, the JSON) go under bench-out/ (gitignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-out"
ML_SRC = ROOT / "scripts" / "bench" / "memberlist" / "main.go"


T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None], timeout: float, *, interval: float, what: str
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- memberlist ---


def build_memberlist(out_dir: Path) -> Path:
    """Build the memberlist node program (GOPATH mode, Debian's packaged library)."""
    binary = out_dir / "mlnode"
    if binary.exists() and binary.stat().st_mtime >= ML_SRC.stat().st_mtime:
        return binary
    src = out_dir / "src" / "mlnode"
    src.mkdir(parents=True, exist_ok=True)
    shutil.copy(ML_SRC, src / "main.go")
    env = {
        **os.environ,
        "GOPATH": f"{out_dir}:/usr/share/gocode",
        "GO111MODULE": "off",
        "GOFLAGS": "",
    }
    subprocess.run(
        ["go", "build", "-o", str(binary)], cwd=src, env=env, check=True, timeout=300
    )
    return binary


class MlNode:
    """One memberlist process; its stdout (timestamped lines) goes to a file."""

    def __init__(self, binary: Path, name: str, log_dir: str, join: str = "") -> None:
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.out")
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        args = [str(binary), "-name", name, "-log"]
        if join:
            args += ["-join", join]
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.port = 0

    def lines(self) -> list[tuple[float, str, str]]:
        """(ts, kind, rest) for every complete line so far."""
        try:
            data = Path(self.log_path).read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in data[: data.rfind(b"\n") + 1].decode(errors="replace").splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3:
                try:
                    out.append((float(parts[0]), parts[1], parts[2]))
                except ValueError:
                    continue
        return out

    def ready_port(self) -> int:
        for _, kind, rest in self.lines():
            if kind == "ready":
                return int(rest.split()[1])
        return 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        self._log.close()


def memberlist_run(
    binary: Path, n: int, victim_idx: int, settle: float, log_dir: str
) -> dict[str, Any]:
    nodes: list[MlNode] = []
    try:
        seed = MlNode(binary, "n1", log_dir)
        nodes.append(seed)
        port = wait_until(
            seed.ready_port, 20, interval=0.05, what="memberlist seed ready"
        )
        for i in range(2, n + 1):
            nodes.append(MlNode(binary, f"n{i}", log_dir, join=f"127.0.0.1:{port}"))
        names = {x.name for x in nodes}

        def converged() -> bool:
            for node in nodes:
                seen: set[str] = set()
                for _, kind, who in node.lines():
                    if kind == "join":
                        seen.add(who)
                    elif kind == "leave":
                        seen.discard(who)
                if seen != names:
                    return False
            return True

        wait_until(converged, 120, interval=0.2, what="memberlist converged")
        time.sleep(settle)
        victim = nodes[victim_idx - 1]
        survivors = [x for x in nodes if x is not victim]
        t0 = time.time()
        victim.kill()

        def events() -> dict[str, list[float]] | None:
            dead, suspect = [], []
            for node in survivors:
                lines = [ln for ln in node.lines() if ln[0] >= t0]
                d = [t for t, k, w in lines if k == "leave" and w == victim.name]
                if not d:
                    return None
                dead.append(min(d))
                suspect += [
                    t for t, k, w in lines
                    if k == "log" and f"Suspect {victim.name} has failed" in w
                ]  # fmt: skip
            return {"dead": dead, "suspect": suspect}

        got = wait_until(events, 120, interval=0.2, what="memberlist victim dead")
        false = 0
        for node in survivors:
            false += sum(
                1 for t, k, w in node.lines()
                if t >= t0 and k == "leave" and w != victim.name
            )  # fmt: skip
        return _phases(t0, got["dead"], got["suspect"], false)
    finally:
        for node in nodes:
            node.close()


# --- mesh ---


def _ts(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["timestamp"]).timestamp()


def _mesh_events(path: str) -> list[dict[str, Any]]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        if line.startswith(b"{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def mesh_run(n: int, victim_idx: int, settle: float, log_dir: str) -> dict[str, Any]:
    from mesh.testing.agents import AgentProcess  # from --mesh-src, see main

    cfg = os.path.join(log_dir, "swim.toml")
    Path(cfg).write_text("tcp_fallback_probe = false\n")
    extra = ["--log-format", "json", "--config", cfg]
    agents: list[AgentProcess] = []

    def agent(name: str, join: list[str]) -> AgentProcess:
        a = AgentProcess(
            name,
            profile="lan",
            join=join,
            extra=extra,
            log_path=os.path.join(log_dir, f"{name}.log"),
        )
        agents.append(a)
        return a

    try:
        seed = agent("n1", []).start()
        others = [agent(f"n{i}", [seed.mesh_addr]) for i in range(2, n + 1)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda a: a.start(timeout=60), others))
        names = {a.name for a in agents}

        def converged() -> bool:
            for a in agents:
                seen: set[str] = set()
                for e in _mesh_events(a.log_path or ""):
                    peer = e.get("peer")
                    if e.get("event") in ("member joined", "member alive"):
                        seen.add(peer)
                    elif e.get("event") in ("member dead", "member left"):
                        seen.discard(peer)
                if seen != names - {a.name}:
                    return False
            return True

        wait_until(converged, 120, interval=0.3, what="mesh converged")
        # Lifeguard health scores a second before the kill (a score s stretches
        # that node's probe interval and timeout s + 1 times).
        time.sleep(max(0.0, settle - 1.0))
        health = {a.name: _health_score(a) for a in agents}
        time.sleep(min(settle, 1.0))
        victim = agents[victim_idx - 1]
        survivors = [a for a in agents if a is not victim]
        t0 = time.time()
        victim.kill()

        def events() -> dict[str, list[float]] | None:
            dead, suspect = [], []
            for a in survivors:
                evs = [
                    e for e in _mesh_events(a.log_path or "")
                    if e.get("peer") == victim.name and _ts(e) >= t0
                ]  # fmt: skip
                d = [_ts(e) for e in evs if e.get("event") == "member dead"]
                if not d:
                    return None
                dead.append(min(d))
                suspect += [_ts(e) for e in evs if e.get("event") == "member suspect"]
            return {"dead": dead, "suspect": suspect}

        got = wait_until(events, 120, interval=0.3, what="mesh victim dead")
        false = 0
        for a in survivors:
            false += sum(
                1 for e in _mesh_events(a.log_path or "")
                if e.get("event") == "member dead" and e.get("peer") != victim.name
                and _ts(e) >= t0
            )  # fmt: skip
        row = _phases(t0, got["dead"], got["suspect"], false)
        row["health_before_kill"] = {k: v for k, v in health.items() if v}
        return row
    finally:
        for a in agents:
            a.close()


def _health_score(agent: Any) -> int:
    try:
        text = agent.get("/metrics").text
    except Exception:  # a diagnostic only
        return -1
    for line in text.splitlines():
        if line.startswith("mesh_health_score "):
            return int(float(line.split()[1]))
    return -1


# --- shared ---


def _phases(
    t0: float, dead: list[float], suspect: list[float], false: int
) -> dict[str, Any]:
    first_suspect = min(suspect) - t0 if suspect else float("nan")
    return {
        "detect_s": max(dead) - t0,
        "first_suspect_s": first_suspect,
        "first_dead_s": min(dead) - t0,
        "spread_s": max(dead) - min(dead),
        "false_deaths": false,
    }


def p90(xs: list[float]) -> float:
    """Nearest rank: the 9th of 10 values, the 18th of 20."""
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    det = [r["detect_s"] for r in rows]
    out = {
        "runs": len(rows),
        "median_s": statistics.median(det),
        "p90_s": p90(det),
        "min_s": min(det),
        "max_s": max(det),
        "false_deaths": sum(r["false_deaths"] for r in rows),
    }
    for key in ("first_suspect_s", "first_dead_s", "spread_s"):
        vals = [r[key] for r in rows if r[key] == r[key]]
        out[f"median_{key}"] = statistics.median(vals) if vals else float("nan")
    return out


def report(paths: list[str]) -> None:
    """Pool the runs of several result files (by size and system) and print
    the side-by-side table in markdown."""
    pooled: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for path in paths:
        for n, block in json.loads(Path(path).read_text())["sizes"].items():
            for system, rows in block["runs"].items():
                pooled.setdefault(int(n), {}).setdefault(system, []).extend(rows)
    print(
        "| N | system | runs | median | p90 | min..max | kill→first suspect"
        " | first suspect→first dead | first→last dead | false deaths |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sorted(pooled):
        base = pooled[n].get("memberlist")
        for system, rows in pooled[n].items():
            q = summary(rows)
            ratio = ""
            if base and system != "memberlist":
                share = q["median_s"] / summary(base)["median_s"]
                ratio = f" ({share:.2f} of memberlist)"
            suspicion = statistics.median(
                r["first_dead_s"] - r["first_suspect_s"] for r in rows
            )
            print(
                f"| {n} | {system} | {q['runs']} | {q['median_s']:.2f}{ratio}"
                f" | {q['p90_s']:.2f} | {q['min_s']:.2f}..{q['max_s']:.2f}"
                f" | {q['median_first_suspect_s']:.2f} | {suspicion:.2f}"
                f" | {q['median_spread_s']:.2f} | {q['false_deaths']} |"
            )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="5,20,50")
    ap.add_argument("--runs", default="5,10,10", help="runs per size (or one for all)")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--mesh",
        action="append",
        metavar="LABEL=DIR",
        help="a mesh to measure: DIR holds the mesh package to run, e.g. an"
        " exported commit, so edits to the work tree during a long run do not"
        " change what is measured (repeatable; default: mesh=<this checkout>)",
    )
    ap.add_argument("--no-memberlist", action="store_true")
    ap.add_argument("--json", default=str(OUT / "vs_memberlist.json"))
    ap.add_argument(
        "--report",
        nargs="+",
        metavar="JSON",
        help="only print the table of these result files, pooled",
    )
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return 0
    meshes: dict[str, str] = {}
    for spec in args.mesh or [f"mesh={ROOT}"]:
        label, _, src = spec.partition("=")
        meshes[label] = str(Path(src or label).resolve())
    args.json = str(Path(args.json).resolve())
    sizes = [int(x) for x in args.sizes.split(",")]
    runs = [int(x) for x in args.runs.split(",")]
    if len(runs) == 1:
        runs = runs * len(sizes)
    OUT.mkdir(exist_ok=True)
    systems = list(meshes) + ([] if args.no_memberlist else ["memberlist"])
    binary = None if args.no_memberlist else build_memberlist(OUT / "mlbench")
    rng = random.Random(args.seed)

    def run_one(system: str, n: int, victim: int, settle: float, d: str) -> Any:
        if system == "memberlist":
            assert binary is not None
            return memberlist_run(binary, n, victim, settle, d)
        # Agents run `python -m mesh` from this directory: they import its copy.
        src = meshes[system]
        if src not in sys.path:
            sys.path.insert(0, src)
        os.environ["PYTHONPATH"] = src
        os.chdir(src)
        return mesh_run(n, victim, settle, d)

    result: dict[str, Any] = {
        "settle_s": args.settle,
        "meshes": meshes,
        "load_before": os.getloadavg(),
        "sizes": {},
    }
    logs = tempfile.mkdtemp(prefix="vs-memberlist-", dir=OUT)
    for n, count in zip(sizes, runs, strict=True):
        rows: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        for run in range(count):
            victim = rng.randrange(2, n + 1)
            # The kill lands at a random phase of the probe interval (1 s):
            # memberlist's probe tickers start together, so a fixed delay
            # would always kill at the same phase of their probes.
            settle = args.settle + rng.random()
            # Rotate who goes first, so a slow spell of the machine is shared.
            order = systems[run % len(systems) :] + systems[: run % len(systems)]
            for system in order:
                d = os.path.join(logs, f"{system}-{n}-{run}")
                os.makedirs(d)
                row = run_one(system, n, victim, settle, d)
                row["victim"] = f"n{victim}"
                row["load"] = os.getloadavg()[0]
                rows[system].append(row)
                print(
                    f"N={n:<3} run {run:2} {system:10} detect {row['detect_s']:5.2f} s"
                    f"  (first suspect {row['first_suspect_s']:5.2f}, first dead "
                    f"{row['first_dead_s']:5.2f}, spread {row['spread_s']:4.2f})"
                    f"  false deaths {row['false_deaths']}  load {row['load']:.1f}",
                    flush=True,
                )
        sums = {s: summary(rows[s]) for s in systems}
        result["sizes"][str(n)] = {"runs": rows, "summary": sums}
        line = f"N={n}: " + "; ".join(
            f"{s} median {v['median_s']:.2f} p90 {v['p90_s']:.2f}"
            for s, v in sums.items()
        )
        if "memberlist" in sums:
            ratios = {
                s: sums[s]["median_s"] / sums["memberlist"]["median_s"] for s in meshes
            }
            result["sizes"][str(n)]["ratio_median"] = ratios
            line += "; " + ", ".join(
                f"{k}/memberlist {r:.3f}" for k, r in ratios.items()
            )
        print(line, flush=True)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"logs in {logs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

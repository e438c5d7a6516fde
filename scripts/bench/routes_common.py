"""Shared helpers of the ``routes_*`` benchmarks (not a benchmark itself).

* :class:`Conn`: one persistent keep-alive HTTP/1.1 connection over the standard
  library's ``http.client`` (about a tenth of httpx's client CPU per request),
  reconnecting once on a dropped connection;
* :class:`Poller`: one thread per node that polls ``GET /v1/routes/{key}`` for the
  keys still missing there, every ``interval`` seconds, and records when each key
  first answers 200 (how replication lag is measured when no log names the key);
* :class:`CpuAccount`: CPU used during a measurement by the agents, by this
  process, by helper processes (wrk) and by everything else on the machine, so
  each result says how much foreign load (other engineers' jobs) was present;
* statistics (linear-interpolated percentiles), markdown tables, cluster start.

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mesh.testing.agents import AgentCluster, AgentProcess, wait_until

__all__ = [
    "AgentCluster",
    "AgentProcess",
    "Conn",
    "CpuAccount",
    "Poller",
    "agg",
    "fmt_ms",
    "md_table",
    "pct",
    "scrape_metrics",
    "start_cluster",
    "summary",
    "wait_until",
    "parse_sets",
    "write_json",
]


# --- statistics ---


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation (numpy's default)."""
    if not values:
        return float("nan")
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, median, p90, p99, max, mean of ``values``."""
    if not values:
        return {
            "n": 0,
            "median": float("nan"),
            "p90": float("nan"),
            "p99": float("nan"),
            "max": float("nan"),
            "mean": float("nan"),
        }
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def agg(per_run: Iterable[float]) -> dict[str, float]:
    """Median over runs with the spread (min, max) of a per-run figure."""
    vals = [v for v in per_run if v == v]  # drop NaN
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def fmt_ms(seconds: float, digits: int = 2) -> str:
    if seconds != seconds:
        return "n/a"
    return f"{seconds * 1000:.{digits}f}"


def fmt_spread(a: dict[str, float], scale: float = 1000.0, digits: int = 2) -> str:
    """``median [min..max]`` of an :func:`agg` result."""
    if a["median"] != a["median"]:
        return "n/a"
    m, lo, hi = (a[k] * scale for k in ("median", "min", "max"))
    return f"{m:.{digits}f} [{lo:.{digits}f}..{hi:.{digits}f}]"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def write_json(path: str, document: Any) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(document, indent=2, default=str) + "\n")


# --- HTTP ---


class Conn:
    """A persistent HTTP/1.1 connection to ``HOST:PORT`` (raw http.client)."""

    def __init__(self, addr: str, timeout: float = 5.0) -> None:
        host, port = addr.rsplit(":", 1)
        self.host, self.port, self.timeout = host, int(port), timeout
        self._conn: http.client.HTTPConnection | None = None
        self.reconnects = 0
        #: perf_counter when the last response's head, then its body, was read:
        #: a gap means the server sent the body in a later write than the head
        self.head_at = self.body_at = 0.0

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        conn.connect()
        # Small requests: do not let Nagle hold the body back.
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                self.head_at = time.perf_counter()
                data = resp.read()
                self.body_at = time.perf_counter()
                return resp.status, data
            except (http.client.HTTPException, OSError):
                self.close()
                self.reconnects += 1
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Poller(threading.Thread):
    """Polls one node for keys that have not arrived there yet.

    ``watch(key, t_ref)`` adds a key; each ``interval`` every watched key is
    fetched once (``GET /v1/routes/{key}``); the first 200 records
    ``arrived[key] = perf_counter at the response - t_ref``. A key not seen within
    ``give_up`` seconds is recorded in ``missing``. The arrival time is an upper
    bound; ``arrived_lo[key]`` is a lower bound: when the last poll that still
    answered 404 was sent (0 if the first poll already found it). The true
    arrival lies between, a window of one poll interval plus one poll round trip
    (large when the polled node is saturated and answers slowly).
    """

    def __init__(
        self, name: str, addr: str, *, interval: float, give_up: float = 5.0
    ) -> None:
        super().__init__(daemon=True, name=f"poll-{name}")
        self.node = name
        self.conn = Conn(addr)
        self.interval = interval
        self.give_up = give_up
        self._lock = threading.Lock()
        self._watch: dict[str, float] = {}
        self._halt = threading.Event()
        self._kick = threading.Event()
        self.arrived: dict[str, float] = {}
        self.arrived_lo: dict[str, float] = {}
        self._last_miss: dict[str, float] = {}
        self.missing: list[str] = []
        self.requests = 0
        self.errors = 0

    def watch(self, key: str, t_ref: float) -> None:
        with self._lock:
            self._watch[key] = t_ref
        self._kick.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._watch)

    def stop(self) -> None:
        self._halt.set()
        self._kick.set()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                with self._lock:
                    items = list(self._watch.items())
                if not items:
                    self._kick.wait(0.05)
                    self._kick.clear()
                    continue
                tick = time.perf_counter()
                for key, t_ref in items:
                    sent = time.perf_counter()
                    try:
                        status, _ = self.conn.request("GET", f"/v1/routes/{key}")
                    except (http.client.HTTPException, OSError):
                        status = -1
                        self.errors += 1
                    now = time.perf_counter()
                    self.requests += 1
                    if status == 200:
                        with self._lock:
                            self._watch.pop(key, None)
                        self.arrived[key] = now - t_ref
                        lo = self._last_miss.pop(key, t_ref)
                        self.arrived_lo[key] = lo - t_ref
                    elif now - t_ref > self.give_up:
                        with self._lock:
                            self._watch.pop(key, None)
                        self._last_miss.pop(key, None)
                        self.missing.append(key)
                    else:
                        self._last_miss[key] = sent
                delay = tick + self.interval - time.perf_counter()
                if delay > 0:
                    self._kick.wait(delay)
                    self._kick.clear()
        finally:
            self.conn.close()


# --- CPU accounting ---

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process, its threads included."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_busy() -> float:
    """CPU seconds spent not idle, all cores, since boot."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / _TICK


class CpuAccount:
    """CPU cores used during an interval: agents, this process, helpers, others.

    Helpers are child processes that exited and were reaped in the interval
    (wrk): counted from ``RUSAGE_CHILDREN``. ``others`` is the machine's busy
    time minus everything we started: the foreign load (another engineer's
    tests) present during the measurement.
    """

    def __init__(self, agent_pids: Sequence[int]) -> None:
        self.agent_pids = list(agent_pids)
        self.load_before = os.getloadavg()[0]
        self._s0 = self._snap()

    def _snap(self) -> tuple[float, float, float, float, float]:
        import resource

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (
            time.monotonic(),
            _machine_busy(),
            sum(_proc_cpu(p) for p in self.agent_pids),
            _proc_cpu(os.getpid()),
            ru.ru_utime + ru.ru_stime,
        )

    def finish(self) -> dict[str, float]:
        t1, busy1, ag1, me1, he1 = self._snap()
        t0, busy0, ag0, me0, he0 = self._s0
        dt = max(t1 - t0, 1e-9)
        busy = (busy1 - busy0) / dt
        agents = (ag1 - ag0) / dt
        me = (me1 - me0) / dt
        helpers = (he1 - he0) / dt
        return {
            "seconds": dt,
            "machine_busy_cores": busy,
            "agents_cores": agents,
            "bench_cores": me,
            "helper_cores": helpers,
            "other_cores": max(0.0, busy - agents - me - helpers),
            "loadavg1_before": self.load_before,
            "loadavg1_after": os.getloadavg()[0],
        }


def other_busy_processes(exclude: Iterable[int] = (), top: int = 3) -> list[str]:
    """The top CPU users that are not ours (``ps``), for the notes."""
    import subprocess

    skip = set(exclude) | {os.getpid()}
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,pcpu,etimes,args", "--sort=-pcpu", "--no-headers"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or int(parts[0]) in skip or float(parts[1]) < 5.0:
            continue
        rows.append(f"pid {parts[0]} {parts[1]}% {parts[3][:80]}")
        if len(rows) >= top:
            break
    return rows


# --- cluster ---


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` options as Config overrides (VALUE as JSON when it
    parses, else a string)."""
    values: dict[str, Any] = {}
    for item in items:
        k, _, v = item.partition("=")
        try:
            values[k.strip()] = json.loads(v)
        except ValueError:
            values[k.strip()] = v
    return values


def write_config(log_dir: str, values: dict[str, Any]) -> list[str]:
    """A TOML ``--config`` file with Config field names as keys; the flags."""
    if not values:
        return []
    path = os.path.join(log_dir, "bench.toml")
    lines = []
    for k, v in values.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, int | float):
            lines.append(f"{k} = {v!r}")
        else:
            lines.append(f'{k} = "{v}"')
    Path(path).write_text("\n".join(lines) + "\n")
    return ["--config", path]


def start_cluster(
    n: int,
    log_dir: str,
    *,
    profile: str = "local",
    extra: Sequence[str] = (),
    prefix: str = "n",
    converge_timeout: float = 90.0,
) -> AgentCluster:
    """``n`` agents on 127.0.0.1 (the first one the seed); waits until every
    agent sees every other alive."""
    cluster = AgentCluster(log_dir=log_dir, profile=profile)
    try:
        for i in range(1, n + 1):
            cluster.add(f"{prefix}{i}", extra=list(extra))
        wait_until(
            cluster.converged, converge_timeout, interval=0.25, what="cluster converged"
        )
    except BaseException:
        cluster.close()
        raise
    return cluster


def scrape_metrics(agent: AgentProcess) -> dict[str, float]:
    """``/metrics`` as {"name{labels}": value} (mesh_* series only)."""
    conn = Conn(agent.http_addr)
    try:
        status, data = conn.request("GET", "/metrics")
    finally:
        conn.close()
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in data.decode().splitlines():
        if line.startswith("mesh_"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def settle(seconds: float, until: Callable[[], bool] | None = None) -> None:
    """Sleep ``seconds``, or until ``until()`` holds (checked every 0.1 s)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if until is not None and until():
            return
        time.sleep(0.1)

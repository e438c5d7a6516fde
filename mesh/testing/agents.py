"""Real ``mesh agent`` processes on loopback, for integration tests, benchmarks
and ``mesh up``.

Each agent binds port 0 and prints one ready line once listening
(``mesh agent ready name=N mesh=HOST:PORT http=HOST:PORT``); we read the real
ports from it instead of guessing free ports, so runs never collide on a shared
loopback. Waiting is always on a condition with a deadline (:func:`wait_until`),
never a bare sleep.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import httpx

__all__ = ["AgentProcess", "AgentCluster", "wait_until"]

_READY = re.compile(r"mesh agent ready name=(\S+) mesh=(\S+) http=(\S+)")
T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError
    with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout} s waiting for {what or predicate}"
            )
        time.sleep(interval)


class AgentProcess:
    """One ``mesh agent`` child process."""

    def __init__(
        self,
        name: str,
        *,
        profile: str = "local",
        join: Sequence[str] = (),
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: str | None = None,
    ) -> None:
        self.name = name
        self.profile = profile
        self.join = list(join)
        self.extra = list(extra)
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.mesh_addr = ""
        self.http_addr = ""
        self.started_at = 0.0
        self.ready_at = 0.0
        self._client = httpx.Client(timeout=2.0)
        self._log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{self.http_addr}"

    def start(self, *, timeout: float = 20.0, mesh_port: int = 0) -> AgentProcess:
        cmd = [
            sys.executable, "-m", "mesh", "agent",
            "--name", self.name,
            "--profile", self.profile,
            "--bind", f"127.0.0.1:{mesh_port}",
            "--http", "127.0.0.1:0",
            *[a for seed in self.join for a in ("--join", seed)],
            *self.extra,
        ]  # fmt: skip
        env = {**os.environ, **(self.env or {})}
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = _read_line(self.proc.stdout, timeout)
        match = _READY.search(line)
        if not match:
            self.kill()
            raise RuntimeError(f"agent {self.name} did not get ready: {line!r}")
        self.ready_at = time.monotonic()
        _, self.mesh_addr, self.http_addr = match.groups()
        return self

    # --- process control ---

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash the others must detect."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM: graceful leave; returns the exit code."""
        assert self.proc is not None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def pause(self) -> None:
        os.kill(self.pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid(), signal.SIGCONT)

    def close(self) -> None:
        if self.alive():
            self.resume()
            self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._client.close()

    # --- API ---

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self._client.get(self.base_url + path, **kw)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self._client.request(method, self.base_url + path, **kw)

    def statuses(self) -> dict[str, str]:
        """name -> status in this agent's view ({} if it does not answer)."""
        try:
            body = self.get("/v1/members").json()
        except (httpx.HTTPError, ValueError):
            return {}
        return {m["name"]: m["status"] for m in body["members"]}

    def caught_up(self) -> bool:
        """Its route table has caught up (it takes writes: not 503)."""
        try:
            return bool(self.get("/v1/health").json()["routes_caught_up"])
        except (httpx.HTTPError, ValueError, KeyError):
            return False


class AgentCluster:
    """N agents on loopback, the first one the seed of the others."""

    def __init__(self, log_dir: str | None = None, profile: str = "local") -> None:
        self.agents: dict[str, AgentProcess] = {}
        self.log_dir = log_dir
        self.profile = profile

    def add(
        self, name: str, *, join: Iterable[str] | None = None, **kw: Any
    ) -> AgentProcess:
        seeds = list(join) if join is not None else self.seeds()
        old = self.agents.get(name)
        if old is not None:  # a restart under the same name
            old.close()
        log = os.path.join(self.log_dir, f"{name}.log") if self.log_dir else None
        agent = AgentProcess(
            name,
            profile=kw.pop("profile", self.profile),
            join=seeds,
            log_path=log,
            **kw,
        )
        self.agents[name] = agent
        agent.start()
        return agent

    def seeds(self) -> list[str]:
        return [a.mesh_addr for a in list(self.agents.values())[:1] if a.alive()]

    def start(self, n: int, prefix: str = "node") -> AgentCluster:
        for i in range(1, n + 1):
            self.add(f"{prefix}{i}")
        return self

    def live(self) -> list[AgentProcess]:
        return [a for a in self.agents.values() if a.alive()]

    def all_see(
        self, name: str, status: str, among: Iterable[AgentProcess] | None = None
    ) -> bool:
        group = (
            list(among)
            if among is not None
            else [a for a in self.live() if a.name != name]
        )
        return all(a.statuses().get(name) == status for a in group)

    def converged(self) -> bool:
        """Every live agent sees every live agent alive, and has caught up
        with the route table (so a write to any of them is taken)."""
        live = self.live()
        names = {a.name for a in live}
        for agent in live:
            view = agent.statuses()
            if {n for n, s in view.items() if s == "alive"} != names:
                return False
        return all(agent.caught_up() for agent in live)

    def close(self) -> None:
        for agent in self.agents.values():
            agent.close()

    def __enter__(self) -> AgentCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_line(stream: Any, timeout: float) -> str:
    """Read one line from a pipe, giving up after ``timeout`` seconds."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                break
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    finally:
        sel.close()
    return buf.decode(errors="replace").splitlines()[0] if buf else ""

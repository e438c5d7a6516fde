"""``mesh up``: a local mesh you can watch.

Starts N real ``mesh agent`` processes on 127.0.0.1 (ports chosen by the OS) and
redraws, a few times a second, every agent's view of every member: the matrix
shows at a glance who suspects whom and how fast news of a crash, a pause or a
leave spreads. Below it, each agent's route table and replication activity from
its ``/metrics``: live routes and tombstones, pushes delivered and failed, the
push queue, and anti-entropy rounds and repairs (when the agent exports
``mesh_antientropy_*``). Keys act on a member by its number: ``k`` kill
(SIGKILL), ``p`` pause (SIGSTOP), ``c`` continue (SIGCONT), ``r`` restart, ``l``
leave (SIGTERM), ``w`` write a route through it, ``a`` add a member, ``q`` quit
(every agent leaves gracefully). SIGINT (Ctrl-C), SIGTERM and SIGHUP (a closed
terminal) quit as ``q`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any

import httpx

from .testing.agents import AgentCluster, AgentProcess

__all__ = ["add_up_parser", "run_up"]

_MARK = {"alive": "\x1b[32m●\x1b[0m", "suspect": "\x1b[33m◐\x1b[0m",
         "dead": "\x1b[31m✕\x1b[0m", "left": "\x1b[90m○\x1b[0m"}  # fmt: skip
_PLAIN = {"alive": "A", "suspect": "S", "dead": "D", "left": "L"}

#: Signals that quit ``mesh up`` as ``q`` does: Ctrl-C, ``kill``/``timeout``/
#: systemd/CI cancellation, and the hangup of a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: How long the agents get, together, to leave before they are killed.
LEAVE_TIMEOUT = 10.0
#: With ten members or more, how long a member's number waits for its next
#: digit (``k1`` acts on node1 after it, ``k12`` on node12 if typed within it).
NEXT_DIGIT = 0.7


def add_up_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``mesh up`` on the CLI."""
    p = subparsers.add_parser(
        "up", help="run a local mesh of N agents and watch it live",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )  # fmt: skip
    p.add_argument("--nodes", type=int, default=5, help="agents to start (default 5)")
    p.add_argument(
        "--profile",
        default="local",
        choices=["local", "lan", "wan"],
        help="timer preset of the agents (default local: sub-second detection)",
    )
    p.add_argument(
        "--duration", type=float, default=0.0,
        help="stop after this many seconds (default 0: until q or Ctrl-C)",
    )  # fmt: skip
    p.add_argument("--plain", action="store_true", help="no colours or screen redraw")
    p.set_defaults(func=run_up)


def run_up(args: argparse.Namespace) -> int:
    """Start the agents, render until quit, then make every agent leave.

    Quitting is ``q``, ``--duration`` running out, or one of
    :data:`STOP_SIGNALS`; all end the same way: every agent is asked to leave
    (SIGTERM, after SIGCONT for a paused one), all get :data:`LEAVE_TIMEOUT`
    seconds together, and whoever is still running then is killed, so no agent
    outlives ``mesh up``. A second signal cuts the wait short (the agents are
    killed at once). A signal during start-up stops it after the agent being
    started (bounded by its ready timeout) and cleans up the ones started. The
    agents run in sessions of their own (:class:`AgentProcess` starts them with
    ``start_new_session``), so a terminal's hangup or Ctrl-C reaches only
    ``mesh up``, which then makes them leave.

    Returns 0 after such a stop, whichever way it was asked for: a signal here
    is the documented way to ask for a graceful stop, not a crash, and the stop
    completed (a process killed *by* a signal gets 128+n from the shell; one
    that handles it and finishes cleanly exits 0, as ``mesh agent`` does on
    SIGTERM and as systemd expects of a clean stop). The same holds if the
    terminal or pipe we draw on goes away (EIO, EPIPE): we stop as for ``q``.
    2 is a usage error; an agent that fails to start raises (after cleanup).
    """
    if not 1 <= args.nodes <= 100:
        print("mesh: error: --nodes must be in 1..100", file=sys.stderr)
        return 2
    if not (math.isfinite(args.duration) and args.duration >= 0):
        # (a negative one started the agents and stopped at once: audit, session 14)
        error = "mesh: error: --duration must be >= 0 seconds (0: until q)"
        print(error, file=sys.stderr)
        return 2
    log_dir = tempfile.mkdtemp(prefix="mesh-up-")
    plain = args.plain or not sys.stdout.isatty()
    with _StopSignals() as stop:
        cluster = AgentCluster(log_dir=log_dir, profile=args.profile)
        try:
            _say(f"starting {args.nodes} agents ({args.profile} profile)...")
            for i in range(1, args.nodes + 1):
                if stop.signum is not None:
                    break
                cluster.add(f"node{i}")
            else:
                _watch(cluster, args.duration, plain, stop, f"logs in {log_dir}")
        finally:
            try:
                _leave_all(cluster, stop)
            finally:
                cluster.close()  # kills whoever did not leave in time
        _say(f"\nstopped; agent logs are in {log_dir}")
    return 0


def _watch(
    cluster: AgentCluster,
    duration: float,
    plain: bool,
    stop: _StopSignals,
    message: str,
) -> None:
    """Render and act on keys until ``q``, the duration or a stop signal."""
    deadline = time.monotonic() + duration if duration else None
    with _raw_keys(stop.wake_fd) as keys:
        while stop.signum is None and (deadline is None or time.monotonic() < deadline):
            try:
                _render(cluster, message, plain, legend=keys.fd is not None)
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EPIPE):
                    raise
                _mute_stdout()  # the terminal or pipe is gone: quit as for q
                return
            key = keys(0.5 if not plain else 1.0)
            if key is None:
                continue
            if key in ("q", "\x03"):
                return
            message = _act(cluster, key, keys)


def _leave_all(
    cluster: AgentCluster, stop: _StopSignals, timeout: float = LEAVE_TIMEOUT
) -> None:
    """Ask every live agent to leave, all at once, and wait for them together,
    at most ``timeout`` seconds or until another signal; the caller kills the
    rest. Signals only set flags here, so nothing interrupts the clean-up."""
    stop.stopping = True
    leaving = cluster.live()
    for agent in leaving:
        with contextlib.suppress(OSError):
            agent.resume()  # a paused agent cannot leave
            if agent.proc is not None:
                agent.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for agent in leaving:
        while agent.proc is not None and agent.alive() and not stop.hurry:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.proc.wait(min(remaining, 0.1))


_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _StopSignals:
    """Installs handlers for :data:`STOP_SIGNALS` that only record the signal
    (the first in :attr:`signum`, any later one, or any during the clean-up, as
    :attr:`hurry`) and wake :attr:`wake_fd` (``signal.set_wakeup_fd``) so the
    key wait returns at once. Nothing is raised at an arbitrary point, e.g.
    between forking an agent and recording it, where an exception would orphan
    it; the previous handlers are restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopping = False
        self.hurry = False
        self.wake_fd, self._wake_write = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_write, False)
        self._saved: dict[int, _Handler] = {}
        self._saved_wakeup = -1

    def __enter__(self) -> _StopSignals:
        for signum in STOP_SIGNALS:
            self._saved[signum] = signal.signal(signum, self._handle)
        self._saved_wakeup = signal.set_wakeup_fd(
            self._wake_write, warn_on_full_buffer=False
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        signal.set_wakeup_fd(self._saved_wakeup)
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        os.close(self.wake_fd)
        os.close(self._wake_write)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None and not self.stopping:
            self.signum = signum
        else:
            self.hurry = True


def _say(text: str) -> None:
    """Print a line; if the terminal or pipe is gone, print nothing more."""
    try:
        print(text, flush=True)
    except OSError as exc:
        if exc.errno not in (errno.EIO, errno.EPIPE):
            raise
        _mute_stdout()


def _mute_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered, and the interpreter's
    flush at exit, would fail on a hung-up terminal or a closed pipe (and turn
    the exit status into 120)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _act(cluster: AgentCluster, key: str, keys: _Keys) -> str:
    names = list(cluster.agents)
    if key == "a":
        name = f"node{len(names) + 1}"
        cluster.add(name)
        return f"added {name}"
    if key not in "kpcrlw":
        return f"unknown key {key!r}"
    digit = keys(3.0)
    # more digits while they could still name a member (node10 and up: they
    # could not be named at all; audit, session 14), each typed within
    # NEXT_DIGIT seconds of the last
    while (
        digit is not None
        and digit.isdigit()
        and int(digit) * 10 <= len(names)
        and (more := keys(NEXT_DIGIT)) is not None
        and more.isdigit()
    ):
        digit += more
    if digit is None or not digit.isdigit() or not 1 <= int(digit) <= len(names):
        return "give the member's number after the key, e.g. k2"
    agent = cluster.agents[names[int(digit) - 1]]
    try:
        if key == "k":
            agent.kill()
        elif key == "p":
            agent.pause()
        elif key == "c":
            agent.resume()
        elif key == "l":
            agent.terminate()
        elif key == "w":
            route = f"up.{int(time.time() * 1000) % 100_000}"
            agent.request(
                "PUT", f"/v1/routes/{route}", json={"target": f"http://{agent.name}"}
            ).raise_for_status()
            return f"wrote {route} through {agent.name}; watch the routes column"
        elif key == "r":
            agent.kill()
            seeds = [a.mesh_addr for a in cluster.live()][:1]
            cluster.add(agent.name, join=seeds)
    except (OSError, RuntimeError, httpx.HTTPError) as exc:
        return f"{key}{digit}: {exc}"
    verbs = {
        "k": "killed",
        "p": "paused",
        "c": "resumed",
        "l": "left",
        "r": "restarted",
    }
    return f"{verbs[key]} {agent.name}"


def _render(
    cluster: AgentCluster, message: str, plain: bool, *, legend: bool = True
) -> None:
    agents = list(cluster.agents.values())
    views = {a.name: (a.statuses() if _can_answer(a) else {}) for a in agents}
    mark = _PLAIN if plain else _MARK
    width = max(8, *(len(a.name) for a in agents))
    lines = [
        f"mesh up: {len(cluster.live())}/{len(agents)} processes running   "
        f"{time.strftime('%H:%M:%S')}",
        "rows: each agent's view of every member (columns)   "
        + ("A alive  S suspect  D dead  L left" if plain else
           f"{_MARK['alive']} alive {_MARK['suspect']} suspect "
           f"{_MARK['dead']} dead {_MARK['left']} left"),
        "",
        " #  " + "agent".ljust(width) + " state    "
        + " ".join(str(i + 1).rjust(2) for i in range(len(agents))),
    ]  # fmt: skip
    for i, agent in enumerate(agents):
        state = _process_state(agent)
        row = views.get(agent.name, {})
        cells = " ".join(
            " " + (mark.get(row.get(b.name, ""), "·") if row else " ") for b in agents
        )
        lines.append(f"{i + 1:>2}  {agent.name.ljust(width)} {state.ljust(8)} {cells}")
    lines += ["", *_activity(agents, width)]
    if legend:  # (no keys are read when stdin is not a terminal)
        lines += [
            "",
            "keys: k<n> kill  p<n> pause  c<n> continue  r<n> restart  l<n> leave  "
            "w<n> write a route  a add  q quit",
        ]
    lines.append(message)
    text = "\n".join(lines)
    if plain:
        print(text + "\n", flush=True)
    else:
        cols = shutil.get_terminal_size().columns
        sys.stdout.write(
            "\x1b[H\x1b[2J" + "\n".join(s[: cols + 40] for s in text.split("\n"))
        )
        sys.stdout.flush()


def _activity(agents: list[AgentProcess], width: int) -> list[str]:
    """One line per agent from its /metrics: routes and replication."""
    scrapes = {a.name: _scrape(a) if _can_answer(a) else {} for a in agents}
    with_ae = any(
        key.startswith("mesh_antientropy_") for m in scrapes.values() for key in m
    )
    header = (
        " #  " + "agent".ljust(width) + "  routes  tombs  pushed  failed  queue"
        + ("  ae rounds  repaired" if with_ae else "")
    )  # fmt: skip
    lines = ["routes and replication (from each agent's /metrics)", header]
    for i, agent in enumerate(agents):
        m = scrapes[agent.name]
        if not m:
            lines.append(f"{i + 1:>2}  {agent.name.ljust(width)}  -")
            continue
        failed = sum(
            _total(m, "mesh_pushes_total", result=r)
            for r in ("failed", "deadline", "rejected")
        )
        line = (
            f"{i + 1:>2}  {agent.name.ljust(width)}"
            f"  {_total(m, 'mesh_routes', state='live'):>6.0f}"
            f"  {_total(m, 'mesh_routes', state='tombstone'):>5.0f}"
            f"  {_total(m, 'mesh_pushes_total', result='ok'):>6.0f}"
            f"  {failed:>6.0f}"
            f"  {_total(m, 'mesh_push_queue_depth'):>5.0f}"
        )
        if with_ae:
            line += (
                f"  {_total(m, 'mesh_antientropy_rounds_total'):>9.0f}"
                f"  {_total(m, 'mesh_antientropy_routes_total', kind='repaired'):>8.0f}"
            )
        lines.append(line)
    return lines


def _scrape(agent: AgentProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``/metrics`` as name -> [(labels, value)]; {} if it does not answer."""
    try:
        response = agent.get("/metrics")
    except httpx.HTTPError:
        return {}
    if response.status_code != 200:
        return {}
    return parse_metrics(response.text)


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of a Prometheus text exposition (enough of the format for
    our own agents: no escaped quotes or commas in label values)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels: dict[str, str] = {}
        for pair in rest.rstrip("}").split(","):
            if "=" in pair:
                key, _, val = pair.partition("=")
                labels[key] = val.strip('"')
        try:
            number = float(value)
        except ValueError:
            continue
        out.setdefault(name, []).append((labels, number))
    return out


def _total(
    metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for have, value in metrics.get(name, ())
        if all(have.get(k) == v for k, v in labels.items())
    )


def _can_answer(agent: AgentProcess) -> bool:
    """Worth asking: a stopped process would hold each frame for the client's
    whole timeout (two requests: 4 s a frame while anyone is paused)."""
    return _process_state(agent) == "running"


def _process_state(agent: AgentProcess) -> str:
    if not agent.alive():
        return "exited"
    try:
        with open(f"/proc/{agent.pid()}/stat") as f:
            return "paused" if f.read().split()[2] == "T" else "running"
    except OSError:
        return "running"


class _Keys:
    """Reads single keys with a timeout (None when nothing was typed, or when a
    signal arrived: ``wake_fd`` became readable)."""

    def __init__(self, fd: int | None, wake_fd: int) -> None:
        self.fd = fd
        self.wake_fd = wake_fd

    def __call__(self, timeout: float) -> str | None:
        fds = [self.wake_fd] if self.fd is None else [self.fd, self.wake_fd]
        ready, _, _ = select.select(fds, [], [], timeout)
        if self.wake_fd in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.wake_fd, 512):
                    pass
            return None
        if not ready or self.fd is None:
            return None
        data = os.read(self.fd, 1)
        return data.decode(errors="replace") if data else None


@contextlib.contextmanager
def _raw_keys(wake_fd: int) -> Iterator[_Keys]:
    if not sys.stdin.isatty():
        yield _Keys(None, wake_fd)
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield _Keys(fd, wake_fd)
    finally:
        # After a hangup the terminal is gone (EIO): nothing left to restore.
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

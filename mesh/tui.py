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
(every agent leaves gracefully).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx

from .testing.agents import AgentCluster, AgentProcess

__all__ = ["add_up_parser", "run_up"]

_MARK = {"alive": "\x1b[32m●\x1b[0m", "suspect": "\x1b[33m◐\x1b[0m",
         "dead": "\x1b[31m✕\x1b[0m", "left": "\x1b[90m○\x1b[0m"}  # fmt: skip
_PLAIN = {"alive": "A", "suspect": "S", "dead": "D", "left": "L"}


def add_up_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``mesh up`` on the CLI."""
    p = subparsers.add_parser(
        "up", help="run a local mesh of N agents and watch it live",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )  # fmt: skip
    p.add_argument("--nodes", type=int, default=5, help="agents to start (default 5)")
    p.add_argument("--profile", default="local", choices=["local", "lan", "wan"])
    p.add_argument(
        "--duration", type=float, default=0.0,
        help="stop after this many seconds (default: until q or Ctrl-C)",
    )  # fmt: skip
    p.add_argument("--plain", action="store_true", help="no colours or screen redraw")
    p.set_defaults(func=run_up)


def run_up(args: argparse.Namespace) -> int:
    """Start the agents, render until quit, then make every agent leave."""
    if not 1 <= args.nodes <= 100:
        print("mesh: error: --nodes must be in 1..100", file=sys.stderr)
        return 2
    log_dir = tempfile.mkdtemp(prefix="mesh-up-")
    plain = args.plain or not sys.stdout.isatty()
    cluster = AgentCluster(log_dir=log_dir, profile=args.profile)
    message = f"logs in {log_dir}"
    try:
        print(f"starting {args.nodes} agents ({args.profile} profile)...", flush=True)
        cluster.start(args.nodes)
        deadline = time.monotonic() + args.duration if args.duration else None
        with _raw_keys() as keys:
            while deadline is None or time.monotonic() < deadline:
                _render(cluster, message, plain)
                key = keys(0.5 if not plain else 1.0)
                if key is None:
                    continue
                if key in ("q", "\x03"):
                    break
                message = _act(cluster, key, keys)
    except KeyboardInterrupt:
        pass
    finally:
        for agent in cluster.live():
            with contextlib.suppress(Exception):
                agent.resume()
                agent.terminate(timeout=10)
        cluster.close()
    print(f"\nstopped; agent logs are in {log_dir}")
    return 0


def _act(cluster: AgentCluster, key: str, keys: _Keys) -> str:
    names = list(cluster.agents)
    if key == "a":
        name = f"node{len(names) + 1}"
        cluster.add(name)
        return f"added {name}"
    if key not in "kpcrlw":
        return f"unknown key {key!r}"
    digit = keys(3.0)
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


def _render(cluster: AgentCluster, message: str, plain: bool) -> None:
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
    lines += [
        "",
        "keys: k<n> kill  p<n> pause  c<n> continue  r<n> restart  l<n> leave  "
        "w<n> write a route  a add  q quit",
        message,
    ]
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
    """Reads single keys with a timeout (None when nothing was typed)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def __call__(self, timeout: float) -> str | None:
        if self.fd is None:
            time.sleep(timeout)
            return None
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        data = os.read(self.fd, 1)
        return data.decode(errors="replace") if data else None


@contextlib.contextmanager
def _raw_keys() -> Iterator[_Keys]:
    if not sys.stdin.isatty():
        yield _Keys(None)
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield _Keys(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)

"""Pictures of the protocol, from the simulator (mesh.testing.simnet).

Usage: python scripts/simulate.py [--out docs/img] [--sizes 10,50,200,1000]
       [--seed 1] [--quick]
Needs matplotlib: pip install --group plots (pyproject's ``plots`` group).

Writes four PNGs (embedded in docs/benchmarks.md, "Pictures"):

* ``sim_join_convergence.png``: a new member joins a running mesh of N; the
  share of the N members that know it, against time since it started.
* ``sim_route_convergence.png``: one route written at one member; the share
  of members holding it, against time since the write (push fan-out).
* ``sim_detection.png``: host crashes on a mesh of 50; distribution of the
  time from the crash to the first dead declaration and to dead at every
  survivor, Lifeguard on vs off.
* ``sim_lifeguard.png``: false dead declarations when members stall (SIGSTOP
  for 1-8 s, as GC pauses or an overloaded host do) under 5% datagram loss,
  Lifeguard on vs off; nobody crashes, so every dead is false.

"Lifeguard off" is ``awareness_max_multiplier=1`` (the local health score never
stretches probe timing) and ``suspicion_max_timeout_mult=1`` (the suspicion
timer stays at its minimum), as in scripts/bench/sim_membership.py. Every run
is on virtual time with a fixed seed: the same command draws the same pictures.
The simulator runs the real core, not a model of it; the network is modelled
(see simnet's docstring).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mesh.core.effects import EventKind, MemberEvent
from mesh.testing.simnet import SimNet

LIFEGUARD_OFF: dict[str, Any] = {
    "awareness_max_multiplier": 1,
    "suspicion_max_timeout_mult": 1,
}
PROFILE = "lan"
WARMUP = 5.0


def join_convergence(n: int, seed: int) -> list[float]:
    """Seconds from a new member's start until each of the n others has it
    alive, sorted (members that never learned it within 60 s are left out)."""
    sim = SimNet.cluster(n, seed=seed, profile=PROFILE, bootstrap="static")
    sim.run_for(WARMUP)
    seen: dict[str, float] = {}

    def listen(t: float, observer: str, event: MemberEvent) -> None:
        if event.member.name == "new" and event.kind is EventKind.JOIN:
            seen.setdefault(observer, t)

    sim.listeners.append(listen)
    start = sim.now
    sim.add_node("new")
    deadline = start + 60.0
    while len(seen) < n + 1 and sim.now < deadline:  # n others, and "new" itself
        sim.run_for(0.05)
    return sorted(t - start for name, t in seen.items() if name != "new")


def route_convergence(n: int, seed: int) -> list[float]:
    """Seconds from a write at one member until each other member holds it."""
    sim = SimNet.cluster(n, seed=seed, profile=PROFILE, bootstrap="static")
    sim.run_for(WARMUP)
    writer = sim.node("n0")
    start = sim.now
    _, effects = writer.core.put_route("svc.plot", "http://t", {}, None, start, start)
    sim.execute("n0", effects)
    have: dict[str, float] = {}
    nodes = [node for node in sim.nodes.values() if node.name != "n0"]
    deadline = start + 30.0
    while len(have) < len(nodes) and sim.now < deadline:
        sim.run_for(0.0002)
        for node in nodes:
            if node.name not in have and node.core.routes.get("svc.plot"):
                have[node.name] = sim.now - start
    return sorted(have.values())


def detection(
    n: int, crashes: int, seed: int, lifeguard: bool
) -> dict[str, list[float]]:
    """Crash ``crashes`` members one at a time, host crashes (no answer at all,
    not even a TCP refusal, on which the core suspects at once): seconds to
    the first dead declaration and to dead at every survivor."""
    overrides = {} if lifeguard else LIFEGUARD_OFF
    sim = SimNet.cluster(n, seed=seed, profile=PROFILE, bootstrap="static", **overrides)
    sim.run_for(WARMUP)
    rng = random.Random(seed)
    dead_seen: dict[str, dict[str, float]] = {}

    def listen(t: float, observer: str, event: MemberEvent) -> None:
        if event.kind is EventKind.DEAD:
            dead_seen.setdefault(event.member.name, {}).setdefault(observer, t)

    sim.listeners.append(listen)
    first: list[float] = []
    everywhere: list[float] = []
    victims = rng.sample(sorted(sim.nodes), crashes)
    for victim in victims:
        start = sim.now
        sim.crash(victim, refuse=False)
        survivors = {node.name for node in sim.live()}
        deadline = start + 120.0
        while sim.now < deadline:
            sim.run_for(0.1)
            views = dead_seen.get(victim, {})
            if survivors <= views.keys():
                break
        views = dead_seen.get(victim, {})
        if views:
            first.append(min(views.values()) - start)
        if survivors <= views.keys():
            everywhere.append(max(views[s] for s in survivors) - start)
        sim.run_for(5.0)  # let the mesh settle before the next crash
    return {"first": first, "everywhere": everywhere}


def false_deaths(n: int, seed: int, lifeguard: bool, duration: float) -> int:
    """Dead declarations (member, incarnation) while members stall, nobody
    crashing: each member pauses at exponential intervals (mean 60 s) for
    U(1, 8) s, with 5% datagram loss. The stall schedule depends only on the
    seed, so on and off see the same stalls."""
    overrides = {} if lifeguard else LIFEGUARD_OFF
    sim = SimNet.cluster(
        n,
        seed=seed,
        profile=PROFILE,
        bootstrap="static",
        net={"loss": 0.05},
        **overrides,
    )
    rng = random.Random(seed)
    for name in sorted(sim.nodes):
        t = rng.expovariate(1 / 60.0)
        while t < duration:
            length = rng.uniform(1.0, 8.0)
            sim.at(t, _pauser(sim, name, length))
            t += length + rng.expovariate(1 / 60.0)
    deaths: set[tuple[str, int]] = set()

    def listen(_t: float, _observer: str, event: MemberEvent) -> None:
        if event.kind is EventKind.DEAD:
            deaths.add((event.member.name, event.member.incarnation))

    sim.listeners.append(listen)
    sim.run_for(duration)
    return len(deaths)


def _pauser(sim: SimNet, name: str, length: float) -> Callable[[], None]:
    def pause() -> None:
        if sim.node(name).up and not sim.node(name).paused:
            sim.pause(name, length)

    return pause


# --- drawing ---


def _plot_curves(
    path: Path,
    curves: dict[int, list[float]],
    title: str,
    xlabel: str,
    *,
    others: int = 0,
    scale: float = 1.0,
    log: bool = True,
) -> None:
    """Share of the ``n + others`` members that know, against time (x
    ``scale``); each curve is a list of sorted times."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for n, times in sorted(curves.items()):
        if not times:
            continue
        total = n + others
        share = [(i + 1) / total for i in range(len(times))]
        xs = [0.0, *(t * scale for t in times)]
        ax.step(xs, [0.0, *share], where="post", label=f"N = {n}")
    if log:
        ax.set_xscale("symlog", linthresh=0.01)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of members that know")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_detection(
    path: Path, on: dict[str, list[float]], off: dict[str, list[float]], n: int
) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in (
        (axes[0], "first", "first dead declaration"),
        (axes[1], "everywhere", "dead at every survivor"),
    ):
        values = on[key] + off[key]
        if not values:
            continue
        bins = 20
        lo, hi = min(values), max(values)
        edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)] if hi > lo else 10
        for values_, name in ((on[key], "Lifeguard on"), (off[key], "Lifeguard off")):
            ax.hist(values_, bins=edges, histtype="step", linewidth=2, label=name)
        ax.set_xlabel(f"seconds from crash to {label}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("crashes")
    fig.suptitle(
        f"Host crash detection, N = {n}, lan profile ({len(on['first'])} crashes)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_lifeguard(
    path: Path, results: dict[str, int], n: int, duration: float
) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(results)
    bars = ax.bar(names, [results[k] for k in names], color=["tab:blue", "tab:orange"])
    ax.bar_label(bars)
    ax.set_ylabel("false dead declarations")
    ax.set_title(
        f"Stalling members, 5% loss: N = {n}, {duration:.0f} s simulated", fontsize=10
    )
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/img", help="directory for the PNGs")
    parser.add_argument("--sizes", default="10,50,200,1000", help="N values")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="N up to 200, fewer crashes (for a look)"
    )
    parser.add_argument(
        "--only",
        choices=("convergence", "detection", "lifeguard"),
        help="draw one group of pictures",
    )
    args = parser.parse_args(argv)
    try:
        import matplotlib
    except ModuleNotFoundError:
        print(
            "simulate.py needs matplotlib: pip install --group plots", file=sys.stderr
        )
        return 2
    matplotlib.use("Agg")
    sizes = [int(x) for x in args.sizes.split(",") if x]
    if args.quick:
        sizes = [n for n in sizes if n <= 200]
    crashes = 6 if args.quick else 20
    stall_duration = 120.0 if args.quick else 600.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def timed(what: str) -> float:
        print(f"{what}...", file=sys.stderr, flush=True)
        return time.perf_counter()

    if args.only in (None, "convergence"):
        _convergence(out, sizes, args.seed, timed)
    if args.only in (None, "detection"):
        timed(f"detection: {crashes} crashes, Lifeguard on and off")
        on = detection(50, crashes, args.seed, lifeguard=True)
        off = detection(50, crashes, args.seed, lifeguard=False)
        _plot_detection(out / "sim_detection.png", on, off, 50)
    if args.only in (None, "lifeguard"):
        timed(f"false deaths under stalls, {stall_duration:.0f} s, on and off")
        results = {
            "Lifeguard on": false_deaths(50, args.seed, True, stall_duration),
            "Lifeguard off": false_deaths(50, args.seed, False, stall_duration),
        }
        _plot_lifeguard(out / "sim_lifeguard.png", results, 50, stall_duration)
        print(f"false deaths: {results}", file=sys.stderr)
    print(f"PNGs written to {out}", file=sys.stderr)
    return 0


def _convergence(
    out: Path, sizes: list[int], seed: int, timed: Callable[[str], float]
) -> None:
    joins: dict[int, list[float]] = {}
    routes: dict[int, list[float]] = {}
    for n in sizes:
        t = timed(f"N={n}: join and route write")
        joins[n] = join_convergence(n, seed)
        routes[n] = route_convergence(n, seed)
        print(
            f"  N={n}: join at all {max(joins[n], default=float('nan')):.2f} s, "
            f"route at all {max(routes[n], default=float('nan')):.3f} s "
            f"({time.perf_counter() - t:.0f} s wall)",
            file=sys.stderr,
        )
    _plot_curves(
        out / "sim_join_convergence.png",
        joins,
        "A member joins: who knows it, by time since it started (lan)",
        "seconds since the new member started",
    )
    _plot_curves(
        out / "sim_route_convergence.png",
        routes,
        "A route is written at one member: who else holds it (lan)",
        "milliseconds since the write",
        others=-1,
        scale=1000.0,
        log=False,
    )


if __name__ == "__main__":
    sys.exit(main())

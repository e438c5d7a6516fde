"""Membership quality at scale, on the simulator (mesh.testing.simnet).

Usage: python scripts/bench/sim_membership.py [--nodes 1000] [--out PATH]
       [--profile lan] [--seed 1] [--duration 300] [--loss 0.05]
       [--stall-every 300] [--changes 5] [--spacing 20] [--skip a|bc]

Three measurements, each on a preloaded mesh of ``--nodes`` (every table full,
``bootstrap="static"``):

(a) False deaths under stalls and loss, Lifeguard on vs off. Every node stalls
    (SIGSTOP-like pause: nothing runs, input buffers) at exponential intervals
    of mean ``--stall-every`` s for U(1, 8) s, over ``--duration`` simulated s,
    with ``--loss`` datagram loss. Nobody crashes, so every dead declaration is
    false. The same stall schedule is used for both runs. A false death is one
    (member, incarnation) declared dead by at least one node; "recently
    stalled" means the member was stalled within min suspicion timeout + 2 probe
    intervals before the first declaration; the table also says how many were
    seen by >= 10% of the nodes (most are seen only by their accuser, see
    mesh.testing.simnet on pause).
    *Lifeguard off* means ``awareness_max_multiplier=1`` (the local health score
    is pinned at 0: probe interval and timeout never stretch) and
    ``suspicion_max_timeout_mult=1`` (the suspicion timer is fixed at its
    minimum, ``suspicion_mult * max(1, log10 n) * probe_interval``, so
    confirmations cannot change it). Nacks are still sent; nothing reads them.
(b) Dissemination: gossip rounds (``gossip_interval`` periods) for a membership
    change to reach 99.9% of the nodes: a new member's Alive (from the first
    JOIN event anywhere to 99.9% of the others having it) and a crashed member's
    Dead (from the first DEAD declaration to 99.9% of the survivors). Median
    over ``--changes`` of each.
(c) Crash detection: for ``--changes`` process crashes (TCP refused) and as many
    host crashes (no TCP answer): time from the crash to the first suspicion,
    the first dead declaration, and dead at every survivor.

Prints markdown tables and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from mesh.config import Config
from mesh.core.effects import EventKind, MemberEvent
from mesh.core.suspicion import suspicion_timeout
from mesh.testing.simnet import SimNet

LIFEGUARD_OFF = {"awareness_max_multiplier": 1, "suspicion_max_timeout_mult": 1}
WARMUP = 10.0


def quantiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "min": None, "p50": None, "p90": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "n": len(ordered),
        "min": round(ordered[0], 3),
        "p50": round(statistics.median(ordered), 3),
        "p90": pick(0.9),
        "max": round(ordered[-1], 3),
    }


def fmt(q: dict[str, float | None]) -> str:
    if not q["n"]:
        return "n/a"
    return f"{q['min']} / {q['p50']} / {q['p90']} / {q['max']}"


def build(args: argparse.Namespace, **overrides: Any) -> SimNet:
    sim = SimNet.cluster(
        args.nodes,
        seed=args.seed,
        profile=args.profile,
        bootstrap="static",
        net={"keep_events": False},
        **overrides,
    )
    gc.freeze()  # the preloaded tables are long-lived; see sim_speed.py
    return sim


def run_with_progress(sim: SimNet, end: float, label: str) -> None:
    """Run to ``end``, reporting progress on stderr every 30 simulated s."""
    started = time.perf_counter()
    while sim.now < end:
        sim.run_until(min(end, sim.now + 30.0))
        print(
            f"  {label}: t={sim.now:.0f}/{end:.0f} s simulated, "
            f"{time.perf_counter() - started:.0f} s wall",
            file=sys.stderr,
            flush=True,
        )


# --- (a) false deaths ---


def stall_schedule(args: argparse.Namespace) -> list[tuple[float, str, float]]:
    rng = random.Random(f"stalls/{args.seed}")
    end = WARMUP + args.duration
    out = []
    for i in range(args.nodes):
        t = WARMUP + rng.expovariate(1 / args.stall_every)
        while t < end:
            d = rng.uniform(1.0, 8.0)
            out.append((t, f"n{i}", d))
            t += d + rng.expovariate(1 / args.stall_every)
    return sorted(out)


def false_deaths(
    args: argparse.Namespace, schedule: list[tuple[float, str, float]], lifeguard: bool
) -> dict[str, Any]:
    sim = build(args, **({} if lifeguard else LIFEGUARD_OFF))
    sim.set_loss(args.loss)
    cfg = sim.node("n0").config
    stalls: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t, name, d in schedule:
        stalls[name].append((t, t + d))
        sim.at(t, functools.partial(sim.pause, name, d))
    # "Recently stalled": stalled at any time during the minimum suspicion
    # timeout (+2 probe intervals) before the declaration; same for both runs.
    lookback = suspicion_timeout(cfg.suspicion_mult, args.nodes, cfg.probe_interval)
    lookback += 2 * cfg.probe_interval
    end = WARMUP + args.duration
    counts: dict[str, int] = defaultdict(int)
    episodes: dict[tuple[str, int], float] = {}
    observers: dict[tuple[str, int], int] = defaultdict(int)
    suspected: set[tuple[str, int]] = set()

    def listen(now: float, observer: str, event: MemberEvent) -> None:
        if now < WARMUP:
            return
        kind, member = event.kind, event.member
        if kind is EventKind.DEAD:
            counts["dead_declarations"] += 1
            episodes.setdefault((member.name, member.incarnation), now)
            observers[(member.name, member.incarnation)] += 1
        elif kind is EventKind.SUSPECT:
            suspected.add((member.name, member.incarnation))
        elif kind is EventKind.REFUTE:
            counts["refutations"] += 1

    sim.listeners.append(listen)
    started = time.perf_counter()
    run_with_progress(sim, end, f"(a) lifeguard {'on' if lifeguard else 'off'}")
    wall = time.perf_counter() - started

    def stalled_recently(name: str, at: float) -> bool:
        return any(a <= at and b >= at - lookback for a, b in stalls.get(name, ()))

    healthy = sum(
        1 for (name, _), t in episodes.items() if not stalled_recently(name, t)
    )
    widespread = sum(1 for c in observers.values() if c >= 0.1 * args.nodes)
    stall_time = sum(d for _, _, d in schedule)
    return {
        "lifeguard": lifeguard,
        "stalls": len(schedule),
        "stalled_fraction": round(stall_time / (args.nodes * args.duration), 4),
        "suspicions": len(suspected),
        "refutations": counts["refutations"],
        "false_deaths": len(episodes),
        "false_deaths_healthy": healthy,
        "false_deaths_recently_stalled": len(episodes) - healthy,
        "members_declared_dead": len({name for name, _ in episodes}),
        "false_deaths_seen_by_10pct": widespread,
        "max_observers_of_one_false_death": max(observers.values(), default=0),
        "dead_declarations": counts["dead_declarations"],
        "lookback_s": lookback,
        "datagrams": sim.stats["datagrams"],
        "wall_s": round(wall, 1),
    }


# --- (b) dissemination and (c) detection ---


def changes(args: argparse.Namespace) -> dict[str, Any]:
    sim = build(args)
    cfg: Config = sim.node("n0").config
    rng = random.Random(f"changes/{args.seed}")
    # n0..n2 are the seeds of the joiners: never crash them.
    victims = rng.sample([f"n{i}" for i in range(3, args.nodes)], 2 * args.changes)
    plan: list[tuple[str, str]] = []
    for k in range(args.changes):
        plan += [
            ("join", f"new{k}"),
            ("crash", victims[2 * k]),
            ("host", victims[2 * k + 1]),
        ]
    tracked = {name for _, name in plan}
    first_suspect: dict[str, float] = {}
    seen: dict[tuple[str, EventKind], dict[str, float]] = defaultdict(dict)

    def listen(now: float, observer: str, event: MemberEvent) -> None:
        name = event.member.name
        if name not in tracked:
            return
        if event.kind is EventKind.SUSPECT:
            first_suspect.setdefault(name, now)
        elif event.kind in (EventKind.DEAD, EventKind.JOIN):
            seen[(name, event.kind)].setdefault(observer, now)

    sim.listeners.append(listen)
    when: dict[str, float] = {}
    live_at: dict[str, int] = {}

    def act(kind: str, name: str) -> None:
        when[name] = sim.now
        live_at[name] = sum(1 for n in sim.nodes.values() if n.up)
        if kind == "join":
            sim.add_node(name)
        else:
            sim.crash(name, refuse=kind == "crash")

    for i, (kind, name) in enumerate(plan):
        sim.at(WARMUP + i * args.spacing, functools.partial(act, kind, name))
    max_suspicion = cfg.suspicion_max_timeout_mult * suspicion_timeout(
        cfg.suspicion_mult, args.nodes, cfg.probe_interval
    )
    end = WARMUP + len(plan) * args.spacing + max_suspicion + 30
    started = time.perf_counter()
    run_with_progress(sim, end, "(b, c)")
    wall = time.perf_counter() - started

    def spread(
        name: str, kind: EventKind, others: int
    ) -> tuple[float | None, float | None]:
        """(rounds to 99.9% of ``others``, seconds to 100%) from the first event."""
        times = sorted(seen[(name, kind)].values())
        if not times:
            return None, None
        need = math.ceil(0.999 * others)
        r999 = (
            (times[need - 1] - times[0]) / cfg.gossip_interval
            if len(times) >= need
            else None
        )
        full = times[-1] - times[0] if len(times) >= others else None
        return r999, full

    alive_rounds, dead_rounds, incomplete = [], [], []
    detect: dict[str, dict[str, list[float]]] = {
        "crash": defaultdict(list),
        "host": defaultdict(list),
    }
    for kind, name in plan:
        if kind == "join":
            r, _ = spread(name, EventKind.JOIN, live_at[name])
            (alive_rounds.append(r) if r is not None else incomplete.append(name))
            continue
        survivors = live_at[name] - 1
        r, _ = spread(name, EventKind.DEAD, survivors)
        (dead_rounds.append(r) if r is not None else incomplete.append(name))
        d = detect[kind]
        if name in first_suspect:
            d["first_suspect"].append(first_suspect[name] - when[name])
        deaths = sorted(seen[(name, EventKind.DEAD)].values())
        if deaths:
            d["first_dead"].append(deaths[0] - when[name])
        if len(deaths) >= survivors:
            d["dead_everywhere"].append(deaths[-1] - when[name])
    return {
        "alive_rounds_to_99_9": quantiles(alive_rounds),
        "dead_rounds_to_99_9": quantiles(dead_rounds),
        "incomplete": incomplete,
        "detection_s": {
            kind: {k: quantiles(v) for k, v in d.items()} for kind, d in detect.items()
        },
        "gossip_interval": cfg.gossip_interval,
        "retransmit_limit": cfg.retransmit_mult * math.ceil(math.log10(args.nodes + 1)),
        "wall_s": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--out", metavar="PATH", default="sim_membership.json")
    parser.add_argument("--profile", default="lan", choices=["lan", "local", "wan"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=300.0, help="(a) simulated s")
    parser.add_argument("--loss", type=float, default=0.05, help="(a) datagram loss")
    parser.add_argument(
        "--stall-every", type=float, default=300.0, help="(a) mean s between stalls"
    )
    parser.add_argument("--changes", type=int, default=5, help="(b, c) per kind")
    parser.add_argument("--spacing", type=float, default=20.0, help="(b, c) s apart")
    parser.add_argument(
        "--skip", choices=["a", "bc"], action="append", default=[], help="skip a part"
    )
    args = parser.parse_args(argv)
    cfg = Config.for_profile(args.profile)
    result: dict[str, Any] = {
        "nodes": args.nodes,
        "profile": args.profile,
        "seed": args.seed,
        "lifeguard_off_means": LIFEGUARD_OFF,
    }
    print(f"# mesh membership on simnet: {args.nodes} nodes, profile {args.profile}\n")

    if "a" not in args.skip:
        schedule = stall_schedule(args)
        runs = [false_deaths(args, schedule, lifeguard) for lifeguard in (True, False)]
        result["false_deaths"] = {
            "duration_s": args.duration,
            "loss": args.loss,
            "stall_every_s": args.stall_every,
            "lifeguard_on": runs[0],
            "lifeguard_off": runs[1],
        }
        print(
            f"## (a) false deaths: {args.duration:g} s, {args.loss:.0%} loss, "
            f"stalls U(1, 8) s every ~{args.stall_every:g} s per node "
            f"({runs[0]['stalls']} stalls, {runs[0]['stalled_fraction']:.1%} of "
            "node-time stalled)\n"
        )
        print(
            "| Lifeguard | suspicions | refutations | false deaths | of healthy "
            "members | of recently stalled | seen by >= 10% of nodes | most "
            "observers of one | dead declarations | wall s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for run in runs:
            print(
                f"| {'on' if run['lifeguard'] else 'off'} | {run['suspicions']} | "
                f"{run['refutations']} | {run['false_deaths']} | "
                f"{run['false_deaths_healthy']} | "
                f"{run['false_deaths_recently_stalled']} | "
                f"{run['false_deaths_seen_by_10pct']} | "
                f"{run['max_observers_of_one_false_death']} | "
                f"{run['dead_declarations']} | {run['wall_s']} |"
            )
        print()

    if "bc" not in args.skip:
        res = changes(args)
        result["changes"] = res
        print(
            f"## (b) dissemination to 99.9% in gossip rounds "
            f"({res['gossip_interval']} s), min / median / p90 / max\n"
        )
        print("| change | rounds |\n|---|---|")
        print(f"| new member (Alive) | {fmt(res['alive_rounds_to_99_9'])} |")
        print(f"| crashed member (Dead) | {fmt(res['dead_rounds_to_99_9'])} |")
        if res["incomplete"]:
            print(f"\nnever reached 99.9%: {', '.join(res['incomplete'])}")
        print(
            "\n## (c) crash detection, seconds after the crash, "
            "min / median / p90 / max\n"
        )
        print("| crash | first suspect | first dead | dead at every survivor |")
        print("|---|---|---|---|")
        for kind, label in (
            ("crash", "process (TCP refused)"),
            ("host", "host (no answer)"),
        ):
            d = res["detection_s"][kind]
            print(
                f"| {label} | {fmt(d['first_suspect'])} | {fmt(d['first_dead'])} | "
                f"{fmt(d['dead_everywhere'])} |"
            )
        print()
    result["config"] = {
        "probe_interval": cfg.probe_interval,
        "probe_timeout": cfg.probe_timeout,
        "suspicion_mult": cfg.suspicion_mult,
        "suspicion_max_timeout_mult": cfg.suspicion_max_timeout_mult,
        "min_suspicion_s": suspicion_timeout(
            cfg.suspicion_mult, args.nodes, cfg.probe_interval
        ),
        "gossip_interval": cfg.gossip_interval,
        "gossip_nodes": cfg.gossip_nodes,
        "refused_suspicion_mult": cfg.refused_suspicion_mult,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"JSON written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

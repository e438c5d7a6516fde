"""The simulator's per-node records: a process slot and the events it reported.

Why a module of its own: the event loop (:mod:`mesh.testing.simloop`) and the
harness (:mod:`mesh.testing.simnet`) both read and write these, so they live
below both; import them from :mod:`mesh.testing.simnet`, their public home.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, NamedTuple

from ..config import Config
from ..core.effects import EventKind
from ..core.node import NodeCore
from ..messages import Address

__all__ = ["SimEvent", "SimNode"]


class SimEvent(NamedTuple):
    """One ``MemberEvent`` as an observer emitted it."""

    time: float
    observer: str
    kind: EventKind
    member: str
    incarnation: int


class SimNode:
    """The simulator's record of one process slot (name + address).

    ``core`` is the current process's core; after a crash it is kept for
    inspection, and a restart replaces it (``gen`` counts processes, so results
    addressed to an older process are dropped).
    """

    __slots__ = (
        "addr",
        "backlog",
        "backlog_datagrams",
        "config",
        "core",
        "exchanges",
        "gen",
        "group",
        "leave_deadline",
        "left",
        "name",
        "pause_gen",
        "paused",
        "pushes",
        "reconciles",
        "refuse",
        "resume_at",
        "rng",
        "tcp_probes",
        "up",
        "wake_at",
    )

    def __init__(self, name: str, addr: Address, config: Config) -> None:
        self.name = name
        self.addr = addr
        self.config = config
        self.core: NodeCore
        self.rng: random.Random
        self.gen = 0
        self.up = False
        self.refuse = True
        self.left = False
        self.paused = False
        self.pause_gen = 0
        self.resume_at = 0.0
        self.backlog: deque[tuple[int, Any, Any]] = deque()
        self.backlog_datagrams = 0
        self.wake_at: float | None = None
        self.group = 0
        self.exchanges: set[int] = set()
        self.tcp_probes: set[int] = set()
        self.pushes: set[int] = set()
        self.reconciles: set[int] = set()
        self.leave_deadline: float | None = None

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        if self.paused:
            state = "paused"
        return f"<SimNode {self.name} {self.addr[0]} {state} gen={self.gen}>"

"""A synchronous wire between cores for exact-time unit tests (h11's
ConnectionPair idea): datagrams are delivered instantly at the sender's ``now``,
exchanges answered on the spot. Links can be cut per destination."""

from __future__ import annotations

import random
from collections import deque

import attrs

from mesh.config import Config
from mesh.core.effects import (
    Effect,
    Exchange,
    MemberEvent,
    ProbeTcp,
    Send,
    TcpProbeResult,
)
from mesh.core.node import NodeCore
from mesh.messages import Address, MemberStatus, Message, PushPull


class Wire:
    """Cores wired back to back; ``now`` is moved only by the test."""

    def __init__(self, config: Config, names: list[str], seed: int = 1) -> None:
        self.now = 0.0
        self.cores: dict[str, NodeCore] = {}
        self.addr: dict[str, Address] = {}
        self.by_addr: dict[Address, str] = {}
        self.down: set[str] = set()  # receives nothing
        self.refuse: set[str] = set()  # TCP probes to it are refused
        self.sent: list[tuple[float, str, Address, tuple[Message, ...]]] = []
        self.events: list[tuple[float, str, MemberEvent]] = []
        self._pending: deque[tuple[str, Effect]] = deque()
        for i, name in enumerate(names):
            addr = (f"10.0.0.{i + 1}", 7946)
            cfg = attrs.evolve(config, name=name)
            core = NodeCore(cfg, addr=addr, rng=random.Random(seed + i), now=0.0)
            self.cores[name] = core
            self.addr[name] = addr
            self.by_addr[addr] = name

    def connect_all(self) -> None:
        """Give every core the full table, as finished joins would."""
        cores = list(self.cores.values())
        first = cores[0]
        for _ in range(2):
            for core in cores[1:]:
                reply, effects = first.handle_exchange(_request(core), self.now)
                self._run(first.name, effects)
                core.membership.merge(reply.members, first.name, self.now)
                self._run(core.name, core._drain())
        self.events.clear()

    def advance_to(self, t: float) -> None:
        """Run every core's timers up to ``t`` in time order."""
        while True:
            due = [
                (d, n)
                for n, c in self.cores.items()
                if n not in self.down and (d := c.next_deadline()) is not None
            ]
            if not due:
                break
            deadline, name = min(due)
            if deadline > t:
                break
            self.now = max(self.now, deadline)
            self._run(name, self.cores[name].tick(self.now))
        self.now = t

    def status(self, observer: str, member: str) -> MemberStatus | None:
        view = self.cores[observer].member(member)
        return view.status if view else None

    def _run(self, origin: str, effects: list[Effect]) -> None:
        self._pending.extend((origin, e) for e in effects)
        while self._pending:
            src, effect = self._pending.popleft()
            self._execute(src, effect)

    def _execute(self, src: str, effect: Effect) -> None:
        if isinstance(effect, Send):
            self.sent.append((self.now, src, effect.addr, effect.messages))
            dst = self.by_addr.get(effect.addr)
            if dst is None or dst in self.down:
                return
            out = self.cores[dst].receive(self.addr[src], effect.messages, self.now)
            self._pending.extend((dst, e) for e in out)
        elif isinstance(effect, ProbeTcp):
            dst = self.by_addr.get(effect.addr)
            if dst in self.refuse:
                result = TcpProbeResult.REFUSED
            elif dst is None or dst in self.down:
                result = TcpProbeResult.FAILED
            else:
                result = TcpProbeResult.ACK
            if result is not TcpProbeResult.FAILED:
                out = self.cores[src].tcp_probe_done(effect.seq, result, self.now)
                self._pending.extend((src, e) for e in out)
        elif isinstance(effect, Exchange):
            target = effect.target
            dst = self.by_addr.get(target) if isinstance(target, tuple) else None
            replies = []
            if dst is not None and dst not in self.down:
                reply, out = self.cores[dst].handle_exchange(effect.request, self.now)
                self._pending.extend((dst, e) for e in out)
                replies.append(reply)
            out = self.cores[src].exchange_done(effect.token, replies, self.now)
            self._pending.extend((src, e) for e in out)
        elif isinstance(effect, MemberEvent):
            self.events.append((self.now, src, effect))


def _request(core: NodeCore) -> PushPull:
    return PushPull(True, core.membership.states(), core.name)

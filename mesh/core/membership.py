"""SWIM member table and its transitions (memberlist state.go: aliveNode,
suspectNode, deadNode, refute, mergeState).

Theory of operation. Each member has a status (alive, suspect, dead, left) and an
incarnation number only the member itself increases. Precedence, as memberlist:

* ``Alive(i)`` overrides any state held at incarnation ``< i``; about ourselves, an
  alive with ``i >= ours`` that differs from what we are is refuted.
* ``Suspect(i)`` overrides ``alive`` at incarnation ``<= i``; a second suspect from
  another sender only confirms (Lifeguard) and may shorten the timer.
* ``Dead(i)`` overrides alive and suspect at incarnation ``<= i``; ``Dead`` sent by
  the member itself means it left gracefully, status ``left``.
* About ourselves, a suspect or dead at ``i >= ours`` is refuted: incarnation
  becomes ``i + 1`` and a fresh alive is broadcast (health score +1).
* A member at a new address is accepted only when it is dead or left (a process
  restarted under the same name on another address takes over once the old one
  is declared dead). An alive naming a live (alive or suspect) member at another
  address is refused whatever its incarnation, as memberlist's "Conflicting
  address": the first holder keeps the name, so third parties do not flip
  between two processes. Each refusal is counted (``alive_conflicts``) and the
  first of an episode is queued in ``conflicts`` for the shell to log; the
  latest refused claim is kept, and applied the moment the holder is declared
  dead (a restart on a new address then switches at once); when the holder
  leaves, a claimant still running refutes the leave instead. About
  ourselves, such an alive is still refuted (``name_conflicts``): our
  incarnation must stay above any other claim to our name, or a dead or suspect
  about the other process would apply to us once we take the name over.

Invariants: incarnations never decrease; the local member never becomes suspect or
dead in its own view (it refutes instead), only ``left`` by its own leave. Every
accepted change is queued for gossip once (the queue keeps one entry per member).
The table is bounded by ``max_members``; dead members are forgotten after
``reconnect_timeout`` and left ones after ``tombstone_timeout``.

What it does not know: how messages travel, the probe schedule, or time beyond the
``now`` handed to each call.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections import Counter, deque
from collections.abc import Iterable, Iterator

import attrs

from ..codec import encoded_size
from ..config import Config
from ..messages import (
    Address,
    Alive,
    Dead,
    MemberState,
    MemberStatus,
    Message,
    Suspect,
)
from .awareness import Awareness
from .broadcast import BroadcastQueue, retransmit_limit
from .effects import Effect, EventKind, MemberEvent, MemberView
from .suspicion import Suspicion, suspicion_timeout

__all__ = ["Conflict", "Member", "Membership"]

_LIVE = (MemberStatus.ALIVE, MemberStatus.SUSPECT)
#: conflict episodes kept until the shell takes them (older ones are dropped)
_CONFLICTS_KEPT = 64
#: a conflict episode ends after this many push-pull intervals without a
#: conflicting alive (the other process re-announces itself at least once per
#: push-pull round to some member), so a name clash that stops and starts again
#: is reported again
_CONFLICT_QUIET_ROUNDS = 10


@attrs.frozen
class Conflict:
    """An alive refused because another address holds the name (one per episode).

    ``member`` is the row kept (for ``local``, ourselves after refuting);
    ``other`` and ``incarnation`` are those of the refused claim.
    """

    member: MemberView
    other: Address
    incarnation: int
    local: bool


class Member:
    """One row of the table (mutable; handed out only as :class:`MemberView`)."""

    __slots__ = (
        "_hash",
        "_state",
        "addr",
        "conflict",
        "incarnation",
        "name",
        "state_change_at",
        "status",
        "tags",
    )

    def __init__(
        self,
        name: str,
        addr: Address,
        incarnation: int,
        status: MemberStatus,
        tags: dict[str, str],
        now: float,
    ) -> None:
        self.name = name
        self.addr = addr
        self.incarnation = incarnation
        self.status = status
        self.tags = tags
        self.state_change_at = now
        #: the current conflict episode: (latest refused claim, when)
        self.conflict: tuple[Alive, float] | None = None
        self._state: MemberState | None = None
        self._hash: tuple[int, MemberStatus, int] | None = None

    def row_hash(self) -> int:
        """This row's share of the table digest, cached per (incarnation,
        status): digests are taken every sync, rows change rarely."""
        h = self._hash
        if h is None or h[0] != self.incarnation or h[1] is not self.status:
            h = self._hash = (
                self.incarnation,
                self.status,
                row_hash(self.name, self.incarnation, self.status),
            )
        return h[2]

    def view(self) -> MemberView:
        return MemberView(
            self.name, self.addr, self.status, self.incarnation, dict(self.tags)
        )

    def state(self) -> MemberState:
        # Cached while the row is unchanged: every push-pull sends every row,
        # and building the attrs value dominates an exchange in large meshes.
        s = self._state
        if (
            s is None
            or s.incarnation != self.incarnation
            or s.status is not self.status
            or s.addr != self.addr
            or s.tags != self.tags
        ):
            s = self._state = MemberState(
                self.name, self.addr, self.incarnation, self.status, dict(self.tags)
            )
        return s


@functools.lru_cache(maxsize=65_536)
def row_hash(name: str, incarnation: int, status: MemberStatus) -> int:
    """One member row's 64-bit hash: name, incarnation and status (address and
    tags change only with a new incarnation, so they are covered)."""
    row = f"{name}\x00{incarnation}\x00{status.value}".encode()
    return int.from_bytes(hashlib.blake2b(row, digest_size=8).digest(), "little")


def table_digest(states: Iterable[MemberState]) -> int:
    """XOR of every row's hash: equal tables have equal digests, so a
    periodic sync sends rows only when they differ."""
    digest = 0
    for s in states:
        digest ^= row_hash(s.name, s.incarnation, s.status)
    return digest


class Membership:
    """The member table, its gossip queue, suspicions and local health."""

    def __init__(
        self,
        config: Config,
        *,
        addr: Address,
        incarnation: int,
        rng: random.Random,
        now: float,
    ) -> None:
        self.config = config
        self.rng = rng
        self.local = Member(
            config.name, addr, incarnation, MemberStatus.ALIVE, dict(config.tags), now
        )
        self._members: dict[str, Member] = {config.name: self.local}
        # Non-local names, for O(1) random picks (swap-remove keeps it dense).
        self._others: list[str] = []
        self._index: dict[str, int] = {}
        self._count = Counter({MemberStatus.ALIVE: 1})
        self.broadcasts = BroadcastQueue(config.broadcast_queue_max)
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.suspicions: dict[str, Suspicion] = {}
        self.leaving = False
        #: effects produced by transitions (events), drained by the node
        self.out: list[Effect] = []
        #: counters exported as metrics
        self.stats: Counter[str] = Counter()
        #: name conflicts, one per episode, for the shell to log and take
        self.conflicts: deque[Conflict] = deque(maxlen=_CONFLICTS_KEPT)
        #: the address our name was last heard at, when not ours and no peer
        #: has since shown us at ours (readiness: we are not a member)
        self.local_conflict: Address | None = None
        # Probe order: shuffled round robin over the other members.
        self._probe_order: list[str] = []
        self._probe_index = 0
        self.queue_alive(self.local)

    # --- queries ---

    def __len__(self) -> int:
        return len(self._members)

    def get(self, name: str) -> Member | None:
        return self._members.get(name)

    def __iter__(self) -> Iterator[Member]:
        return iter(self._members.values())

    def count(self, status: MemberStatus) -> int:
        return self._count[status]

    def num_live(self) -> int:
        """Alive + suspect members, ourselves included: the ``n`` of the formulas."""
        return self._count[MemberStatus.ALIVE] + self._count[MemberStatus.SUSPECT]

    def retransmit_limit(self) -> int:
        return retransmit_limit(self.config.retransmit_mult, self.num_live())

    def states(self) -> tuple[MemberState, ...]:
        return tuple(m.state() for m in self._members.values())

    def digest(self) -> int:
        """A 64-bit digest of the table (:func:`table_digest` of ``states()``),
        from cached row hashes: ~1,000 XORs for a 1,000-member table."""
        digest = 0
        for member in self._members.values():
            digest ^= member.row_hash()
        return digest

    def random_members(
        self, k: int, *, exclude: Iterable[str] = (), now: float, gossip: bool = False
    ) -> list[Member]:
        """Up to ``k`` distinct random members that are alive or suspect (with
        ``gossip``, also dead for less than ``gossip_to_the_dead_time``), as
        memberlist kRandomNodes: at most 3n random draws."""
        others = self._others
        if not others or k <= 0:
            return []
        skip = set(exclude)
        picked: list[Member] = []
        dead_window = self.config.gossip_to_the_dead_time
        for _ in range(3 * len(others)):
            if len(picked) >= k:
                break
            name = others[self.rng.randrange(len(others))]
            if name in skip:
                continue
            member = self._members[name]
            ok = member.status in _LIVE or (
                gossip
                and member.status is MemberStatus.DEAD
                and now - member.state_change_at < dead_window
            )
            if ok:
                picked.append(member)
                skip.add(name)
        return picked

    def live_peers(self) -> Iterator[tuple[str, Address]]:
        """(name, address) of every other alive or suspect member."""
        members = self._members
        for name in self._others:
            member = members[name]
            if member.status in _LIVE:
                yield name, member.addr

    def random_alive(self) -> Member | None:
        """A random other member that is alive (not suspect: a round with a
        member that may be gone would only time out), by sampling: O(1) when
        most are alive; None when no other member is alive."""
        others = self._others
        alive_others = self._count[MemberStatus.ALIVE] - (
            self.local.status is MemberStatus.ALIVE
        )
        if not others or alive_others <= 0:
            return None
        for _ in range(3 * len(others)):
            member = self._members[others[self.rng.randrange(len(others))]]
            if member.status is MemberStatus.ALIVE:
                return member
        return None

    def random_dead(self) -> Member | None:
        """A random dead (not left) member, for reconnect attempts."""
        dead = [
            self._members[n]
            for n in self._others
            if self._members[n].status is MemberStatus.DEAD
        ]
        return self.rng.choice(dead) if dead else None

    def next_probe_target(self) -> Member | None:
        """Shuffled round robin (SWIM 4.3): walk the order, reshuffle at the end,
        skip dead and left members."""
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                name = self._probe_order[self._probe_index]
                self._probe_index += 1
                member = self._members.get(name)
                if member is not None and member.status in _LIVE:
                    return member
            self._probe_order = list(self._others)
            self.rng.shuffle(self._probe_order)
            self._probe_index = 0
        return None

    # --- transitions ---

    def on_alive(self, msg: Alive, now: float) -> None:
        """memberlist aliveNode."""
        if self.leaving and msg.name == self.local.name:
            return
        member = self._members.get(msg.name)
        if member is None:
            self._add(msg, now)
            return
        is_local = member is self.local
        moved = member.addr != msg.addr
        if moved:
            if is_local:
                # Someone holds our name elsewhere: another process, or our
                # previous life not yet declared dead. Until peers hold us at
                # our address we are no member (they refuse our alive): say so
                # (readiness, a warning), and out-incarnate a claim that
                # could otherwise override us.
                self._claimed_elsewhere(msg.addr)
                if msg.incarnation >= member.incarnation:
                    self.refute(msg.incarnation, now)
                self._conflict(member, msg, now)
                return
            if member.status in _LIVE:
                # memberlist "Conflicting address": the live holder keeps the
                # name, whatever the incarnation (a higher one is what two
                # processes refuting each other produce).
                self.stats["alive_conflicts"] += 1
                self._conflict(member, msg, now)
                return
            # Dead or left: reclaimed by the new address at once.
            member.conflict = None
        if is_local:
            # A peer holds us at our own address: any conflict is over.
            self.local_conflict = None
            if msg.incarnation < member.incarnation:
                return
            if msg.incarnation == member.incarnation and msg.tags == member.tags:
                return
            self.refute(msg.incarnation, now)
            return
        if msg.incarnation <= member.incarnation and not moved:
            return
        self.suspicions.pop(member.name, None)
        self._queue(member.name, msg)
        changed = moved or dict(msg.tags) != member.tags
        member.incarnation = msg.incarnation
        member.addr = msg.addr
        member.tags = dict(msg.tags)
        if member.status is not MemberStatus.ALIVE:
            self._set_status(member, MemberStatus.ALIVE, now)
            self._event(EventKind.ALIVE, member)
        elif changed:
            self._event(EventKind.UPDATE, member)

    def _claimed_elsewhere(self, addr: Address) -> None:
        self.stats["name_conflicts"] += 1
        self.local_conflict = addr

    def on_suspect(self, msg: Suspect, now: float) -> Suspicion | None:
        """memberlist suspectNode; returns the running suspicion, if any."""
        member = self._members.get(msg.name)
        if member is None:
            return None
        if msg.incarnation < member.incarnation:
            self._stale_accusation(member)
            return None
        suspicion = self.suspicions.get(msg.name)
        if suspicion is not None:
            if suspicion.confirm(msg.sender, now):
                self.stats["suspect_confirmations"] += 1
                self._queue(msg.name, msg)
            return suspicion
        if member.status is not MemberStatus.ALIVE:
            return None
        if member is self.local:
            self.refute(msg.incarnation, now)
            return None
        self._queue(msg.name, msg)
        member.incarnation = msg.incarnation
        self._set_status(member, MemberStatus.SUSPECT, now)
        self.stats["suspicions"] += 1
        self._event(EventKind.SUSPECT, member)
        n = self.num_live()
        k = self.config.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        min_timeout = suspicion_timeout(
            self.config.suspicion_mult, n, self.config.probe_interval
        )
        max_timeout = self.config.suspicion_max_timeout_mult * min_timeout
        suspicion = Suspicion(msg.sender, k, min_timeout, max_timeout, now)
        self.suspicions[msg.name] = suspicion
        return suspicion

    def on_dead(self, msg: Dead, now: float) -> None:
        """memberlist deadNode; ``sender == name`` means a graceful leave."""
        member = self._members.get(msg.name)
        if member is None:
            return
        if msg.incarnation < member.incarnation:
            self._stale_accusation(member)
            return
        self.suspicions.pop(msg.name, None)
        if member.status in (MemberStatus.DEAD, MemberStatus.LEFT):
            return
        if member is self.local and not self.leaving:
            self.refute(msg.incarnation, now)
            return
        left = msg.sender == msg.name
        self._queue(msg.name, msg, urgent=left and member is self.local)
        member.incarnation = msg.incarnation
        if left:
            self._set_status(member, MemberStatus.LEFT, now)
            self._event(EventKind.LEFT, member)
        else:
            self._set_status(member, MemberStatus.DEAD, now)
            self.stats["deaths"] += 1
            self._event(EventKind.DEAD, member)
        claim = member.conflict
        if (
            claim is not None
            and not left
            and member is not self.local
            and self._recent(claim, now)
        ):
            # A process at another address claimed the name while this one
            # lived (a restart on a new address before the old one was found
            # dead): it takes over now, instead of when its next alive happens
            # by (its next push-pull, up to push_pull_interval away). Gone
            # since? It is probed and declared dead like any crash. Not on a
            # graceful leave: a claimant still running hears of the leave and
            # refutes it, which is an alive at its address within a gossip
            # round, while a claim left by a process since stopped would list
            # the member alive at a dead address until probed.
            self.stats["conflicts_taken_over"] += 1
            self.on_alive(claim[0], now)

    def _stale_accusation(self, member: Member) -> None:
        """An accusation of us at an old incarnation: the accuser missed our
        refutation (gossip is probabilistic). Queue our alive again, unchanged,
        so it rides on the ack going back to it; memberlist just ignores it and
        the accuser may declare us dead anyway."""
        if member is self.local and not self.leaving:
            self.stats["stale_accusations"] += 1
            if not self.broadcasts.pending_for(member.name):
                self.queue_alive(member)

    def refute(self, accused: int, now: float) -> None:
        """memberlist refute: out-incarnate an accusation about ourselves."""
        incarnation = self.local.incarnation + 1
        if accused >= incarnation:
            incarnation = accused + 1
        self.local.incarnation = incarnation
        self.queue_alive(self.local)
        self.awareness.apply_delta(1)
        self.stats["refutations"] += 1
        self._event(EventKind.REFUTE, self.local)

    def merge(self, states: Iterable[MemberState], sender: str, now: float) -> None:
        """memberlist mergeState: a remote dead is only a suspicion here, so a
        wrongly declared member gets the chance to refute."""
        members = self._members
        for state in states:
            if state.status is MemberStatus.ALIVE:
                known = members.get(state.name)
                if (
                    known is not None
                    and known is not self.local
                    and state.incarnation <= known.incarnation
                    and state.addr == known.addr
                ):
                    # Nothing new (most rows of a periodic sync): on_alive would
                    # ignore it; skip building the message (O(n) per exchange).
                    continue
                self.on_alive(
                    Alive(state.incarnation, state.name, state.addr, state.tags), now
                )
            elif state.status is MemberStatus.LEFT:
                self.on_dead(Dead(state.incarnation, state.name, state.name), now)
            elif state.name not in self._members:
                # Never heard of it and it is not alive: nothing to suspect.
                continue
            else:
                if (
                    state.status is MemberStatus.SUSPECT
                    and state.name == self.local.name
                    and state.addr != self.local.addr
                ):
                    # Our name, suspect at another address: live, so the
                    # sender refuses our alive until that address is found
                    # dead. We are no member meanwhile (audit 11: a restarted
                    # process said ready for 3.4 s while every peer pushed to
                    # its previous life).
                    self._claimed_elsewhere(state.addr)
                    claim = Alive(state.incarnation, state.name, state.addr, state.tags)
                    self._conflict(self.local, claim, now)
                self.on_suspect(Suspect(state.incarnation, state.name, sender), now)

    def expire_suspicions(self, now: float) -> None:
        """Declare dead every member whose suspicion timer has run out."""
        expired = [n for n, s in self.suspicions.items() if s.deadline <= now]
        for name in expired:
            member = self._members[name]
            self.stats["deaths_declared"] += 1
            self.on_dead(Dead(member.incarnation, name, self.local.name), now)

    def reap(self, now: float) -> None:
        """Forget dead members after reconnect_timeout, left after tombstone."""
        limits = {
            MemberStatus.DEAD: self.config.reconnect_timeout,
            MemberStatus.LEFT: self.config.tombstone_timeout,
        }
        doomed = [
            m
            for m in self._members.values()
            if m is not self.local
            and m.status in limits
            and now - m.state_change_at >= limits[m.status]
        ]
        for member in doomed:
            self._remove(member)
            self._event(EventKind.REAP, member)

    # --- gossip queue ---

    def queue_alive(self, member: Member) -> None:
        msg = Alive(member.incarnation, member.name, member.addr, dict(member.tags))
        self._queue(member.name, msg)

    def take_broadcasts(self, budget: int) -> list[Message]:
        return self.broadcasts.get(budget, self.retransmit_limit())

    def _queue(self, name: str, msg: Message, *, urgent: bool = False) -> None:
        self.broadcasts.queue(name, msg, encoded_size(msg), urgent=urgent)

    # --- internals ---

    def _add(self, msg: Alive, now: float) -> None:
        if len(self._members) >= self.config.max_members:
            self.stats["members_refused"] += 1
            return
        member = Member(
            msg.name, msg.addr, msg.incarnation, MemberStatus.ALIVE, dict(msg.tags), now
        )
        self._members[msg.name] = member
        self._index[msg.name] = len(self._others)
        self._others.append(msg.name)
        self._count[MemberStatus.ALIVE] += 1
        self._insert_probe_target(msg.name)
        self._queue(msg.name, msg)
        self._event(EventKind.JOIN, member)

    def _insert_probe_target(self, name: str) -> None:
        """Put a new member at a random offset of the *whole* probe order,
        the member there moving to the end (memberlist aliveNode). If the
        offset falls in the part already probed this round, the new member
        waits for the next round and the one it displaced is probed again at
        the end of this one; no member still due this round is pushed back
        by more than one slot.

        Inserting only into the part still to come (probed within this round
        for sure) looks kinder to newcomers, but a node's probes are one per
        interval either way: after a wave of joins (a fresh mesh, a restart)
        every newcomer jumps ahead of the old members in every round, so the
        old ones are probed late, and a crash of one of them is found late
        (the first suspicion comes from the first node to probe it; the
        spread of that time is smallest when every member is equally likely
        to be next).
        """
        order = self._probe_order
        n = len(order)
        offset = self.rng.randrange(n) if n else 0
        order.append(name)
        order[offset], order[n] = order[n], order[offset]

    def _remove(self, member: Member) -> None:
        del self._members[member.name]
        pos = self._index.pop(member.name)
        last = self._others.pop()
        if last != member.name:
            self._others[pos] = last
            self._index[last] = pos
        self._count[member.status] -= 1
        self.suspicions.pop(member.name, None)

    def _set_status(self, member: Member, status: MemberStatus, now: float) -> None:
        self._count[member.status] -= 1
        self._count[status] += 1
        member.status = status
        member.state_change_at = now

    def _conflict(self, member: Member, msg: Alive, now: float) -> None:
        """Queue a conflict when it starts an episode: a new other address, or
        the same after a quiet period."""
        last = member.conflict
        member.conflict = (msg, now)
        if last is not None and last[0].addr == msg.addr and self._recent(last, now):
            return
        self.conflicts.append(
            Conflict(member.view(), msg.addr, msg.incarnation, member is self.local)
        )

    def _recent(self, claim: tuple[Alive, float], now: float) -> bool:
        return now - claim[1] < _CONFLICT_QUIET_ROUNDS * self.config.push_pull_interval

    def _event(self, kind: EventKind, member: Member) -> None:
        self.out.append(MemberEvent(kind, member.view()))

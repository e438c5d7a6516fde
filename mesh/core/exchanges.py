"""Member-table exchanges: joining through the seeds, the periodic push-pull
sync, reconnecting to dead members and knocking on unknown seeds.

Theory of operation. Gossip spreads changes; these exchanges make whole
tables agree. Each is a full :class:`~mesh.messages.PushPull` record carried
by the shell over TCP (an :class:`~mesh.core.effects.Exchange` effect, its
result back through :meth:`MemberExchanges.done`):

* **join**: one exchange per seed; the first seed that answers makes us
  *joined* (only a seed's answer counts: two unjoined members that reached
  each other would otherwise join into an island). Unanswered, it is retried
  with exponential backoff, and a joined member left alone knocks again.
* **sync**: every ``push_pull_interval`` (scaled up past 32 members) with
  one random member, first as a summary (two digests) and as a full
  exchange only when the digests differ.
* **reconnect**: every ``reconnect_interval``, with one dead member, and
  with a seed no live member is at (DNS seeds resolved again for it), so
  two meshes formed while cut off merge once they can reach each other.

Split from :class:`~mesh.core.node.NodeCore`, which owns the clock, the
effects list and what joining sets off (the route table's bootstrap).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from ..config import Config, parse_address
from ..messages import Address, MemberStatus, PushPull, format_address, is_ip_literal
from .effects import (
    Effect,
    Exchange,
    ExchangePurpose,
    ResolveSeeds,
)
from .membership import Membership

__all__ = ["MemberExchanges", "push_pull_scale"]

_LIVE_STATUSES = frozenset({MemberStatus.ALIVE, MemberStatus.SUSPECT})


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist util.go::pushPullScale: ``interval * (ceil(log2 n - log2 32) + 1)``
    above 32 members, so exchange load stays flat as the mesh grows."""
    if n <= 32:
        return interval
    return interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)


def _split_seeds(
    seeds: Sequence[str],
) -> tuple[list[tuple[Address, str]], tuple[str, ...]]:
    """The seeds given as IP addresses, parsed, and those given as DNS names
    (only the shell resolves names: :class:`ResolveSeeds`)."""
    addrs: list[tuple[Address, str]] = []
    names: list[str] = []
    for text in seeds:
        host, port = parse_address(text)
        if is_ip_literal(host):
            addrs.append(((host, port), text))
        else:
            names.append(text)
    return addrs, tuple(names)


class MemberExchanges:
    """Join, sync and reconnect exchanges of one node, and their timers."""

    def __init__(
        self,
        config: Config,
        membership: Membership,
        *,
        rng: random.Random,
        now: float,
        emit: Callable[[Effect], None],
    ) -> None:
        self.config = config
        self.membership = membership
        self.rng = rng
        self._emit = emit
        self.next_sync_at = now + config.push_pull_interval * (0.5 + rng.random() / 2)
        self.next_reconnect_at = now + config.reconnect_interval
        self.join_retry_at: float | None = None
        self.next_rejoin_at = now + config.join_backoff_max
        self._seed_addrs, self._dns_seeds = _split_seeds(config.join)
        self._resolved_seeds: list[tuple[Address, str]] = []
        self._tokens = 0
        self._exchanges: dict[int, tuple[ExchangePurpose, str]] = {}
        self._join_pending: set[int] = set()
        # tokens of summary syncs: a mismatch is followed by a full one
        self.summary_syncs: set[int] = set()
        self._join_attempts = 0
        #: a seed answered (a node without seeds is joined from the start)
        self.joined = not config.join

    @property
    def join_pending(self) -> bool:
        """A join exchange is in flight."""
        return bool(self._join_pending)

    def alone_with_seeds(self) -> bool:
        """Joined once, but nobody else is live: the seeds are worth a knock."""
        return (
            self.joined
            and bool(self.config.join)
            and not self._join_pending
            and self.membership.num_live() == 1
            and not self.membership.leaving
        )

    def next_deadline(self, t: float) -> float:
        """``t``, or an earlier wake-up these timers need."""
        t = min(t, self.next_sync_at)
        if self.next_reconnect_at < t and self.membership.count(MemberStatus.DEAD):
            t = self.next_reconnect_at
        if self.join_retry_at is not None and self.join_retry_at < t:
            t = self.join_retry_at
        if self.next_rejoin_at < t and self.alone_with_seeds():
            t = self.next_rejoin_at
        return t

    def tick(self, now: float) -> None:
        """Start whichever exchanges are due."""
        cfg = self.config
        if now >= self.next_sync_at:
            self._sync(now)
        if now >= self.next_reconnect_at:
            self.next_reconnect_at = now + cfg.reconnect_interval
            self._reconnect()
        if self.join_retry_at is not None and now >= self.join_retry_at:
            self.join_retry_at = None
            self.join()
        if self.alone_with_seeds() and now >= self.next_rejoin_at:
            # Joined once, but everyone we knew is gone (or we only ever met a
            # seed that died): knock on the seeds again, as a fresh start would.
            self.next_rejoin_at = now + cfg.join_backoff_max
            self.join()

    def join(self) -> None:
        """One join exchange per seed."""
        self._join_attempts += 1
        for seed in self.config.join:
            self._join_pending.add(self.exchange(seed, ExchangePurpose.JOIN, seed))

    def done(self, token: int, replies: Sequence[PushPull], now: float) -> bool:
        """Result of an exchange (``replies`` empty: it failed). Returns True
        when it made us joined, so the caller starts what joining sets off."""
        entry = self._exchanges.pop(token, None)
        if entry is None:
            return False
        m = self.membership
        purpose, sender = entry
        summary = token in self.summary_syncs
        self.summary_syncs.discard(token)
        for reply in replies:
            if reply.summary:
                m.stats["exchange_sync_same"] += 1
                continue
            m.merge(reply.members, reply.sender or sender, now)
            if summary and m.digest() != reply.digest:
                # Their rows are merged; now they need ours (push-pull).
                member = m.get(sender)
                if member is not None:
                    self.exchange(member.addr, purpose, sender)
        m.stats[f"exchange_{purpose.value}_{'ok' if replies else 'failed'}"] += 1
        if purpose is not ExchangePurpose.JOIN:
            return False
        self._join_pending.discard(token)
        if replies and not self.joined:
            self.joined = True
            self.join_retry_at = None
            return True
        if not self.joined and not self._join_pending:
            self._schedule_join_retry(now)
        return False

    def handle(self, request: PushPull, now: float) -> PushPull:
        """A peer's exchange: our reply, after merging their rows.

        A summary request (a periodic sync) is answered with a summary when the
        digests match: an idle 1,000-member mesh exchanges two digests, not
        two tables."""
        m = self.membership
        digest = m.digest()
        name = self.config.name
        if request.summary and request.digest == digest:
            m.stats["exchange_served_same"] += 1
            return PushPull(False, (), name, digest, summary=True)
        reply = PushPull(False, m.states(), name, digest)
        m.merge(request.members, request.sender or "?", now)
        m.stats["exchange_served"] += 1
        return reply

    def exchange(
        self,
        target: Address | str,
        purpose: ExchangePurpose,
        peer: str,
        *,
        summary: bool = False,
    ) -> int:
        """Emit one exchange; returns its token."""
        self._tokens += 1
        token = self._tokens
        self._exchanges[token] = (purpose, peer)
        m = self.membership
        request = PushPull(
            purpose is ExchangePurpose.JOIN,
            () if summary else m.states(),
            self.config.name,
            m.digest(),
            summary,
        )
        self._emit(Exchange(token, target, request, purpose))
        return token

    def seeds_resolved(self, addrs: Sequence[Address]) -> None:
        """The addresses the seeds of :class:`ResolveSeeds` resolve to now
        (kept until the next resolution, at most ``max_members``); knock on
        one no live member of ours is at, as for IP seeds."""
        cap = self.config.max_members
        self._resolved_seeds = [(a, format_address(a)) for a in addrs[:cap]]
        if self.joined:
            self._knock_on_unknown_seed()

    def _schedule_join_retry(self, now: float) -> None:
        cfg = self.config
        base = min(
            cfg.join_backoff_max,
            cfg.join_backoff_min * 2 ** min(self._join_attempts - 1, 30),
        )
        self.join_retry_at = now + base * (0.5 + self.rng.random() / 2)

    def _sync(self, now: float) -> None:
        m = self.membership
        interval = push_pull_scale(self.config.push_pull_interval, m.num_live())
        self.next_sync_at = now + interval
        # Not joined yet, but members reached us: sync with them all the same
        # (memberlist's push-pull does not wait for a join), or a joiner whose
        # seeds are gone for good is forgotten by those members once they
        # reap it, and never known again (churn property, nightly profile).
        # It stays unjoined: only a seed's answer is a join (a member that
        # reached us may itself be unjoined: two such would form an island).
        peers = m.random_members(1, exclude=(self.config.name,), now=now)
        if peers:
            self.summary_syncs.add(
                self.exchange(
                    peers[0].addr, ExchangePurpose.SYNC, peers[0].name, summary=True
                )
            )

    def _reconnect(self) -> None:
        member = self.membership.random_dead()
        if member is not None:
            self.exchange(member.addr, ExchangePurpose.RECONNECT, member.name)
        if self.joined:
            self._knock_on_unknown_seed()
            if self._dns_seeds:
                self._emit(ResolveSeeds(self._dns_seeds))

    def _knock_on_unknown_seed(self) -> None:
        seed = self._unknown_seed()
        if seed is not None:
            addr, text = seed
            self.exchange(addr, ExchangePurpose.RECONNECT, text)

    def _unknown_seed(self) -> tuple[Address, str] | None:
        """A seed given as an IP address that no live member of ours is at.

        Joining needs one seed's answer. Two members cut off from the rest
        while they (re)start may each be the other's answer: joined, they
        never knock on the other seeds again, and after the partition heals
        the two meshes know nothing of each other, for good (the nightly
        anti-entropy property found such an island). Knocking on such a
        seed once a reconnect interval merges them; a seed that is one of
        our live members costs nothing. Seeds given as DNS names count with
        the addresses the shell last resolved them to (:meth:`seeds_resolved`)."""
        m = self.membership
        known = {x.addr for x in m if x.status in _LIVE_STATUSES}
        unknown = [
            (addr, text)
            for addr, text in (*self._seed_addrs, *self._resolved_seeds)
            if addr not in known and addr != m.local.addr
        ]
        return self.rng.choice(unknown) if unknown else None

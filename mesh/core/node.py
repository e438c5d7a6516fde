"""NodeCore: the one input/output surface of the sans-IO core.

Theory of operation. The caller feeds inputs, each with ``now``:

* ``start(now)``: begin (join the seeds, if any);
* ``receive(src, messages, now)``: one decoded datagram from ``src``;
* ``tick(now)``: timers; call it at ``next_deadline()``;
* ``exchange_done(token, replies, now)``: result of an :class:`Exchange` effect;
* ``handle_exchange(request, now)``: a peer's member-table exchange; returns our
  reply with the effects;
* ``tcp_probe_done(seq, result, now)``: result of a :class:`ProbeTcp` effect;
* ``leave(now)``: announce a graceful leave.

Each returns a list of effects to execute in order. The probe cycle (SWIM with
Lifeguard) is :class:`~mesh.core.probe.Prober`'s; the node routes pings, acks,
nacks and ping-reqs to it and runs its timers. Gossip is piggybacked on every
datagram and sent to ``gossip_nodes`` random members each ``gossip_interval``
while the queue is not empty.

Member-table exchanges (join, periodic sync, reconnect to dead members and
unknown seeds) are :class:`~mesh.core.exchanges.MemberExchanges`' work; the
node runs their timers and starts the route table's bootstrap once a seed
answers.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

import attrs

from ..codec import PACKET_OVERHEAD, encoded_size
from ..config import Config
from ..messages import (
    Ack,
    Address,
    Alive,
    Dead,
    MemberStatus,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
)
from .antientropy import AeReply, AeRequest, AntiEntropy
from .effects import (
    Effect,
    EventKind,
    MemberEvent,
    MemberView,
    Push,
    Send,
    TcpProbeResult,
)
from .exchanges import MemberExchanges
from .membership import Membership
from .probe import Prober
from .routes import Outcome, OutcomeStatus, Route, RouteTable, Write
from .suspicion import suspicion_timeout
from .sync import PushScheduler, RetryPolicy, SyncTicket

__all__ = ["NodeCore", "RouteSync"]

_GONE = (EventKind.DEAD, EventKind.LEFT, EventKind.REAP)


@attrs.frozen
class RouteSync:
    """Readiness of the route table: caught up, or why not and how far behind
    (``behind``: entries known to differ from the peer we are catching up
    from, 0 when unknown)."""

    caught_up: bool
    reason: str
    behind: int


class NodeCore:
    """One mesh node's protocol state. Not thread-safe; one caller at a time."""

    def __init__(
        self,
        config: Config,
        *,
        addr: Address,
        rng: random.Random,
        now: float,
        incarnation: int = 0,
        datagram_overhead: int = 0,
        index_base: int = 0,
    ) -> None:
        self.config = config
        #: bytes of msgpack per datagram: ``udp_buffer_size`` minus what the
        #: shell adds to each (the sealing envelope when encryption is on), so
        #: a sealed datagram still fits the configured size
        self.datagram_budget = config.udp_buffer_size - datagram_overhead
        self.name = config.name
        self.rng = rng
        self.membership = Membership(
            config, addr=addr, incarnation=incarnation, rng=rng, now=now
        )
        self._out: list[Effect] = []
        self.prober = Prober(
            config,
            self.membership,
            rng=rng,
            now=now,
            send=self._send,
            emit=self._out_append,
        )
        self.exchanges = MemberExchanges(
            config, self.membership, rng=rng, now=now, emit=self._out_append
        )
        self._next_gossip_at = now
        self._next_reap_at = now + min(
            config.reconnect_timeout, config.tombstone_timeout
        )
        # the wake-up time we last asked for: a tick much later than it means
        # this process was stalled (see _stalled)
        self._planned: float | None = None
        self._last_now = now
        #: our leave was not gossiped: peers hold our name elsewhere (leave)
        self.leave_unannounced = False
        self.started = False
        self.routes = RouteTable(
            origin=config.name,
            max_routes=config.max_routes,
            hlc_max_skew_ms=int(config.hlc_max_skew * 1000),
            max_symbols=config.antientropy_max_symbols,
            change_log_max=config.watch_log_max,
            index_base=index_base,
        )
        self.pushes = PushScheduler(
            queue_max=config.push_queue_max,
            batch_max=config.push_batch_max,
            deadline=config.push_deadline,
            min_interval=config.push_min_interval,
            batch_max_bytes=config.push_batch_max_bytes,
            burst=config.push_burst,
        )
        self.ae = AntiEntropy(
            config,
            self.routes,
            name=config.name,
            repair=self.pushes.needs_repair,
            rng=rng,
            now=now,
            caught_up=self.exchanges.joined,
            streaming=self._streaming,
        )
        #: member -> when it last pushed routes to us (members only)
        self._pushed_at: dict[str, float] = {}
        #: the shell's retry schedule for one push batch
        self.retry_policy = RetryPolicy(
            request_timeout=config.push_request_timeout,
            budget=config.push_retry_budget,
            base=config.push_backoff_base,
            cap=config.push_backoff_max,
            max_retries=config.push_max_retries,
        )

    # --- queries ---

    @property
    def joined(self) -> bool:
        """A seed answered our join (a node without seeds is joined at once)."""
        return self.exchanges.joined

    @joined.setter
    def joined(self, value: bool) -> None:
        # the simulator's instant bootstrap marks a whole cluster joined
        self.exchanges.joined = value

    @property
    def health_score(self) -> int:
        return self.membership.awareness.score

    @property
    def incarnation(self) -> int:
        return self.membership.local.incarnation

    def members(self) -> list[MemberView]:
        return [m.view() for m in self.membership]

    def member(self, name: str) -> MemberView | None:
        m = self.membership.get(name)
        return m.view() if m is not None else None

    def route_sync(self) -> RouteSync:
        """Whether our route table has caught up with the mesh (readiness)."""
        if not self.joined:
            return RouteSync(False, "not joined", 0)
        ae = self.ae
        if not ae.caught_up:
            source = f" from {ae.source}" if ae.source else ""
            return RouteSync(False, f"bootstrapping routes{source}", ae.behind)
        # what the last round found, or what the table had no room for,
        # whichever is more (a round with a peer as full says nothing of it)
        behind = max(ae.behind, self.routes.missing())
        if ae.stalled is not None:
            return RouteSync(
                False, f"resyncing routes after a {ae.stalled:.1f} s stall", behind
            )
        return RouteSync(True, "", behind)

    def leave_pending(self) -> bool:
        """True while our leave has not been gossiped its full retransmit count
        (False at once when nobody is alive to tell), or while a join exchange
        is in flight: the seed may already hold us alive, and only its reply
        tells us whom to tell; leaving before it would look like a crash."""
        m = self.membership
        if not m.leaving:
            return False
        if self.leave_unannounced:
            return False
        if self.exchanges.join_pending:
            return True
        return m.num_live() > 0 and m.broadcasts.pending_for(self.name)

    def next_deadline(self) -> float | None:
        """When ``tick`` must next be called (None: only on input)."""
        # Called after every input (by the shell and the simulator): plain
        # comparisons, no list, and the dead count only when it could matter.
        t = self.exchanges.next_deadline(
            min(self.prober.next_deadline(), self._next_reap_at)
        )
        m = self.membership
        # A lone node has nobody to gossip to: no wake-ups for its queue.
        if self._next_gossip_at < t and len(m.broadcasts) and m.num_live() > 1:
            t = self._next_gossip_at
        if m.suspicions:
            t = min(t, min(s.deadline for s in m.suspicions.values()))
        if self.pushes.held:
            ready = self.pushes.next_ready_at()
            if ready is not None and ready < t:
                t = ready
        ae = self.ae.next_deadline()
        if ae is not None and ae < t:
            t = ae

        # Never plan in the past: a conditional timer (gossip, reconnect) may
        # have been due long ago, and that is not lateness.
        self._planned = max(t, self._last_now)
        if self.routes.pending_folds() > self.config.antientropy_fold_batch:
            # Fold the next slice at once (see tick); an immediate wake is
            # not a plan, so it cannot look like a stall.
            self._planned = None
            return min(t, self._last_now)
        return t

    # --- inputs ---

    def start(self, now: float) -> list[Effect]:
        """Begin: send join exchanges to the seeds (if any)."""
        self.started = True
        if self.config.join:
            self.exchanges.join()
        return self._drain()

    def receive(
        self, src: Address, messages: Sequence[Message], now: float
    ) -> list[Effect]:
        """One decoded datagram from ``src``."""
        self._note_time(now)
        m = self.membership
        prober = self.prober
        for msg in messages:
            if isinstance(msg, Ping):
                prober.on_ping(src, msg)
            elif isinstance(msg, Ack):
                prober.on_ack(msg)
            elif isinstance(msg, Alive):
                m.on_alive(msg, now)
            elif isinstance(msg, Suspect):
                m.on_suspect(msg, now)
            elif isinstance(msg, Dead):
                m.on_dead(msg, now)
            elif isinstance(msg, PingReq):
                prober.on_ping_req(src, msg, now)
            elif isinstance(msg, Nack):
                prober.on_nack(msg)
        return self._drain()

    def tick(self, now: float, wall: float | None = None) -> list[Effect]:
        """Run every timer that is due. ``wall`` (wall-clock seconds) lets
        anti-entropy collect old tombstones; without it they wait."""
        m = self.membership
        self._note_time(now)
        self._planned = None
        if m.suspicions:
            m.expire_suspicions(now)
        self.prober.tick(now)
        if len(m.broadcasts) and now >= self._next_gossip_at:
            self._gossip(now)
            self._next_gossip_at = now + self.config.gossip_interval
        self.exchanges.tick(now)
        if self.pushes.held:
            self._take_pushes(now)
        if now >= self._next_reap_at:
            m.reap(now)
            self._next_reap_at = now + max(self.config.gossip_to_the_dead_time, 1.0)
        if self.routes.pending_folds() > self.config.antientropy_fold_batch:
            self.routes.fold(self.config.antientropy_fold_batch)
        if self.ae.due(now):
            self._out.extend(self.ae.tick(now, wall, self._ae_peer, joined=self.joined))
        return self._drain()

    def exchange_done(
        self, token: int, replies: Sequence[PushPull], now: float
    ) -> list[Effect]:
        """Result of an :class:`Exchange`: the replies (empty: it failed)."""
        if self.exchanges.done(token, replies, now):
            self.ae.kick(now)  # bootstrap the route table at once
            self.membership.out.append(
                MemberEvent(EventKind.JOINED, self.membership.local.view())
            )
        return self._drain()

    def handle_exchange(
        self, request: PushPull, now: float
    ) -> tuple[PushPull, list[Effect]]:
        """A peer's member-table exchange: reply with our table, then merge theirs.

        A summary request (a periodic sync) is answered with a summary when the
        digests match: an idle 1,000-member mesh exchanges two digests, not
        two tables."""
        reply = self.exchanges.handle(request, now)
        return reply, self._drain()

    def reconcile_done(
        self, token: int, reply: AeReply | None, now: float, wall: float
    ) -> list[Effect]:
        """Result of a :class:`Reconcile`: the peer's reply, or None."""
        self._note_time(now)
        self._out.extend(self.ae.done(token, reply, now, wall))
        return self._drain()

    def handle_reconcile(
        self, request: AeRequest, now: float, wall: float
    ) -> tuple[AeReply, list[Effect]]:
        """A peer's anti-entropy request: our reply and effects."""
        self._note_time(now)  # judged by our horizon: a stall must show first
        reply = self.ae.handle(request, wall)
        return reply, self._drain()

    def tcp_probe_done(
        self, seq: int, result: TcpProbeResult, now: float
    ) -> list[Effect]:
        """Result of a :class:`ProbeTcp`."""
        self.prober.tcp_probe_done(seq, result, now)
        return self._drain()

    def leave(self, now: float) -> list[Effect]:
        """Announce a graceful leave; the shell keeps running until
        ``leave_pending()`` is False (or its own deadline) so the news spreads."""
        m = self.membership
        if m.leaving:
            return []
        m.leaving = True
        if m.local_conflict is not None:
            # Peers hold our name at another address and refuse our alive:
            # to them we are no member, and a leave naming us would be read
            # as that other process's, which then shows ``left`` until it
            # refutes (audit of session 12). Go without a word; if the other
            # address was our own previous life, it is found dead as usual.
            self.leave_unannounced = True
            m.stats["leaves_unannounced"] += 1
            return self._drain()
        m.on_dead(Dead(m.local.incarnation, self.name, self.name), now)
        # Send it at once rather than waiting for the next gossip tick.
        self._gossip(now)
        self._next_gossip_at = now + self.config.gossip_interval
        return self._drain()

    def _note_time(self, now: float) -> None:
        """An input at ``now``: if the wake we planned is more than a probe
        interval past, our timers did not fire on time, so this process was
        stalled. Checked on every input that moves our clock, not only on the
        late tick: a datagram read first after a SIGCONT re-planned the wake
        and hid the lateness from the tick (audit 12: 3 of 14 stalls missed,
        each then ready with a stale table)."""
        planned = self._planned
        cfg = self.config
        if planned is not None and now - planned > cfg.probe_interval:
            self._planned = None
            self.membership.stats["stalls"] += 1
            if cfg.awareness_max_multiplier > 1:  # Lifeguard on
                self._stalled(now)
            late = now - planned
            if self.joined and late > self._pushes_lost_after():
                # peers gave up pushing to us meanwhile, or writes made while
                # we were frozen are older than the TTL (see AntiEntropy.stall)
                self.ae.stall(late, now)
        self._last_now = now

    def _pushes_lost_after(self) -> float:
        """How long a stall may last before peers may have dropped pushes for
        us: they keep a batch at most ``push_deadline``, but drop ours at once
        when they declare us dead, which takes a failed probe and at least
        the minimum suspicion timeout; and writes made meanwhile may be past
        the tombstone TTL. On the ``local`` profile the death comes first:
        1.1 s against a 1.5 s ``push_deadline`` (an audit, session 13, saw a
        member paused 1.43 s declared dead and ready again at once, without
        500 deletes and 500 writes, for 0.3 s)."""
        cfg = self.config
        declared_dead = cfg.probe_timeout + suspicion_timeout(
            cfg.suspicion_mult, self.membership.num_live(), cfg.probe_interval
        )
        return min(cfg.push_deadline, cfg.route_tombstone_ttl, declared_dead)

    def _stalled(self, now: float) -> None:
        """Our timers fired more than a probe interval late: this process was
        stalled (SIGSTOP, a GC pause, CPU starvation). Lifeguard's point is
        that such a node should distrust itself: datagrams that arrived while
        it was stalled (refutations among them) are still unread, so give
        every suspicion one more probe interval before it can expire, and
        count the stall against our health. Part of local health awareness:
        off when awareness_max_multiplier is 1."""
        m = self.membership
        grace = now + self.config.probe_interval
        for suspicion in m.suspicions.values():
            suspicion.deadline = max(suspicion.deadline, grace)
        m.awareness.apply_delta(1)

    # --- routes ---

    def put_route(
        self,
        key: str,
        target: str,
        meta: dict[str, str],
        revision: int | None,
        now: float,
        wall: float,
    ) -> tuple[Outcome, list[Effect]]:
        """A client's write accepted here: commit locally, queue for peers.

        ``wall`` is the wall clock in seconds (for the HLC); ``now`` the
        monotonic clock of every other input.
        """
        outcomes, effects = self.write_routes(
            [Write(key, target, meta, revision)], now, wall
        )
        return outcomes[0], effects

    def delete_route(
        self, key: str, revision: int | None, now: float, wall: float
    ) -> tuple[Outcome, list[Effect]]:
        """A client's delete: a tombstone, versioned and pushed like a write."""
        outcomes, effects = self.write_routes(
            [Write(key, "", {}, revision, deleted=True)], now, wall
        )
        return outcomes[0], effects

    def write_refusal(self) -> str | None:
        """Why client writes are refused now, or None. A member that has not
        joined, or not pulled the mesh's table yet, lacks the stored
        revision a write inherits and is checked against: its write would be
        answered 200 and then lose, mesh-wide, to the older entry it could
        not see (audit 11: 10 of 10 such writes and deletes undone). A
        member leaving the mesh refuses them too: its last pushes are being
        flushed, and a write taken after the flush would go with it (audit
        12: the last 1-2 writes acknowledged during a leave were lost)."""
        if self.membership.leaving:
            return "this member is leaving the mesh: write through another member"
        if self.membership.local_conflict is not None:
            # Another process may be writing under our name: two writers
            # minting versions with one origin could mint the same version
            # for different routes, which no replica could tell apart.
            return (
                f"name conflict: {self.name} is held at another address: "
                "retry, or write through another member"
            )
        if self.joined and self.ae.caught_up:
            return None  # (a stall's resync does not refuse: see route_sync)
        return (
            f"this member has not caught up with the mesh "
            f"({self.route_sync().reason}): retry, or write through another member"
        )

    def write_routes(
        self, writes: Sequence[Write], now: float, wall: float
    ) -> tuple[list[Outcome], list[Effect]]:
        """Client writes in order (a batch call), each committed as if alone;
        what changed is queued for peers once, so a batch goes out as one
        delta batch per peer rather than a first batch of one route. All are
        refused (``UNAVAILABLE``) while :meth:`write_refusal` says so."""
        refusal = self.write_refusal()
        if refusal is not None:
            refused = Outcome(OutcomeStatus.UNAVAILABLE, None, refusal)
            return [refused] * len(writes), self._drain()
        outcomes, changes = self.routes.write_many(writes, wall_ms=int(wall * 1000))
        if changes:
            self.pushes.enqueue_many(changes, self.membership.live_peers())
            self._take_pushes(now)
        return outcomes, self._drain()

    def receive_routes(
        self,
        routes: Sequence[Route],
        now: float,
        wall: float,
        sender: str | None = None,
    ) -> tuple[dict[str, int], list[Effect]]:
        """Deltas pushed by a peer (``sender``, as its batch names it): apply
        each; counts by outcome status.

        Not re-pushed: the origin pushes to everyone and anti-entropy repairs
        whoever it missed, so deltas do not echo around the mesh.
        """
        self._note_time(now)  # a push may be the first input after a stall
        if sender is not None and self.membership.get(sender) is not None:
            self._pushed_at[sender] = now  # (members only: a bounded map)
        counts = self.routes.apply_many(
            routes, wall_ms=int(wall * 1000), horizon_ms=self.ae.horizon(wall)
        )
        return counts, self._drain()

    def push_done(
        self, peer: str, batch_id: int, ok: bool, reason: str, now: float
    ) -> list[Effect]:
        """Result of a :class:`Push`: delivered, or given up with ``reason``
        (``deadline``, ``rejected``, ...). The next batch for the peer, if any,
        comes out at once."""
        self.pushes.done(peer, batch_id, ok, reason)
        self._take_pushes(now)
        return self._drain()

    def expedite_pushes(self, now: float) -> list[Effect]:
        """A caller waits for the writes queued so far (``sync=all``): hand
        out every peer's pending batch now, ignoring the push rate's token
        bucket (one batch in flight per peer still holds)."""
        for batch in self.pushes.take_ready(now, expedite=True):
            self._out.append(Push(batch))
        return self._drain()

    def sync_ticket(self) -> SyncTicket:
        """Snapshot for ``sync=all`` right after a write: the live peers and
        the write's index."""
        return self.pushes.ticket(
            self.routes.index, (name for name, _ in self.membership.live_peers())
        )

    def sync_status(self, ticket: SyncTicket) -> tuple[list[str], list[str]]:
        """(acked, pending) peer names for a ticket."""
        return self.pushes.acked(ticket, self.routes.index)

    def _take_pushes(self, now: float) -> None:
        for batch in self.pushes.take_ready(now):
            self._out.append(Push(batch))

    # --- dissemination ---

    def _out_append(self, effect: Effect) -> None:
        # (self._out is replaced on every drain: the prober gets this, not the list)
        self._out.append(effect)

    def _send(self, addr: Address, msgs: list[Message]) -> None:
        """Queue a datagram, filling the rest of its budget with gossip."""
        m = self.membership
        if len(m.broadcasts):
            used = PACKET_OVERHEAD + sum(encoded_size(x) for x in msgs)
            extra = m.take_broadcasts(self.datagram_budget - used)
            room = self.config.max_compound_messages - len(msgs)
            msgs.extend(extra[:room])
        self._out.append(Send(addr, tuple(msgs)))

    def _gossip(self, now: float) -> None:
        m = self.membership
        targets = m.random_members(
            self.config.gossip_nodes, exclude=(self.name,), now=now, gossip=True
        )
        budget = self.datagram_budget - PACKET_OVERHEAD
        for target in targets:
            msgs = m.take_broadcasts(budget)
            if not msgs:
                break
            self._out.append(
                Send(target.addr, tuple(msgs[: self.config.max_compound_messages]))
            )

    # --- member-table exchanges ---

    def seeds_resolved(self, addrs: Sequence[Address], now: float) -> list[Effect]:
        """The addresses the seeds of :class:`ResolveSeeds` resolve to now
        (see :meth:`MemberExchanges.seeds_resolved`)."""
        self.exchanges.seeds_resolved(addrs)
        return self._drain()

    def _streaming(self, peer: str) -> bool:
        """Routes stream between us and ``peer``: pushes to it queued or in
        flight, or one from it within ``antientropy_quiet`` (see the config)."""
        if self.pushes.pushing(peer):
            return True
        at = self._pushed_at.get(peer)
        return at is not None and self._last_now - at < self.config.antientropy_quiet

    def _ae_peer(self, marked: Collection[str]) -> tuple[str, Address] | None:
        """An alive member for an anti-entropy round: a needs-repair one first."""
        m = self.membership
        alive = [
            (name, member.addr)
            for name in sorted(marked)
            if (member := m.get(name)) is not None
            and member.status is MemberStatus.ALIVE
        ]
        if alive:
            return self.rng.choice(alive)
        member = m.random_alive()
        return None if member is None else (member.name, member.addr)

    def _drain(self) -> list[Effect]:
        out = self._out
        if self.membership.out:
            for effect in self.membership.out:
                if isinstance(effect, MemberEvent) and effect.kind in _GONE:
                    # Pending deltas for a dead or departed peer are dropped
                    # (and the peer marked for repair), never kept.
                    self.pushes.forget(effect.member.name, f"peer_{effect.kind.value}")
                    self._pushed_at.pop(effect.member.name, None)
            out.extend(self.membership.out)
            self.membership.out.clear()
        self._out = []
        return out

"""The probe cycle: SWIM's failure detector with Lifeguard, one member at a time.

Theory of operation (memberlist state.go::probeNode). Every ``probe_interval *
(health + 1)`` pick the next member of a shuffled round robin and ping it (with
our suspicion of it piggybacked, so it can refute at once). After ``probe_timeout
* (health + 1)`` with no ack, ask ``indirect_checks`` members to ping-req it and
try a TCP ping ourselves. At the end of the interval, suspect it if nobody acked.
Our own health (Lifeguard's local awareness) moves with the outcome: a direct ack
lowers it, a failed probe raises it by the nacks that did not come (helpers that
could not reach the target either prove the fault is not ours). A *refused* TCP
ping means the host is up and nothing listens on the port: the process is gone,
so the suspicion runs for the short ``refused_suspicion_mult * probe_interval``
instead of Lifeguard's range.

The other half is the helper's side: a ping-req makes us ping the target on the
requester's behalf and relay its ack, or send a nack before the requester's own
probe ends. At most ``max_pending_probes`` relays are kept, so a flood of
ping-reqs costs bounded memory.

Kept apart from :class:`~mesh.core.node.NodeCore` because it is one state
machine with its own timers; the node feeds it datagrams and ticks and gives it
two outlets: ``send`` (a datagram, which the node fills with gossip) and ``emit``
(any other effect, the TCP probe).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..config import Config
from ..messages import Ack, Address, MemberStatus, Message, Nack, Ping, PingReq, Suspect
from .effects import Effect, ProbeTcp, TcpProbeResult
from .membership import Member, Membership

__all__ = ["Probe", "Prober", "Relay"]

_SEQ_MASK = (1 << 32) - 1


class Probe:
    """Our probe of one member, from ping to the end of the interval."""

    __slots__ = (
        "acked",
        "addr",
        "end_at",
        "expected_nacks",
        "indirect_sent",
        "nacks",
        "seq",
        "target",
        "tcp_acked",
        "timeout_at",
    )

    def __init__(
        self, seq: int, target: Member, timeout_at: float, end_at: float
    ) -> None:
        self.seq = seq
        self.target = target.name
        self.addr = target.addr
        self.timeout_at = timeout_at
        self.end_at = end_at
        self.acked = False
        self.indirect_sent = False
        self.expected_nacks = 0
        self.nacks = 0
        self.tcp_acked = False


class Relay:
    """An indirect probe we run for another member."""

    __slots__ = ("deadline", "nack", "requester", "seq")

    def __init__(
        self, requester: Address, seq: int, nack: bool, deadline: float
    ) -> None:
        self.requester = requester
        self.seq = seq
        self.nack = nack
        self.deadline = deadline


class Prober:
    """The probe cycle of one node; see the module docstring."""

    def __init__(
        self,
        config: Config,
        membership: Membership,
        *,
        rng: random.Random,
        now: float,
        send: Callable[[Address, list[Message]], None],
        emit: Callable[[Effect], None],
    ) -> None:
        self.config = config
        self.membership = membership
        self._send = send
        self._emit = emit
        self._seq = rng.randrange(1 << 32)
        #: the probe under way, if any
        self.probe: Probe | None = None
        #: ping-reqs we are relaying, by the sequence number of our own ping
        self.relays: dict[int, Relay] = {}
        self.next_probe_at = now + config.probe_interval * rng.random()

    def next_deadline(self) -> float:
        """The earliest time :meth:`tick` has work."""
        t = self.next_probe_at
        probe = self.probe
        if probe is not None:
            p = probe.end_at if probe.indirect_sent or probe.acked else probe.timeout_at
            if p < t:
                t = p
        if self.relays:
            t = min(t, min(r.deadline for r in self.relays.values()))
        return t

    def tick(self, now: float) -> None:
        """Expire relays, move the probe under way on, start the next one."""
        if self.relays:
            self._expire_relays(now)
        probe = self.probe
        if probe is not None:
            if not probe.acked and not probe.indirect_sent and now >= probe.timeout_at:
                self._indirect_probe(probe, now)
            if now >= probe.end_at:
                self._finish_probe(probe, now)
        if self.probe is None and now >= self.next_probe_at:
            self._start_probe(now)

    def tcp_probe_done(self, seq: int, result: TcpProbeResult, now: float) -> None:
        """Result of the :class:`ProbeTcp` of probe ``seq``."""
        probe = self.probe
        if probe is None or probe.seq != seq or probe.acked:
            return
        if result is TcpProbeResult.ACK:
            probe.tcp_acked = True
        elif result is TcpProbeResult.REFUSED:
            # Proof the process is gone: no need to wait out the interval, and
            # no reason to blame our own health.
            self.membership.stats["probe_refused"] += 1
            self.probe = None
            self._suspect_refused(probe, now)

    # --- datagrams ---

    def on_ping(self, src: Address, msg: Ping) -> None:
        if msg.target != self.config.name:
            # Meant for whoever had this address before us.
            self.membership.stats["ping_misdirected"] += 1
            return
        self._send(src, [Ack(msg.seq)])

    def on_ack(self, msg: Ack) -> None:
        probe = self.probe
        if probe is not None and probe.seq == msg.seq:
            if not probe.acked:
                probe.acked = True
                if probe.indirect_sent:
                    self.membership.stats["probe_indirect_ack"] += 1
                else:
                    self.membership.stats["probe_ack"] += 1
                    self.membership.awareness.apply_delta(-1)
                self.probe = None
            return
        relay = self.relays.pop(msg.seq, None)
        if relay is not None:
            self._send(relay.requester, [Ack(relay.seq)])

    def on_nack(self, msg: Nack) -> None:
        probe = self.probe
        if probe is not None and probe.seq == msg.seq:
            probe.nacks += 1

    def on_ping_req(self, src: Address, msg: PingReq, now: float) -> None:
        if len(self.relays) >= self.config.max_pending_probes:
            self.membership.stats["ping_req_dropped"] += 1
            return
        seq = self._next_seq()
        # Nack before the requester's own probe ends: it sent this request
        # probe_timeout into a probe_interval, so a nack sent a full
        # probe_timeout after receipt lands after its deadline and is counted
        # as missing (raising its health score for nothing).
        deadline = now + self.config.probe_timeout * self.config.nack_timeout_fraction
        self.relays[seq] = Relay(src, msg.seq, msg.nack, deadline)
        self._send(msg.target_addr, [Ping(seq, msg.target, self.config.name)])

    # --- the cycle ---

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & _SEQ_MASK
        return self._seq

    def _start_probe(self, now: float) -> None:
        m = self.membership
        cfg = self.config
        scale = m.awareness.score + 1
        self.next_probe_at = now + cfg.probe_interval * scale
        target = m.next_probe_target()
        if target is None:
            return
        if scale > 1:
            m.stats["probes_degraded"] += 1
        seq = self._next_seq()
        probe = Probe(
            seq,
            target,
            timeout_at=now + cfg.probe_timeout * scale,
            end_at=now + cfg.probe_interval * scale,
        )
        self.probe = probe
        msgs: list[Message] = [Ping(seq, target.name, cfg.name)]
        if target.status is MemberStatus.SUSPECT:
            msgs.append(Suspect(target.incarnation, target.name, cfg.name))
        self._send(target.addr, msgs)

    def _indirect_probe(self, probe: Probe, now: float) -> None:
        probe.indirect_sent = True
        cfg = self.config
        helpers = self.membership.random_members(
            cfg.indirect_checks, exclude=(cfg.name, probe.target), now=now
        )
        for helper in helpers:
            probe.expected_nacks += 1
            req = PingReq(probe.seq, probe.target, probe.addr, cfg.name, True)
            self._send(helper.addr, [req])
        if cfg.tcp_fallback_probe:
            self._emit(ProbeTcp(probe.seq, probe.target, probe.addr, probe.end_at))

    def _finish_probe(self, probe: Probe, now: float) -> None:
        self.probe = None
        m = self.membership
        if probe.acked:
            return
        if probe.tcp_acked:
            # memberlist warns here: UDP is broken but the member is alive.
            m.stats["probe_tcp_ack"] += 1
            return
        # memberlist probeNode: with nack-capable helpers, only the nacks that
        # did not come count against us (they prove the helpers could not
        # reach the target either); without helpers, any failure does.
        delta = probe.expected_nacks - probe.nacks if probe.expected_nacks else 1
        m.awareness.apply_delta(delta)
        m.stats["probe_failed"] += 1
        target = m.get(probe.target)
        if target is None or target.addr != probe.addr:
            return
        m.on_suspect(Suspect(target.incarnation, target.name, self.config.name), now)

    def _suspect_refused(self, probe: Probe, now: float) -> None:
        m = self.membership
        target = m.get(probe.target)
        if target is None or target.addr != probe.addr:
            return
        suspicion = m.on_suspect(
            Suspect(target.incarnation, target.name, self.config.name), now
        )
        if suspicion is not None:
            short = self.config.refused_suspicion_mult * self.config.probe_interval
            suspicion.deadline = min(suspicion.deadline, now + short)

    def _expire_relays(self, now: float) -> None:
        expired = [s for s, r in self.relays.items() if r.deadline <= now]
        for seq in expired:
            relay = self.relays.pop(seq)
            if relay.nack:
                self._send(relay.requester, [Nack(relay.seq)])

"""Outputs of the core: what the shell (or the simulator) must do next.

The core never performs I/O. Each input returns a list of these; the caller executes
them in order. Results of asynchronous effects (an exchange over TCP, a TCP probe)
come back as new inputs carrying the effect's ``token`` or ``seq``.
"""

from __future__ import annotations

import enum

import attrs

from ..messages import Address, MemberStatus, Message, PushPull
from .antientropy import Reconcile
from .sync import Batch

__all__ = [
    "Effect",
    "EventKind",
    "Exchange",
    "ExchangePurpose",
    "MemberEvent",
    "MemberView",
    "ProbeTcp",
    "Push",
    "Reconcile",
    "ResolveSeeds",
    "Send",
    "TcpProbeResult",
]


@attrs.frozen
class Send:
    """Send one UDP datagram to ``addr`` holding ``messages`` (compound if > 1).

    The core already packed it within ``udp_buffer_size``.
    """

    addr: Address
    messages: tuple[Message, ...]


class ExchangePurpose(enum.Enum):
    """Why a member-table exchange is made; only changes logs and metrics."""

    JOIN = "join"
    SYNC = "sync"
    RECONNECT = "reconnect"


@attrs.frozen
class Exchange:
    """Do a full member-table exchange over TCP (HTTP POST on the mesh port).

    ``target`` is an address, or for a join a seed string (``HOST:PORT`` where
    HOST may be a DNS name to resolve to all its addresses). The shell answers
    with ``NodeCore.exchange_done(token, replies, now)``; ``replies`` empty means
    nobody answered within ``tcp_timeout``.
    """

    token: int
    target: Address | str
    request: PushPull
    purpose: ExchangePurpose


class TcpProbeResult(enum.Enum):
    """Outcome of a TCP fallback probe."""

    #: the member answered the ping over TCP: it is alive, UDP is what failed
    ACK = "ack"
    #: connection refused: the host is up but nothing listens (process crashed)
    REFUSED = "refused"
    #: timeout, reset or any other error: no information
    FAILED = "failed"


@attrs.frozen
class ProbeTcp:
    """Ping ``target`` at ``addr`` over TCP (memberlist's TCP fallback ping),
    giving up at ``deadline``; report with ``NodeCore.tcp_probe_done(seq, ...)``."""

    seq: int
    target: str
    addr: Address
    deadline: float


@attrs.frozen
class MemberView:
    """A read-only snapshot of one member for events, the API and tests."""

    name: str
    addr: Address
    status: MemberStatus
    incarnation: int
    tags: dict[str, str]


class EventKind(enum.Enum):
    """State changes worth telling the operator about (logged at info)."""

    JOIN = "join"  # a member we did not know, alive
    UPDATE = "update"  # address or tags changed
    SUSPECT = "suspect"
    ALIVE = "alive"  # back to alive from suspect/dead/left (refuted or rejoined)
    DEAD = "dead"
    LEFT = "left"
    REAP = "reap"  # forgotten after reconnect/tombstone timeout
    REFUTE = "refute"  # we refuted an accusation against ourselves
    JOINED = "joined"  # we reached a seed for the first time


@attrs.frozen
class MemberEvent:
    """Tell the shell a member changed state (logs, metrics, watchers)."""

    kind: EventKind
    member: MemberView


@attrs.frozen
class Push:
    """Send ``batch`` of route deltas to its peer (HTTP POST on the mesh port),
    retrying transient failures per the core's RetryPolicy until
    ``batch.deadline``; report with ``NodeCore.push_done(batch.peer, batch.id,
    ok, reason, now)``."""

    batch: Batch


@attrs.frozen
class ResolveSeeds:
    """Resolve these seeds (``HOST:PORT`` with a DNS name) and report every
    address with ``NodeCore.seeds_resolved(addrs, now)`` (an empty list when
    none resolves). Asked once a ``reconnect_interval``: the core compares
    them with its live members, which it cannot do with names."""

    seeds: tuple[str, ...]


Effect = Send | Exchange | ProbeTcp | MemberEvent | Push | Reconcile | ResolveSeeds

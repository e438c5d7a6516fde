"""Wire messages: plain frozen values, independent of the byte layout.

The codec (:mod:`mesh.codec`) is the only module that knows how these become bytes;
the core only ever sees these objects. ``MessageType`` values are append-only: a
number, once released, is never reused or renumbered, so an old node can skip a type
it does not know instead of misreading it.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Mapping

import attrs

__all__ = [
    "Ack",
    "Address",
    "Alive",
    "Dead",
    "MemberState",
    "MemberStatus",
    "Message",
    "MessageType",
    "Nack",
    "Ping",
    "PingReq",
    "PushPull",
    "Suspect",
    "format_address",
    "is_ip_literal",
]

#: (host, port) of a member's mesh port; host is a literal IP address string.
Address = tuple[str, int]


def format_address(addr: Address) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=4096)
def is_ip_literal(host: str) -> bool:
    """True for an IPv4/IPv6 literal; cached, it is asked per datagram sent."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class MemberStatus(enum.Enum):
    """A member's state as one node sees it; values are the contract's strings."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


class MessageType(enum.IntEnum):
    """Type tags on the wire. Append-only: never renumber, never reuse."""

    PING = 1
    PING_REQ = 2
    ACK = 3
    NACK = 4
    ALIVE = 5
    SUSPECT = 6
    DEAD = 7
    PUSH_PULL = 8


@attrs.frozen
class Ping:
    """Direct probe. ``target`` is the name we think lives at the address, so a
    restarted process that took over the address under another name does not ack
    for the old one (memberlist ``ping.Node``)."""

    seq: int
    target: str
    source: str


@attrs.frozen
class PingReq:
    """Ask the receiver to probe ``target`` at ``target_addr`` on our behalf
    (SWIM indirect probe). With ``nack`` the receiver answers Nack when its own
    probe times out, so the requester can tell a dead target from its own bad
    network (Lifeguard)."""

    seq: int
    target: str
    target_addr: Address
    source: str
    nack: bool = True


@attrs.frozen
class Ack:
    """Answer to a Ping, or forwarded by an intermediary for a PingReq."""

    seq: int


@attrs.frozen
class Nack:
    """An intermediary's own probe of the target timed out (Lifeguard)."""

    seq: int


@attrs.frozen
class Alive:
    """``name`` is alive at ``incarnation`` with this address and these tags."""

    incarnation: int
    name: str
    addr: Address
    tags: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Suspect:
    """``sender`` suspects ``name`` at ``incarnation``."""

    incarnation: int
    name: str
    sender: str


@attrs.frozen
class Dead:
    """``sender`` declares ``name`` dead at ``incarnation``. When ``sender == name``
    the member is leaving gracefully and becomes ``left`` (memberlist's rule)."""

    incarnation: int
    name: str
    sender: str


@attrs.frozen
class MemberState:
    """One row of a full member-table exchange."""

    name: str
    addr: Address
    incarnation: int
    status: MemberStatus
    tags: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class PushPull:
    """A member-table exchange over TCP (request and reply have the same shape).

    ``join`` marks the first exchange of a joining node.
    """

    join: bool
    members: tuple[MemberState, ...]
    #: name of the node that sent it (counts as the accuser for dead/suspect rows)
    sender: str = ""
    #: the sender's member-table digest (see ``membership.table_digest``)
    digest: int = 0
    #: rows omitted: compare ``digest`` first, send the table only if it differs
    summary: bool = False


#: Everything that travels in a UDP datagram.
Message = Ping | PingReq | Ack | Nack | Alive | Suspect | Dead

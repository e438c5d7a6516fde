"""Every number a user can tune, in one frozen attrs record, with the profiles.

``Config.lan()`` and ``Config.wan()`` carry memberlist's ``DefaultLANConfig`` and
``DefaultWANConfig`` numbers (config.go); ``Config.local()`` is for one machine and
tests (sub-second probing, detection of a crash in about a second). Derived values
(suspicion timeouts, retransmit limit, push-pull scaling) are computed by the core
from these fields with the formulas quoted on each field; nothing else in mesh holds
a tunable constant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import ConfigError
from .messages import Address

__all__ = ["PROFILES", "Config", "parse_address"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_TAG_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def parse_address(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6).

    Raises:
        ConfigError: not of that form, or the port is out of range.
    """
    text = text.strip()
    host: str
    port_text: str
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ConfigError(f"address {text!r}: missing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest == "" and default_port is not None:
            port_text = str(default_port)
        else:
            raise ConfigError(f"address {text!r} must be HOST:PORT")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" not in text and default_port is not None:
        host, port_text = text, str(default_port)
    else:
        raise ConfigError(f"address {text!r} must be HOST:PORT")
    if not host:
        raise ConfigError(f"address {text!r} has an empty host")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"address {text!r}: port must be an integer") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"address {text!r}: port must be in 0..65535, got {port}")
    return host, port


def _positive(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
        raise ConfigError(f"{attr.name} must be > 0, got {value!r}")


def _non_negative(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int | float) and value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{attr.name} must be >= 0, got {value!r}")


def _at_least_one(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ConfigError(f"{attr.name} must be an integer >= 1, got {value!r}")


def _address(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and 0 <= value[1] <= 65535
    ):
        raise ConfigError(f"{attr.name} must be (host, port), got {value!r}")


def _tags_converter(value: Mapping[str, str] | None) -> dict[str, str]:
    return dict(value or {})


@attrs.frozen(kw_only=True)
class Config:
    """Configuration of one mesh node.

    Durations are float seconds. Formulas use ``n``, the number of live members
    this node knows, itself included.
    """

    # --- identity and addresses (contract: `mesh agent` flags) ---
    #: unique name in the mesh; default: the hostname (chosen by the CLI)
    name: str = "mesh"
    #: the mesh port: UDP for SWIM, TCP (same number) for HTTP peer sync
    bind: Address = attrs.field(default=("0.0.0.0", 7946), validator=_address)
    #: the address peers should use; None: derived from ``bind`` by the shell
    advertise: Address | None = None
    #: the client API address
    http: Address = attrs.field(default=("127.0.0.1", 8946), validator=_address)
    #: seed addresses, ``HOST:PORT`` or a DNS name resolving to many records
    join: tuple[str, ...] = ()
    #: the preset this config came from (informational)
    profile: str = "lan"
    #: member metadata gossiped to all peers (Serf tags)
    tags: dict[str, str] = attrs.field(factory=dict, converter=_tags_converter)
    #: log lines as ``text`` (key=value) or ``json`` (one object per line)
    log_format: str = "text"
    #: debug, info, warning or error; per-packet detail is at debug
    log_level: str = "info"

    # --- SWIM probing (memberlist config.go names in comments) ---
    #: ProbeInterval: one probe round per interval, scaled by Lifeguard health:
    #: effective interval = probe_interval * (health_score + 1)
    probe_interval: float = attrs.field(default=1.0, validator=_positive)
    #: ProbeTimeout: wait probe_timeout * (health_score + 1) for a direct ack
    #: before indirect probes (Lifeguard LHA-Probe scales it with the interval;
    #: memberlist leaves it unscaled)
    probe_timeout: float = attrs.field(default=0.5, validator=_positive)
    #: IndirectChecks: members asked to ping-req a target that missed its ack
    indirect_checks: int = attrs.field(default=3, validator=_non_negative)
    #: a member relaying a ping-req nacks after probe_timeout *
    #: nack_timeout_fraction without an ack, so the nack reaches the requester
    #: before its probe interval ends (memberlist waits a full probe_timeout,
    #: which lands at the requester's deadline and is lost to the race)
    nack_timeout_fraction: float = attrs.field(default=0.8, validator=_positive)
    #: TCP fallback probe (HTTP ping on the mesh port) run beside the indirect
    #: probes; a refused connection means the process is gone (see below)
    tcp_fallback_probe: bool = True
    #: when the TCP fallback is *refused* (the host answers, nothing listens on the
    #: port: the process crashed), the suspicion timeout is
    #: ``refused_suspicion_mult * probe_interval`` instead of Lifeguard's
    #: max..min range; the member can still refute within it
    refused_suspicion_mult: float = attrs.field(default=0.5, validator=_positive)

    # --- suspicion (Lifeguard, memberlist suspicion.go / util.go) ---
    #: SuspicionMult: min timeout = suspicion_mult * max(1, log10(n)) * probe_interval
    suspicion_mult: int = attrs.field(default=4, validator=_at_least_one)
    #: SuspicionMaxTimeoutMult: max timeout = suspicion_max_timeout_mult * min; the
    #: timer starts at max and falls towards min as k = suspicion_mult - 2
    #: independent confirmations arrive (k = 0 when n - 2 < k)
    suspicion_max_timeout_mult: int = attrs.field(default=6, validator=_at_least_one)
    #: AwarenessMaxMultiplier: health score in [0, awareness_max_multiplier - 1]
    awareness_max_multiplier: int = attrs.field(default=8, validator=_at_least_one)

    # --- dissemination ---
    #: RetransmitMult: each broadcast is sent
    #: retransmit_mult * ceil(log10(n + 1)) times
    retransmit_mult: int = attrs.field(default=4, validator=_at_least_one)
    #: GossipInterval: broadcasts are gossiped to gossip_nodes members this often
    #: (only when the queue is not empty) and piggybacked on every probe packet
    gossip_interval: float = attrs.field(default=0.2, validator=_positive)
    #: GossipNodes: random members per gossip round
    gossip_nodes: int = attrs.field(default=3, validator=_at_least_one)
    #: GossipToTheDeadTime: dead members still get gossip this long after death,
    #: so a wrongly declared member hears of it and refutes
    gossip_to_the_dead_time: float = attrs.field(default=30.0, validator=_non_negative)
    #: UDPBufferSize: payload budget of one datagram, compound packing included
    udp_buffer_size: int = attrs.field(default=1400, validator=_at_least_one)
    #: bound of the broadcast queue; beyond it the most-transmitted entries are
    #: dropped (memberlist's queue is unbounded)
    broadcast_queue_max: int = attrs.field(default=4096, validator=_at_least_one)

    # --- member-table exchange, join, reconnect ---
    #: PushPullInterval: full exchange with one random live member; scaled as
    #: push_pull_interval * (ceil(log2(n) - log2(32)) + 1) when n > 32
    push_pull_interval: float = attrs.field(default=30.0, validator=_positive)
    #: TCPTimeout: deadline of one TCP exchange (push-pull, join, TCP probe)
    tcp_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: join retry backoff: attempt i waits min(max, min * 2**i) * U(0.5, 1)
    join_backoff_min: float = attrs.field(default=1.0, validator=_positive)
    join_backoff_max: float = attrs.field(default=30.0, validator=_positive)
    #: Serf's ReconnectInterval: push-pull with one random dead member this often,
    #: so the two sides of a healed partition merge without an operator
    reconnect_interval: float = attrs.field(default=30.0, validator=_positive)
    #: Serf's ReconnectTimeout: dead members are forgotten after this long
    reconnect_timeout: float = attrs.field(default=86400.0, validator=_positive)
    #: Serf's TombstoneTimeout: left members are forgotten after this long
    tombstone_timeout: float = attrs.field(default=86400.0, validator=_positive)

    # --- routes (issue: replicated route table) ---
    #: remote HLC timestamps more than this far ahead of our wall clock are not
    #: adopted by our clock (the write itself is still stored)
    hlc_max_skew: float = attrs.field(default=60.0, validator=_positive)
    #: routes (tombstones included) a node stores; writes of new keys beyond it
    #: answer 507 and remote ones are dropped and counted
    max_routes: int = attrs.field(default=1_000_000, validator=_at_least_one)
    #: longest ``?sync=all&timeout=S`` a client may ask for
    sync_timeout_max: float = attrs.field(default=30.0, validator=_positive)

    # --- route push to peers ---
    #: pending (coalesced) keys per peer; overflow drops them all and marks the
    #: peer for anti-entropy repair
    push_queue_max: int = attrs.field(default=10_000, validator=_at_least_one)
    #: deltas in one push request, and their encoded size at most
    push_batch_max: int = attrs.field(default=1000, validator=_at_least_one)
    push_batch_max_bytes: int = attrs.field(
        default=4 * 1024 * 1024, validator=_at_least_one
    )
    #: a peer gets at most one batch per push_min_interval: a write after a
    #: quiet spell is pushed at once, a stream of writes is gathered, so the
    #: request rate (HTTP costs ~1 ms of CPU per request) stays bounded
    push_min_interval: float = attrs.field(default=0.02, validator=_non_negative)
    #: peers pushed to at once (trio.CapacityLimiter over the fan-out)
    push_concurrency: int = attrs.field(default=32, validator=_at_least_one)
    #: deadline of one push request (connect + send + answer)
    push_request_timeout: float = attrs.field(default=1.0, validator=_positive)
    #: deadline of one batch to one peer, retries included
    push_deadline: float = attrs.field(default=3.0, validator=_positive)
    #: retry backoff: delay i = min(push_backoff_max, push_backoff_base * 2**i)
    #: * U(0.5, 1), at most push_max_retries, total sleep <= push_retry_budget
    #: (< push_request_timeout)
    push_backoff_base: float = attrs.field(default=0.05, validator=_positive)
    push_backoff_max: float = attrs.field(default=0.4, validator=_positive)
    push_max_retries: int = attrs.field(default=4, validator=_non_negative)
    push_retry_budget: float = attrs.field(default=0.75, validator=_non_negative)
    #: pooled keep-alive connections to peers (httpx.Limits)
    push_pool_connections: int = attrs.field(default=256, validator=_at_least_one)
    push_keepalive_expiry: float = attrs.field(default=60.0, validator=_positive)

    # --- bounds against hostile or runaway input ---
    #: members a node keeps; alive messages for new members beyond it are dropped
    max_members: int = attrs.field(default=10_000, validator=_at_least_one)
    #: encoded size of this node's tag set (memberlist MetaMaxSize is 512)
    max_tags_bytes: int = attrs.field(default=512, validator=_at_least_one)
    #: outstanding indirect probes we run for others
    max_pending_probes: int = attrs.field(default=1024, validator=_at_least_one)
    #: messages in one compound datagram
    max_compound_messages: int = attrs.field(default=128, validator=_at_least_one)

    def __attrs_post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"name must match {_NAME_RE.pattern} (1..128 characters), "
                f"got {self.name!r}"
            )
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError(
                f"probe_timeout must be < probe_interval, got {self.probe_timeout!r}"
                f" >= {self.probe_interval!r}"
            )
        if self.join_backoff_min > self.join_backoff_max:
            raise ConfigError("join_backoff_min must be <= join_backoff_max")
        if self.udp_buffer_size < 512 or self.udp_buffer_size > 65_000:
            raise ConfigError(
                f"udp_buffer_size must be in 512..65000, got {self.udp_buffer_size}"
            )
        if self.push_retry_budget >= self.push_request_timeout:
            raise ConfigError(
                "push_retry_budget must be < push_request_timeout, got "
                f"{self.push_retry_budget!r} >= {self.push_request_timeout!r}"
            )
        if self.push_deadline < self.push_request_timeout:
            raise ConfigError(
                "push_deadline must be >= push_request_timeout, got "
                f"{self.push_deadline!r} < {self.push_request_timeout!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(
                f"log_format must be text or json, got {self.log_format!r}"
            )
        for key, value in self.tags.items():
            if not _TAG_KEY_RE.fullmatch(str(key)):
                raise ConfigError(f"tag key must match {_TAG_KEY_RE.pattern}: {key!r}")
            if not isinstance(value, str):  # type: ignore[redundant-expr,unused-ignore]
                raise ConfigError(f"tag {key!r}: value must be a string")
        size = tags_size(self.tags)
        if size > self.max_tags_bytes:
            raise ConfigError(
                f"tags encode to {size} bytes, over max_tags_bytes="
                f"{self.max_tags_bytes}; gossip carries them in every alive "
                "message, so keep them small"
            )

    # --- profiles ---
    @classmethod
    def lan(cls, **overrides: Any) -> Config:
        """memberlist DefaultLANConfig."""
        return cls(**{"profile": "lan", **overrides})

    @classmethod
    def wan(cls, **overrides: Any) -> Config:
        """memberlist DefaultWANConfig."""
        values: dict[str, Any] = {
            "profile": "wan",
            "tcp_timeout": 30.0,
            "suspicion_mult": 6,
            "push_pull_interval": 60.0,
            "probe_timeout": 3.0,
            "probe_interval": 5.0,
            "gossip_nodes": 4,
            "gossip_interval": 0.5,
            "gossip_to_the_dead_time": 60.0,
            "push_request_timeout": 5.0,
            "push_deadline": 15.0,
            "push_retry_budget": 4.0,
            "push_backoff_base": 0.2,
            "push_backoff_max": 2.0,
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def local(cls, **overrides: Any) -> Config:
        """One machine and tests: sub-second probing.

        Chosen so that in a 5-node loopback mesh a crashed member is dead
        everywhere in about a second and a 0.5 s pause is never declared dead:
        min suspicion = 5 * 1 * 0.2 = 1.0 s > pause + probe + refute gossip.
        """
        values: dict[str, Any] = {
            "profile": "local",
            "probe_interval": 0.2,
            "probe_timeout": 0.1,
            "indirect_checks": 2,
            "suspicion_mult": 5,
            "retransmit_mult": 3,
            "gossip_interval": 0.05,
            "gossip_to_the_dead_time": 15.0,
            "push_pull_interval": 5.0,
            "tcp_timeout": 1.0,
            "join_backoff_min": 0.2,
            "join_backoff_max": 2.0,
            "reconnect_interval": 2.0,
            "refused_suspicion_mult": 2.0,
            "push_request_timeout": 0.5,
            "push_deadline": 1.5,
            "push_retry_budget": 0.35,
            "push_backoff_base": 0.02,
            "push_backoff_max": 0.2,
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def for_profile(cls, profile: str, **overrides: Any) -> Config:
        """Build the named preset with overrides applied on top."""
        try:
            factory = PROFILES[profile]
        except KeyError:
            raise ConfigError(
                f"profile must be one of {', '.join(PROFILES)}, got {profile!r}"
            ) from None
        return factory(**overrides)


def tags_size(tags: Mapping[str, str]) -> int:
    """Encoded size of a tag map, as the codec writes it (msgpack map)."""
    from .codec import encoded_tags_size

    return encoded_tags_size(tags)


PROFILES = {"lan": Config.lan, "local": Config.local, "wan": Config.wan}

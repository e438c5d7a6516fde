"""Every number a user can tune, in one frozen attrs record, with the profiles.

``Config.lan()`` and ``Config.wan()`` carry memberlist's ``DefaultLANConfig`` and
``DefaultWANConfig`` numbers (config.go); ``Config.local()`` is for one machine and
tests (sub-second probing, detection of a crash in about a second). Derived values
(suspicion timeouts, retransmit limit, push-pull scaling) are computed by the core
from these fields with the formulas quoted on each field; nothing else in mesh holds
a tunable constant.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .errors import ConfigError
from .messages import Address, format_address

__all__ = ["PROFILES", "Config", "parse_address", "parse_pairs"]

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


def parse_pairs(items: Sequence[Any], source: str) -> dict[str, str]:
    """``KEY=VALUE`` items (``--tag``, ``--meta``) as a dict.

    Raises:
        ConfigError: an item without ``=`` or with an empty KEY (``=v`` is
            a slip, not a name), naming ``source``.
    """
    pairs: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"{source} must be KEY=VALUE, got {item!r}")
        key, _, value = item.partition("=")
        if not key.strip():
            raise ConfigError(f"{source} must be KEY=VALUE with a KEY, got {item!r}")
        pairs[key.strip()] = value
    return pairs


#: anti-entropy bodies are refused past 16 MiB (codec_ae.MAX_AE_BODY); the
#: byte budget estimates sizes from above, so it may come close
_AE_MAX_BYTES = 12 * 1024 * 1024


def _positive(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
        raise ConfigError(f"{attr.name} must be > 0, got {value!r}")


def _log_choice(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """``log_format`` and ``log_level`` checked when the config is built, as
    the CLI checks them: an embedding caller's bad level was refused only
    inside ``open_node``, and only when mesh configured logging itself
    (audit, session 14)."""
    from .logs import check_log_setting  # (structlog: only when checked)

    check_log_setting(attr.name, value)


def _non_negative(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int | float) and value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{attr.name} must be >= 0, got {value!r}")


def _at_least_one(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ConfigError(f"{attr.name} must be an integer >= 1, got {value!r}")


def _fraction(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int | float) and 0 < value < 1):
        raise ConfigError(f"{attr.name} must be > 0 and < 1, got {value!r}")


#: the smallest request head limit accepted: below it the server answers
#: every request 431, /v1/health and /metrics included (audit 11); nginx's
#: and Apache's header buffers are 8 KiB
_MIN_HEADER_BYTES = 4096


def _header_bytes(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, int) and value >= _MIN_HEADER_BYTES):
        raise ConfigError(
            f"{attr.name} must be an integer >= {_MIN_HEADER_BYTES}, got {value!r}"
        )


def _address(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and 0 <= value[1] <= 65535
    ):
        raise ConfigError(f"{attr.name} must be (host, port), got {value!r}")


def _seeds(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """Every seed is ``HOST:PORT`` with a port a peer can listen on. Only the
    syntax: a well-formed name that does not resolve yet is retried (the
    contract's "keeps retrying the seeds"), a malformed one never could be."""
    if not isinstance(value, tuple) or not all(isinstance(s, str) for s in value):
        raise ConfigError(f"{attr.name} must be a list of HOST:PORT, got {value!r}")
    for seed in value:
        try:
            _host, port = parse_address(seed)
        except ConfigError as exc:
            raise ConfigError(f"{attr.name}: {exc}") from None
        if port == 0:
            raise ConfigError(f"{attr.name}: seed {seed!r} needs a port in 1..65535")


def _advertise(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """An IP address peers can send to: a hostname would be resolved on
    every datagram (the UDP path refuses to, ``send_bad_address``), and the
    wildcard reaches nobody. Unset: derived from ``bind`` by the shell."""
    if value is None:
        return
    _address(_inst, attr, value)
    host = value[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"{attr.name} must be an IP address (peers send to it as given), "
            f"got host {host!r}"
        ) from None
    if ip.is_unspecified:
        raise ConfigError(
            f"{attr.name} must be an IP address peers can reach, not the "
            f"wildcard {host!r}"
        )


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
    advertise: Address | None = attrs.field(default=None, validator=_advertise)
    #: the client API address
    http: Address = attrs.field(default=("127.0.0.1", 8946), validator=_address)
    #: seed addresses, ``HOST:PORT`` (HOST an IP or a DNS name; a name joins
    #: every address it resolves to); a malformed one is a start-up error
    join: tuple[str, ...] = attrs.field(default=(), validator=_seeds)
    #: the preset this config came from (informational)
    profile: str = "lan"
    #: member metadata gossiped to all peers (Serf tags)
    tags: dict[str, str] = attrs.field(factory=dict, converter=_tags_converter)
    #: log lines as ``text`` (key=value) or ``json`` (one object per line)
    log_format: str = attrs.field(default="text", validator=_log_choice)
    #: debug, info, warning or error; per-packet detail is at debug
    log_level: str = attrs.field(default="info", validator=_log_choice)

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
    #: which lands at the requester's deadline and is lost to the race);
    #: above 0 and below 1
    nack_timeout_fraction: float = attrs.field(default=0.8, validator=_fraction)
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
    #: so the two sides of a healed partition merge without an operator, and
    #: with one seed address none of our live members is at (DNS seeds are
    #: resolved again for it)
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
    #: answer 507 and remote ones are refused and counted, then taken by
    #: anti-entropy once there is room (never treated as deleted)
    max_routes: int = attrs.field(default=1_000_000, validator=_at_least_one)
    #: longest ``?sync=all&timeout=S`` a client may ask for
    sync_timeout_max: float = attrs.field(default=30.0, validator=_positive)

    # --- route watchers (blocking queries and streams, docs/contract.md) ---
    #: blocking queries and streams open at once; past it a client gets 429
    watch_max_clients: int = attrs.field(default=64, validator=_at_least_one)
    #: longest ``?wait=`` of a blocking query (Consul caps its at 10 min); also
    #: the wait when a query gives ``index`` alone
    watch_wait_max: float = attrs.field(default=300.0, validator=_positive)
    #: route changes remembered for streams; a stream further behind is sent a
    #: fresh snapshot instead (resync), so no watcher buffers without bound.
    #: Memory: the log keeps the versions of rewritten keys alive, up to this
    #: many routes (~0.3 KiB each when small, ~18 KiB at the contract's limits:
    #: up to ~72 MiB at the default if large routes are rewritten often)
    watch_log_max: int = attrs.field(default=4096, validator=_at_least_one)
    #: a stream whose client accepts nothing for this long is dropped: a slow
    #: reader costs the node nothing but its socket
    watch_send_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: a stream sends a heartbeat line after this long without changes, so a
    #: client (or proxy) can tell a quiet table from a dead connection
    watch_heartbeat_interval: float = attrs.field(default=15.0, validator=_positive)

    # --- route push to peers ---
    #: pending (coalesced) keys per peer; overflow drops them all and marks the
    #: peer for anti-entropy repair
    push_queue_max: int = attrs.field(default=10_000, validator=_at_least_one)
    #: deltas in one push request, and their encoded size at most
    push_batch_max: int = attrs.field(default=1000, validator=_at_least_one)
    push_batch_max_bytes: int = attrs.field(
        default=4 * 1024 * 1024, validator=_at_least_one
    )
    #: a peer's push batches draw on a token bucket of push_burst tokens, one
    #: more every push_min_interval: a few writes after a quiet spell are
    #: pushed at once, a stream of writes is gathered into one batch per
    #: interval, so the request rate (HTTP costs CPU per request on both ends)
    #: stays bounded whatever the write rate; a sync=all write is pushed at
    #: once regardless
    push_min_interval: float = attrs.field(default=0.05, validator=_non_negative)
    #: batches a peer may get back to back before push_min_interval spacing
    #: applies (the token bucket's size)
    push_burst: int = attrs.field(default=4, validator=_at_least_one)
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

    # --- anti-entropy (docs/antientropy.md) ---
    #: every node reconciles its route table with one live member (peers
    #: marked needs-repair first) this often; constant in cluster size because
    #: an idle round costs one small round trip, so the mesh-wide cost is
    #: n rounds per interval whatever the table size
    antientropy_interval: float = attrs.field(default=5.0, validator=_positive)
    #: per request of a round (and per bootstrap chunk)
    antientropy_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: a node opens no round with a member (unless marked for repair) that
    #: pushed routes to it within this many seconds, nor with one it still
    #: pushes to: what is streaming in or out is a difference on its way, and
    #: a round would repair it twice and peel it in Python, stalling the loop
    antientropy_quiet: float = attrs.field(default=0.5, validator=_non_negative)
    #: rounds in a row a node may defer for streaming before it opens one
    #: anyway: bounds how long a difference nobody marked (a writer that died
    #: halfway through its pushes) waits under a steady write load
    antientropy_max_deferred: int = attrs.field(default=10, validator=_non_negative)
    #: coded symbols of the digest kept up to date; a difference of more than
    #: about antientropy_max_symbols / 1.7 entries falls back to a full
    #: transfer in chunks. Memory: 3 ints per symbol; a write costs ~2 ln(M)
    #: symbol updates
    antientropy_max_symbols: int = attrs.field(default=4096, validator=_at_least_one)
    #: symbols in the first reply to a differing summary (the reply adds
    #: 1.5 per entry of size difference); more are asked for, doubling
    antientropy_min_symbols: int = attrs.field(default=24, validator=_at_least_one)
    #: routes sent or asked for in one repair request; the rest waits a round
    antientropy_repair_max: int = attrs.field(default=2048, validator=_at_least_one)
    #: digest updates folded per timer tick (each a few µs): a burst of writes
    #: is folded in slices of this many while the loop keeps serving; a node
    #: with more pending answers rounds "busy" meanwhile
    antientropy_fold_batch: int = attrs.field(default=512, validator=_at_least_one)
    #: routes per chunk of a full transfer (join bootstrap, fallback)
    antientropy_chunk_routes: int = attrs.field(default=1000, validator=_at_least_one)
    #: a chunk or a repair holds routes up to about this many bytes (at least
    #: one route), whatever the counts above allow: 1,000 routes at the
    #: contract's limits are 18-70 MB, over what a peer accepts in one body
    #: (16 MiB); the rest follows in the next chunk or round
    antientropy_max_bytes: int = attrs.field(
        default=4 * 1024 * 1024, validator=_at_least_one
    )
    #: a tombstone is forgotten this long after its delete; an entry older than
    #: that for a key a caught-up node does not hold is refused (it may be a
    #: write whose delete was forgotten). Must exceed the longest partition or
    #: pause after which a member should still contribute writes it never
    #: managed to send (docs/antientropy.md)
    route_tombstone_ttl: float = attrs.field(default=86400.0, validator=_positive)

    # --- bounds against hostile or runaway input ---
    #: members a node keeps; alive messages for new members beyond it are dropped
    max_members: int = attrs.field(default=10_000, validator=_at_least_one)
    #: encoded size of this node's tag set (memberlist MetaMaxSize is 512)
    max_tags_bytes: int = attrs.field(default=512, validator=_at_least_one)
    #: outstanding indirect probes we run for others; it also bounds the
    #: agent's concurrent exchange and probe tasks and the peer client's pool
    max_pending_probes: int = attrs.field(default=1024, validator=_at_least_one)
    #: messages in one compound datagram
    max_compound_messages: int = attrs.field(default=128, validator=_at_least_one)
    #: HTTP connections each server (client API, mesh port) serves at once.
    #: When all are taken, the one idle longest (silent since its accept
    #: first, then between keep-alive requests) is closed to admit a new one,
    #: then one whose request body is still arriving http_header_timeout after
    #: it began; only with every one busy otherwise do new ones wait in the
    #: listen backlog
    http_max_connections: int = attrs.field(default=1000, validator=_at_least_one)
    #: request line plus headers, in bytes (431 past it); at least 4096
    http_max_header_bytes: int = attrs.field(default=16 * 1024, validator=_header_bytes)
    #: a client must send a request's head within this (slow clients
    #: dropped): a new connection its first head within this of being
    #: accepted (TLS handshake included; a silent one is closed then), a
    #: keep-alive one each later head within this of its first byte
    http_header_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: a keep-alive connection idle this long between requests is closed
    #: (both servers). Must exceed push_keepalive_expiry, how long peers keep
    #: an idle connection to us pooled: a peer reusing one we close at that
    #: moment sees its request fail. The 15 s margin of the default covers the
    #: round trip and a busy peer's loop
    http_keepalive_timeout: float = attrs.field(default=75.0, validator=_positive)
    #: longest wait for one request body chunk, or one write of the response
    http_io_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: a client API request's whole body must arrive within this, else 408
    #: and the connection closes (a body trickled a byte at a time would hold
    #: its connection for good; the peer port's bound is tcp_timeout)
    http_body_timeout: float = attrs.field(default=30.0, validator=_positive)

    # --- security (docs/security.md) ---
    #: gossip key: base64 of 16, 24 or 32 bytes. Set, every datagram and peer
    #: HTTP body is sealed with AES-GCM (sender name authenticated) and unsealed
    #: input is refused; None: plaintext, anyone reaching the mesh port can join
    encrypt: str | None = attrs.field(default=None, repr=False)
    #: most keys installed in the keyring at once (each is tried on every open)
    keyring_max: int = attrs.field(default=16, validator=_at_least_one)
    #: a sealed packet is accepted only if its sender timestamp is within
    #: replay_window of our wall clock and its nonce was not seen in that window
    replay_window: float = attrs.field(default=30.0, validator=_positive)
    #: nonces remembered for replay_window; when full, the oldest are evicted
    #: and everything older than them is refused (the window narrows)
    replay_cache_max: int = attrs.field(default=65_536, validator=_at_least_one)
    #: client API Bearer token (every path but /v1/health); None: no token
    api_token: str | None = attrs.field(default=None, repr=False)
    #: file holding the API token (first line), read at start-up
    api_token_file: str | None = None
    #: PEM certificate: TLS on the client API and the peer HTTP port
    tls_cert: str | None = None
    #: PEM private key of tls_cert
    tls_key: str | None = None
    #: PEM CA bundle: peers must present a certificate it signed (mutual TLS on
    #: the peer port) and we verify theirs
    tls_ca: str | None = None
    #: peer HTTP requests served at once (each waits for its whole body, and
    #: the body is authenticated before anything parses it)
    peer_http_concurrency: int = attrs.field(default=64, validator=_at_least_one)
    #: request body bytes the peer port holds at once over all requests
    #: (buffered before authentication); past it a request is refused with 503
    peer_http_buffer_max: int = attrs.field(
        default=64 * 1024 * 1024, validator=_at_least_one
    )
    #: datagrams read in one go before other tasks (timers, probes) get a turn
    udp_recv_batch: int = attrs.field(default=64, validator=_at_least_one)
    #: refused datagrams (bad, unauthenticated, replayed) one source address
    #: may send per second; past its budget its datagrams are dropped
    #: unread until its budget refills, so a flood cannot take the CPU that
    #: probing the other members needs
    udp_refused_rate: float = attrs.field(default=100.0, validator=_positive)
    #: refused datagrams one source may send at once (its bucket's size)
    udp_refused_burst: int = attrs.field(default=500, validator=_at_least_one)
    #: source addresses whose refused-datagram budget is tracked
    udp_throttle_sources: int = attrs.field(default=4096, validator=_at_least_one)
    #: SO_RCVBUF asked for the UDP socket, so a burst waits in the kernel
    #: instead of being dropped (Linux caps it at net.core.rmem_max)
    udp_recv_buffer: int = attrs.field(default=4 * 1024 * 1024, validator=_at_least_one)

    def __attrs_post_init__(self) -> None:
        name: object = self.name  # (callers without a type checker pass anything)
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
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
        if self.antientropy_max_bytes > _AE_MAX_BYTES:
            raise ConfigError(
                f"antientropy_max_bytes must be <= {_AE_MAX_BYTES} (what a peer "
                f"accepts in one body, with room), got {self.antientropy_max_bytes!r}"
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
        if self.http_keepalive_timeout <= self.push_keepalive_expiry:
            raise ConfigError(
                "http_keepalive_timeout must be > push_keepalive_expiry (peers "
                "would reuse connections we close), got "
                f"{self.http_keepalive_timeout!r} <= {self.push_keepalive_expiry!r}"
            )
        if _same_tcp_port(self.bind, self.http):
            raise ConfigError(
                f"http {format_address(self.http)} and bind "
                f"{format_address(self.bind)} are one TCP port: the mesh port "
                "serves peers over TCP too; give the client API another port"
            )
        _check_security(self)
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
            "antientropy_interval": 15.0,
            "antientropy_timeout": 10.0,
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
            "antientropy_interval": 1.0,
            "antientropy_timeout": 1.0,
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


_ANY_HOST = frozenset(("", "0.0.0.0", "::"))


def _same_tcp_port(bind: Address, http: Address) -> bool:
    """Both listen on one TCP port (the same number, not 0, on the same host
    or where one of them is every host). Names are not resolved here: the
    agent then fails to bind the second, naming it."""
    return bind[1] == http[1] != 0 and (
        bind[0] == http[0] or bind[0] in _ANY_HOST or http[0] in _ANY_HOST
    )


def _check_security(config: Config) -> None:
    """Eager checks of the security block: a bad key or a half TLS setup is
    a start-up error, not a surprise at the first packet."""
    from .security import KeyringError, decode_key

    if config.encrypt is not None:
        try:
            decode_key(config.encrypt)
        except KeyringError as exc:
            raise ConfigError(f"encrypt: {exc}") from None
    if config.api_token is not None and config.api_token_file is not None:
        raise ConfigError("api_token and api_token_file are exclusive; give one")
    if config.api_token is not None and not config.api_token.strip():
        raise ConfigError("api_token must not be empty")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("tls_cert and tls_key go together; give both or neither")
    if config.tls_ca is not None and config.tls_cert is None:
        raise ConfigError("tls_ca needs tls_cert and tls_key (mutual TLS)")


def tags_size(tags: Mapping[str, str]) -> int:
    """Encoded size of a tag map, as the codec writes it (msgpack map)."""
    from .codec import encoded_tags_size

    return encoded_tags_size(tags)


PROFILES = {"lan": Config.lan, "local": Config.local, "wan": Config.wan}

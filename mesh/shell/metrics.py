"""Per-agent Prometheus metrics.

Why a custom collector: the core already counts what it does
(``membership.stats``, the member table, the broadcast queue). Reading those at
scrape time keeps one source of truth, costs nothing between scrapes, and cannot
drift; only events the core never sees (dropped datagrams, API requests, I/O
errors) are counted here. The registry is per agent, so several agents in one
process (tests, embedding) do not collide.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ..core.effects import ExchangePurpose
from ..core.node import NodeCore
from ..core.sync import DROP_REASONS
from ..messages import MemberStatus

__all__ = ["CONTENT_TYPE", "PUSH_RESULTS", "Metrics"]

#: the Prometheus text exposition format
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: how a push batch can end: ``mesh_pushes_total{result}``
PUSH_RESULTS = ("ok", "failed", "deadline", "rejected")

# core stats key -> mesh_probes_total{result}
_PROBE_RESULTS = {
    "probe_ack": "ack",
    "probe_indirect_ack": "indirect_ack",
    "probe_tcp_ack": "tcp_ack",
    "probe_failed": "failed",
    "probe_refused": "refused",
}


# how an anti-entropy round can end: mesh_antientropy_rounds_total{outcome}
_AE_OUTCOMES = (
    "same",
    "repaired",
    "bootstrapped",
    "merged",
    "busy",
    "failed",
    "deferred",
)
# mesh_antientropy_served_total{kind} -> core stats key
_AE_SERVED = {
    "open": "served_AeOpen",
    "more": "served_AeMore",
    "repair": "served_AeRepair",
    "chunk": "served_AeChunk",
}


class _CoreCollector:
    """Reads the core's own counters and gauges at scrape time."""

    def __init__(self, core: NodeCore) -> None:
        self._core = core

    def collect(self) -> Iterable[Metric]:
        core = self._core
        m = core.membership
        stats = m.stats
        members = GaugeMetricFamily(
            "mesh_members", "Members in this node's table by status", labels=["status"]
        )
        for status in MemberStatus:
            members.add_metric([status.value], m.count(status))
        yield members
        probes = CounterMetricFamily(
            "mesh_probes", "Probe rounds by outcome", labels=["result"]
        )
        for key, result in _PROBE_RESULTS.items():
            probes.add_metric([result], stats[key])
        yield probes
        yield CounterMetricFamily(
            "mesh_suspicions", "Members this node began to suspect", stats["suspicions"]
        )
        yield CounterMetricFamily(
            "mesh_timer_stalls",
            "Times this node's timers were found more than probe_interval late, "
            "on any input (the process stopped, or starved of CPU): counted "
            "however the event loop was woken, unlike mesh_timer_lateness_seconds",
            stats["stalls"],
        )
        yield CounterMetricFamily(
            "mesh_refutations",
            "Accusations against this node it refuted",
            stats["refutations"],
        )
        conflicts = CounterMetricFamily(
            "mesh_name_conflicts",
            "Alives naming a member at another address than the live one we "
            "hold, by kind: refused (another process claims a member's name), "
            "ours (our own name, refuted)",
            labels=["kind"],
        )
        conflicts.add_metric(["refused"], stats["alive_conflicts"])
        conflicts.add_metric(["ours"], stats["name_conflicts"])
        yield conflicts
        yield CounterMetricFamily(
            "mesh_deaths_declared",
            "Members this node declared dead (its suspicion timer ran out)",
            stats["deaths_declared"],
        )
        yield CounterMetricFamily(
            "mesh_member_deaths",
            "Members that became dead in this node's view, however it learned",
            stats["deaths"],
        )
        exchanges = CounterMetricFamily(
            "mesh_exchanges",
            "Member-table exchanges made (by purpose, ok/failed) and served",
            labels=["purpose", "result"],
        )
        for purpose in ExchangePurpose:
            for result in ("ok", "failed"):
                key = f"exchange_{purpose.value}_{result}"
                exchanges.add_metric([purpose.value, result], stats[key])
        exchanges.add_metric(["served", "ok"], stats["exchange_served"])
        yield exchanges
        yield GaugeMetricFamily(
            "mesh_health_score",
            "Lifeguard local health score (0 is healthy)",
            core.health_score,
        )
        yield GaugeMetricFamily(
            "mesh_broadcast_queue_depth",
            "Gossip messages waiting to be sent",
            len(m.broadcasts),
        )
        yield CounterMetricFamily(
            "mesh_broadcasts_dropped",
            "Gossip messages dropped because the queue was full",
            m.broadcasts.dropped,
        )
        yield GaugeMetricFamily(
            "mesh_incarnation", "This node's incarnation number", core.incarnation
        )
        yield from self._collect_routes()
        yield from self._collect_antientropy()

    def _collect_antientropy(self) -> Iterable[Metric]:
        core = self._core
        stats = core.ae.stats
        rounds = CounterMetricFamily(
            "mesh_antientropy_rounds",
            "Anti-entropy rounds this node opened, by outcome (deferred: due "
            "but not opened, its digest still folding a burst of writes, or "
            "pushes to the peer it picked still on their way)",
            labels=["outcome"],
        )
        for outcome in _AE_OUTCOMES:
            rounds.add_metric([outcome], stats[f"rounds_{outcome}"])
        yield rounds
        served = CounterMetricFamily(
            "mesh_antientropy_served",
            "Anti-entropy requests answered for peers, by kind",
            labels=["kind"],
        )
        for kind, key in _AE_SERVED.items():
            served.add_metric([kind], stats[key])
        yield served
        routes = CounterMetricFamily(
            "mesh_antientropy_routes",
            "Routes moved by anti-entropy: repaired (applied here), sent "
            "(ours, to a peer), served (asked for by a peer), expired (refused: "
            "older than the tombstone horizon), dropped (forgotten on a peer's "
            "refusal), full (refused: the table holds max_routes)",
            labels=["kind"],
        )
        for kind in ("repaired", "sent", "served", "expired", "dropped", "full"):
            routes.add_metric([kind], stats[f"routes_{kind}"])
        yield routes
        symbols = CounterMetricFamily(
            "mesh_antientropy_symbols",
            "Digest symbols exchanged, by direction",
            labels=["direction"],
        )
        symbols.add_metric(["sent"], stats["symbols_sent"])
        symbols.add_metric(["received"], stats["symbols_received"])
        yield symbols
        yield CounterMetricFamily(
            "mesh_antientropy_fallbacks",
            "Rounds whose difference was too large to decode: full transfer",
            stats["fallbacks"],
        )
        yield CounterMetricFamily(
            "mesh_antientropy_stall_resyncs",
            "Stalls of this process longer than push_deadline (peers gave up "
            "pushing to it meanwhile): each made routes_caught_up false until "
            "a round reconciled the table",
            stats["stall_resyncs"],
        )
        yield CounterMetricFamily(
            "mesh_route_tombstones_collected",
            "Tombstones forgotten after route_tombstone_ttl",
            core.routes.collected,
        )
        sync = core.route_sync()
        yield GaugeMetricFamily(
            "mesh_routes_caught_up",
            "1 once the route table has caught up with the mesh (bootstrap done)",
            int(sync.caught_up),
        )
        yield GaugeMetricFamily(
            "mesh_routes_behind",
            "Entries this node knows it lacks (bootstrap: the source's size "
            "minus those received; after: the last round's difference; and "
            "entries refused because the table holds max_routes)",
            sync.behind,
        )

    def _collect_routes(self) -> Iterable[Metric]:
        core = self._core
        table = core.routes
        pushes = core.pushes
        routes = GaugeMetricFamily(
            "mesh_routes", "Routes in this node's table by state", labels=["state"]
        )
        routes.add_metric(["live"], len(table))
        routes.add_metric(["tombstone"], table.tombstones)
        yield routes
        yield GaugeMetricFamily(
            "mesh_push_queue_depth",
            "Route deltas waiting for a push, over all peers (coalesced by key)",
            pushes.depth(),
        )
        yield GaugeMetricFamily(
            "mesh_push_in_flight",
            "Push batches handed out and not yet finished (at most one per peer)",
            pushes.in_flight(),
        )
        yield CounterMetricFamily(
            "mesh_push_coalesced",
            "Queued deltas replaced by a newer write to the same key",
            pushes.stats["coalesced"],
        )
        dropped = CounterMetricFamily(
            "mesh_push_dropped",
            "Route deltas dropped for a peer (it is then repaired by anti-entropy)",
            labels=["reason"],
        )
        # Reasons are a small fixed set named by the core and the shell; each
        # is exported from the start (at 0), so the label shows on a fresh
        # agent and rate() has a baseline.
        stats = pushes.stats
        for reason in DROP_REASONS:
            dropped.add_metric([reason], stats[f"dropped_{reason}"])
        for key, count in sorted(stats.items()):
            reason = key.removeprefix("dropped_")
            if key.startswith("dropped_") and reason not in DROP_REASONS:
                dropped.add_metric([reason], count)
        yield dropped


class Metrics:
    """One agent's registry and the counters the shell owns."""

    def __init__(self, core: NodeCore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_CoreCollector(core))
        # process_open_fds, process_resident_memory_bytes, ...: the bounds
        # mesh promises (sockets, memory) show on /metrics, not only in /proc
        # (a socket leak was found by a soak reading /proc). Linux only; an
        # embedding program's numbers are its whole process's.
        ProcessCollector(registry=self.registry)
        self.dropped_packets = Counter(
            "mesh_dropped_packets",
            "Datagrams dropped (inbound: decode reason; outbound: send_*)",
            ["reason"],
            registry=self.registry,
        )
        self.exchange_errors = Counter(
            "mesh_exchange_errors",
            "Failed calls on the mesh port's HTTP, by side and reason: "
            "member-table exchanges (join, push-pull sync) and anti-entropy "
            "requests alike (client: our calls; server: requests we refused, "
            "bad bodies by decode reason, and not_found, bad_method, "
            "body_timeout, too_large)",
            ["side", "reason"],
            registry=self.registry,
        )
        self.tcp_probes = Counter(
            "mesh_tcp_probes",
            "TCP fallback probes by result",
            ["result"],
            registry=self.registry,
        )
        self.member_events = Counter(
            "mesh_member_events",
            "Member state changes seen by this node",
            ["kind"],
            registry=self.registry,
        )
        self.api_requests = Counter(
            "mesh_api_requests",
            "Client API requests by method, route and status code",
            ["method", "path", "code"],
            registry=self.registry,
        )
        self._api_children: dict[tuple[str, str, int], Counter] = {}
        self._write_children: dict[str, Counter] = {}
        self._latency_children: dict[tuple[str, str], Histogram] = {}

        self.pushes = Counter(
            "mesh_pushes",
            "Push batches finished, by result (ok, failed, deadline, rejected)",
            ["result"],
            registry=self.registry,
        )
        for result in PUSH_RESULTS:
            self.pushes.labels(result)
        self.push_retries = Counter(
            "mesh_push_retries",
            "Push attempts repeated after a transient failure",
            registry=self.registry,
        )
        self.push_batch_size = Histogram(
            "mesh_push_batch_size",
            "Route deltas per push batch",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
            registry=self.registry,
        )
        self.push_latency = Histogram(
            "mesh_push_latency_seconds",
            "From a batch handed out to its acknowledgement (delivered batches)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.timer_lateness = Histogram(
            "mesh_timer_lateness_seconds",
            "How late the protocol's timer fired (probes, gossip, pushes, "
            "anti-entropy), observed when the timer loop wakes at its own "
            "deadline: the event loop busy with other work, or the process "
            "not scheduled; a sustained tail means an overloaded node. Wakes "
            "that input brings first are not observed, so under heavy traffic "
            "it understates: see mesh_timer_stalls_total",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.route_writes = Counter(
            "mesh_route_writes",
            "Client writes and deletes, by outcome (applied, conflict, invalid: "
            "refused with 400, each batch item on its own, full, unavailable: "
            "refused with 503 before this member caught up, a batch once)",
            ["result"],
            registry=self.registry,
        )
        self.routes_received = Counter(
            "mesh_routes_received",
            "Route deltas pushed by peers, by outcome (applied, stale, "
            "duplicate, invalid, full, expired: older than the tombstone "
            "horizon for a key this member does not hold)",
            ["outcome"],
            registry=self.registry,
        )
        self.route_batches_refused = Counter(
            "mesh_route_batches_refused",
            "Pushed route batches refused whole (undecodable), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.antientropy_bytes = Counter(
            "mesh_antientropy_bytes",
            "Anti-entropy message bodies, by direction (sent, received) and "
            "role (initiator: our rounds; peer: answering others)",
            ["direction", "role"],
            registry=self.registry,
        )
        self.antientropy_refused = Counter(
            "mesh_antientropy_refused",
            "Anti-entropy bodies refused as undecodable or hostile, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.route_watchers = Gauge(
            "mesh_route_watchers",
            "Route blocking queries and streams open now",
            registry=self.registry,
        )
        self.route_watch_dropped = Counter(
            "mesh_route_watch_dropped",
            "Route watchers refused or cut short, by reason (too_many: 429; "
            "slow: a stream not reading, dropped; resync: a stream that fell "
            "off the change log, sent a snapshot)",
            ["reason"],
            registry=self.registry,
        )
        self.api_latency = Histogram(
            "mesh_api_request_duration_seconds",
            "Client API request handling time, by method and route (a blocking "
            "query's time includes its wait)",
            ["method", "path"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
            registry=self.registry,
        )

        self.http_dropped = Counter(
            "mesh_http_connections_dropped",
            "Connections a server (api, mesh) closed: evicted (idle, to admit "
            "a new one when all http_max_connections were taken), slow_body "
            "(a request body still arriving http_header_timeout after it began, "
            "closed for the same reason when none was idle), header_timeout "
            "(no request head within http_header_timeout), or "
            "after refusing a request no handler saw: bad_request (malformed "
            "head, 400), head_too_large (431), bad_version (505), bad_body "
            "(malformed body framing, 400)",
            ["server", "reason"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "mesh_auth_failures",
            "Input refused by authentication, by channel (udp, peer_http, "
            "peer_response, api) and reason (unsealed, auth_failed, replay, "
            "stale, future, bad_envelope, bad_version, missing_token, bad_token, "
            "busy)",
            ["channel", "reason"],
            registry=self.registry,
        )

    def drop(self, reason: str, count: int = 1) -> None:
        """Count ``count`` dropped datagrams (or messages) for ``reason``."""
        self.dropped_packets.labels(reason).inc(count)

    def observe_api(
        self, method: str, path: str, code: int, duration: float | None = None
    ) -> None:
        # Label children cached: labels() takes a lock and checks its
        # arguments on every call. Bounded: methods and route patterns are
        # fixed sets (asgi.normalize_method), status codes few.
        key = (method, path, code)
        child = self._api_children.get(key)
        if child is None:
            child = self._api_children[key] = self.api_requests.labels(
                method, path, str(code)
            )
        child.inc()
        if duration is not None:
            timer = self._latency_children.get((method, path))
            if timer is None:
                timer = self._latency_children[(method, path)] = (
                    self.api_latency.labels(method, path)
                )
            timer.observe(duration)

    def route_write(self, result: str, count: int = 1) -> None:
        """Count client writes by outcome (label child cached)."""
        child = self._write_children.get(result)
        if child is None:
            child = self._write_children[result] = self.route_writes.labels(result)
        child.inc(count)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

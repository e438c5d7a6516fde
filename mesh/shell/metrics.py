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

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ..core.effects import ExchangePurpose
from ..core.node import NodeCore
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
            "mesh_refutations",
            "Accusations against this node it refuted",
            stats["refutations"],
        )
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
        # Reasons are a small fixed set named by the core and the shell
        # (overflow, deadline, rejected, failed, peer_dead, ...).
        for key, count in sorted(pushes.stats.items()):
            if key.startswith("dropped_"):
                dropped.add_metric([key.removeprefix("dropped_")], count)
        yield dropped


class Metrics:
    """One agent's registry and the counters the shell owns."""

    def __init__(self, core: NodeCore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_CoreCollector(core))
        self.dropped_packets = Counter(
            "mesh_dropped_packets",
            "Datagrams dropped (inbound: decode reason; outbound: send_*)",
            ["reason"],
            registry=self.registry,
        )
        self.exchange_errors = Counter(
            "mesh_exchange_errors",
            "Member-table exchange failures by side and reason",
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
        self.route_writes = Counter(
            "mesh_route_writes",
            "Client writes and deletes, by outcome (applied, conflict, invalid, full)",
            ["result"],
            registry=self.registry,
        )
        self.routes_received = Counter(
            "mesh_routes_received",
            "Route deltas pushed by peers, by outcome "
            "(applied, stale, duplicate, invalid, full)",
            ["outcome"],
            registry=self.registry,
        )
        self.route_batches_refused = Counter(
            "mesh_route_batches_refused",
            "Pushed route batches refused whole (undecodable), by reason",
            ["reason"],
            registry=self.registry,
        )

    def drop(self, reason: str, count: int = 1) -> None:
        """Count ``count`` dropped datagrams (or messages) for ``reason``."""
        self.dropped_packets.labels(reason).inc(count)

    def observe_api(self, method: str, path: str, code: int) -> None:
        self.api_requests.labels(method, path, str(code)).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

"""The readiness view of ``/v1/health`` and its ``?ready`` probe form
(Kubernetes: readinessProbe gets 503 until ready; liveness stays 200)."""

from __future__ import annotations

import httpx

from mesh.core.node import RouteSync
from mesh.core.routes import OutcomeStatus, Write
from mesh.shell.api import make_api_app

from .conftest import MakeAgent


def client_for(agent_app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=agent_app),  # type: ignore[arg-type]
        base_url="http://mesh.test",
    )


async def test_ready_when_joined_and_caught_up(make_agent: MakeAgent) -> None:
    agent = make_agent()
    async with client_for(make_api_app(agent)) as client:
        health = await client.get("/v1/health")
        probe = await client.get("/v1/health?ready")
    assert health.status_code == probe.status_code == 200
    document = probe.json()
    assert document["ready"] is True
    assert document["routes_caught_up"] is True
    assert document["reasons"] == []
    assert document["status"] == "ok"  # the contract's fields stay


async def test_not_joined_is_503_on_the_probe_only(make_agent: MakeAgent) -> None:
    agent = make_agent(join=("127.0.0.1:1",))
    agent.start()  # the join fails at once: no I/O attached
    async with client_for(make_api_app(agent)) as client:
        live = await client.get("/v1/health")
        ready = await client.get("/v1/health?ready")
    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    assert ready.json()["reasons"][0] == "not joined"


async def test_route_sync_reason_and_leaving(make_agent: MakeAgent) -> None:
    agent = make_agent()
    agent.core.route_sync = lambda: RouteSync(False, "catching up from b", 7)  # type: ignore[method-assign]
    agent.request_shutdown()
    async with client_for(make_api_app(agent)) as client:
        document = (await client.get("/v1/health?ready")).json()
    assert document["routes_caught_up"] is False
    assert document["routes_behind"] == 7
    assert document["reasons"] == ["catching up from b", "leaving"]


async def test_a_name_held_at_another_address_is_not_ready(
    make_agent: MakeAgent,
) -> None:
    agent = make_agent()
    agent.core.membership.local_conflict = ("10.0.0.9", 7946)
    async with client_for(make_api_app(agent)) as client:
        response = await client.get("/v1/health?ready")
    assert response.status_code == 503
    (reason,) = response.json()["reasons"]
    assert reason.startswith(
        f"name conflict: {agent.core.name} is held at 10.0.0.9:7946"
    )


async def test_a_name_held_at_another_address_refuses_writes(
    make_agent: MakeAgent,
) -> None:
    """Audit of session 14: such a member was not ready but took writes,
    and they replicated with its name as their origin, which the other
    holder of the name mints versions under too."""
    agent = make_agent()
    assert agent.put_route("k", "t", {}, None).status is OutcomeStatus.APPLIED
    agent.core.membership.local_conflict = ("10.0.0.9", 7946)
    for outcome in (
        agent.put_route("k2", "t", {}, None),
        agent.delete_route("k", None),
        *agent.write_routes([Write("k3", "t")]),
    ):
        assert outcome.status is OutcomeStatus.UNAVAILABLE
        assert outcome.reason.startswith(f"name conflict: {agent.core.name}")
    agent.core.membership.local_conflict = None
    assert agent.put_route("k2", "t", {}, None).status is OutcomeStatus.APPLIED


async def test_stalls_and_stall_resyncs_are_exported(make_agent: MakeAgent) -> None:
    agent = make_agent("self")
    agent.core.membership.stats["stalls"] = 3
    agent.core.ae.stats["stall_resyncs"] = 2
    registry = agent.metrics.registry
    assert registry.get_sample_value("mesh_timer_stalls_total") == 3
    assert registry.get_sample_value("mesh_antientropy_stall_resyncs_total") == 2

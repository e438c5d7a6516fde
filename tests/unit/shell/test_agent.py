"""The agent's executor and its one timer loop, on trio's MockClock."""

from __future__ import annotations

import math
import time

import pytest
import structlog
import trio
import trio.testing

from mesh.core.effects import Effect, Exchange, ExchangePurpose
from mesh.core.routes import Route, Version
from mesh.messages import Alive, Dead, PushPull

from .conftest import MakeAgent


class FakeDeadlines:
    """Stands in for the core's timers: a settable next_deadline and a tick log."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.ticks: list[float] = []

    def next_deadline(self) -> float | None:
        return self.deadline

    def tick(self, now: float, wall: float | None = None) -> list[Effect]:
        self.ticks.append(now)
        self.deadline = None  # nothing more unless the test says so
        return []


async def test_timer_sleeps_until_the_deadline_then_ticks_once(
    make_agent: MakeAgent, autojump_clock: trio.testing.MockClock
) -> None:
    agent = make_agent()
    fake = FakeDeadlines(trio.current_time() + 3.0)
    agent.core.next_deadline = fake.next_deadline  # type: ignore[method-assign]
    agent.core.tick = fake.tick  # type: ignore[method-assign]
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run_timers)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert fake.ticks == [pytest.approx(start + 3.0)]


async def test_how_late_the_timer_fires_is_measured(
    make_agent: MakeAgent, autojump_clock: trio.testing.MockClock
) -> None:
    """mesh_timer_lateness_seconds: 0 for a timer on time; the time the loop
    could not run (a jump of the clock with nothing scheduled) otherwise."""
    agent = make_agent()
    start = trio.current_time()
    fake = FakeDeadlines(start + 3.0)
    agent.core.next_deadline = fake.next_deadline  # type: ignore[method-assign]
    agent.core.tick = fake.tick  # type: ignore[method-assign]
    registry = agent.metrics.registry

    def observed() -> tuple[float | None, float | None]:
        return (
            registry.get_sample_value("mesh_timer_lateness_seconds_count"),
            registry.get_sample_value("mesh_timer_lateness_seconds_sum"),
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run_timers)
        await trio.sleep(5)
        assert observed() == (1, pytest.approx(0.0))
        fake.deadline = trio.current_time() + 3.0
        agent._dispatch([])  # wake the loop to see the new deadline
        await trio.sleep(2.5)
        autojump_clock.jump(1.5)  # 1.5 s pass while nothing runs
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert observed() == (2, pytest.approx(1.0))


async def test_an_earlier_deadline_wakes_the_timer(
    make_agent: MakeAgent, autojump_clock: trio.testing.MockClock
) -> None:
    agent = make_agent()
    start = trio.current_time()
    fake = FakeDeadlines(start + 100.0)
    agent.core.next_deadline = fake.next_deadline  # type: ignore[method-assign]
    agent.core.tick = fake.tick  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run_timers)
        await trio.sleep(1)
        fake.deadline = start + 2.0  # an input moved the deadline earlier
        agent._dispatch([])
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert fake.ticks == [pytest.approx(start + 2.0)]


async def test_real_core_ticks_only_when_due(
    make_agent: MakeAgent, autojump_clock: trio.testing.MockClock
) -> None:
    """Against the real core: every tick happens at or after the deadline the
    loop slept towards, never early."""
    agent = make_agent()
    agent.receive(("127.0.0.2", 7946), [Alive(1, "peer", ("127.0.0.2", 7946), {})])
    real_tick, real_deadline = agent.core.tick, agent.core.next_deadline
    late: list[float] = []

    def tick(now: float, wall: float | None = None) -> list[Effect]:
        deadline = real_deadline()
        assert deadline is not None
        assert now >= deadline
        late.append(now - deadline)
        return real_tick(now, wall)

    agent.core.tick = tick  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run_timers)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert late
    assert max(late) == pytest.approx(0.0)


async def test_leave_alone_is_done_at_once(make_agent: MakeAgent) -> None:
    agent = make_agent()
    agent.leave()
    assert agent.leave_done.is_set()


async def test_leave_waits_while_someone_is_alive_to_tell(
    make_agent: MakeAgent,
) -> None:
    agent = make_agent()
    agent.receive(("127.0.0.2", 7946), [Alive(1, "peer", ("127.0.0.2", 7946), {})])
    agent.leave()
    # No socket: the leave was never transmitted, so it is still pending.
    assert agent.core.leave_pending()
    assert not agent.leave_done.is_set()
    # The peer leaving too leaves nobody to tell.
    agent.receive(("127.0.0.2", 7946), [Dead(1, "peer", "peer")])
    assert agent.leave_done.is_set()


async def test_io_effects_fail_at_once_without_io(make_agent: MakeAgent) -> None:
    """No peer client attached: a join exchange is reported failed in the same
    dispatch, and the core schedules its retry."""
    agent = make_agent(join=("127.0.0.1:1",))
    agent.start()
    assert agent.core.joined is False
    stats = agent.core.membership.stats
    assert stats["exchange_join_failed"] == 1
    deadline = agent.core.next_deadline()
    assert deadline is not None
    assert not math.isinf(deadline)


async def test_a_full_table_refusing_peers_routes_is_logged_once_a_minute(
    make_agent: MakeAgent,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Audit 8: a table at max_routes dropped pushed routes with no log line."""
    start = time.time()  # the wall clock moves with the mock clock here
    monkeypatch.setattr(time, "time", lambda: start + trio.current_time())
    agent = make_agent(max_routes=1)

    def pushed(key: str) -> Route:
        return Route(
            key, "http://t", {}, Version(0, int(time.time() * 1000) << 16, "p")
        )

    with structlog.testing.capture_logs() as logs:
        assert agent.receive_routes([pushed("a")]) == {"applied": 1}
        assert agent.receive_routes([pushed("b"), pushed("c")]) == {"full": 2}
        await trio.sleep(30)
        assert agent.receive_routes([pushed("d")]) == {"full": 1}
        await trio.sleep(31)
        assert agent.receive_routes([pushed("e")]) == {"full": 1}
    warnings = [e for e in logs if e["event"].startswith("route table full")]
    assert len(warnings) == 2
    assert warnings[0]["max_routes"] == 1


async def test_a_join_failure_is_logged_at_info_once_per_seed_and_reason(
    make_agent: MakeAgent,
) -> None:
    """Audit 17: a member cut off for a long partition logged every knock on
    its seeds at info, every 1-3 s."""
    agent = make_agent(join=("127.0.0.1:1",))
    reasons = iter(["refused", "refused", "refused", "tls failed", "tls failed"])

    class Peers:
        async def exchange(
            self, target: object, request: object, *, errors: list[str]
        ) -> list[PushPull]:
            errors.append(next(reasons))
            return []

    agent.peers = Peers()  # type: ignore[assignment]
    with structlog.testing.capture_logs() as logs:
        for token in range(1, 6):
            agent._io_inflight += 1
            await agent._run_exchange(
                Exchange(token, "127.0.0.1:1", PushPull(True, ()), ExchangePurpose.JOIN)
            )
    failures = [e for e in logs if e["event"] == "join attempt failed; will retry"]
    assert [e["error"] for e in failures if e["log_level"] == "info"] == [
        "refused",
        "tls failed",
    ]
    assert agent._io_inflight == 0


async def test_an_anti_entropy_step_is_logged_at_debug_with_what_it_did(
    make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Audit 17: rounds were logged at no level at all."""
    from mesh.core.antientropy import AeSymbols, Reconcile, SymbolsStatus
    from mesh.shell import agent as agent_module

    agent = make_agent()
    agent.receive(("127.0.0.2", 7946), [Alive(1, "peer", ("127.0.0.2", 7946), {})])
    agent.core.ae.alone = False  # a member of a mesh: an ordinary round
    agent.core.ae._next_at = 0.0
    (effect,) = [
        e for e in agent.core.tick(trio.current_time()) if isinstance(e, Reconcile)
    ]

    async def same(*_: object) -> AeSymbols:
        return AeSymbols(SymbolsStatus.SAME)

    monkeypatch.setattr(agent_module, "reconcile", same)
    agent.peers = object()  # type: ignore[assignment]
    agent._io_inflight += 1
    with structlog.testing.capture_logs() as logs:
        await agent._run_reconcile(effect)
    (step,) = [e for e in logs if e["event"] == "anti-entropy step"]
    assert step["peer"] == "peer"
    assert step["request"] == "AeOpen"
    assert step["answered"] is True
    assert step["rounds_same"] == 1

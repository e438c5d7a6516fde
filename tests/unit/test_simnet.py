"""mesh.testing.simnet: the simulator itself, and SWIM/Lifeguard behaviour of the
core driven through it, with timing bounds derived from the config formulas."""

from __future__ import annotations

from collections import Counter

import pytest

from mesh.config import Config
from mesh.core.effects import EventKind, ExchangePurpose
from mesh.core.suspicion import suspicion_timeout
from mesh.messages import MemberState, MemberStatus
from mesh.testing.simnet import SimEvent, SimNet, node_address

# One-way delay is delay + jitter * U(0, 1) (SimNet defaults): 1..2 ms.
MAX_DELAY = 0.002


def first(events: list[SimEvent], kind: EventKind, member: str) -> SimEvent:
    return next(e for e in events if e.kind is kind and e.member == member)


def last(events: list[SimEvent], kind: EventKind, member: str) -> SimEvent:
    return [e for e in events if e.kind is kind and e.member == member][-1]


def observers(events: list[SimEvent], kind: EventKind, member: str) -> set[str]:
    return {e.observer for e in events if e.kind is kind and e.member == member}


def converged_cluster(n: int, *, seed: int = 0, profile: str = "local") -> SimNet:
    sim = SimNet.cluster(n, seed=seed, profile=profile)
    cfg = sim.node("n0").config
    assert sim.run_until_converged(cfg.push_pull_interval + 1.0) is not None
    return sim


# --- the simulator ---


def script(sim: SimNet) -> None:
    """A run touching every fault kind."""
    sim.run_until_converged(10)
    sim.set_network(loss=0.1, duplicate=0.05)
    sim.run_for(2)
    sim.crash("n3")
    sim.pause("n1", 0.7)
    sim.run_for(3)
    sim.partition([["n0", "n1"]])
    sim.run_for(4)
    sim.heal()
    sim.restart("n3")
    sim.leave("n4")
    sim.run_for(5)


def test_same_seed_same_trace() -> None:
    runs = []
    for _ in range(2):
        sim = SimNet.cluster(5, seed=42, profile="local", net={"record_trace": True})
        script(sim)
        runs.append(sim)
    a, b = runs
    assert a.trace is not None
    assert len(a.trace) > 1000
    assert a.trace == b.trace
    assert a.trace_digest() == b.trace_digest()
    assert a.events == b.events


def test_different_seed_different_trace() -> None:
    digests = set()
    for seed in (1, 2):
        sim = SimNet.cluster(5, seed=seed, profile="local", net={"record_trace": True})
        script(sim)
        digests.add(sim.trace_digest())
    assert len(digests) == 2


def test_addresses_and_names() -> None:
    sim = SimNet.cluster(3, profile="local")
    assert [n.addr for n in sim.nodes.values()] == [node_address(i) for i in range(3)]
    assert node_address(0) == ("10.0.0.1", 7946)
    assert node_address(255) == ("10.0.1.0", 7946)
    assert sim.node("n1").config.join == ("10.0.0.1:7946", "10.0.0.3:7946")


def test_loss_partition_and_duplication_counters() -> None:
    sim = converged_cluster(4)
    sim.set_loss(1.0)
    before = sim.stats
    sim.run_for(1)
    after = sim.stats
    sent = after["datagrams"] - before["datagrams"]
    assert sent > 0
    assert after["dropped_loss"] - before["dropped_loss"] == sent
    sim.set_network(loss=0.0, duplicate=1.0)
    sim.partition([["n0"]])
    sim.run_for(1)
    assert sim.stats["dropped_partition"] > 0
    assert sim.stats["duplicated"] > 0


def test_unknown_seed_fails_after_tcp_timeout_and_retries() -> None:
    sim = SimNet(seed=1, profile="local")
    node = sim.add_node("lonely", seeds=[("10.9.9.9", 7946)])
    cfg = node.config
    sim.run_for(cfg.tcp_timeout - 0.01)
    assert node.core.membership.stats["exchange_join_failed"] == 0
    sim.run_for(0.02)
    assert node.core.membership.stats["exchange_join_failed"] == 1
    # retried after join_backoff_min * U(0.5, 1), fails again tcp_timeout later
    sim.run_for(cfg.join_backoff_min + cfg.tcp_timeout)
    assert node.core.membership.stats["exchange_join_failed"] == 2
    assert not node.core.joined


def test_stale_results_of_a_crashed_process_are_dropped() -> None:
    sim = converged_cluster(3)
    sim.partition([["n0"]])  # n0's exchanges now fail at tcp_timeout
    sim.node("n0").core.exchanges.next_sync_at = sim.now  # force an exchange now
    sim.run_for(0.001)
    sim.restart("n0")
    new = sim.node("n0").core
    sim.heal()
    sim.run_for(sim.node("n0").config.tcp_timeout + 0.1)
    # the old process's failure was not delivered to the new one
    assert new.membership.stats["exchange_sync_failed"] == 0


@pytest.mark.parametrize(("pause", "ok"), [(0.5, True), (1.5, False)])
def test_exchange_with_a_paused_peer_waits_for_resume_or_times_out(
    pause: float, ok: bool
) -> None:
    """The request waits in the paused peer's socket; the sender's tcp_timeout
    (1 s in the local profile) keeps running."""
    sim = converged_cluster(3)
    n0, n1 = sim.node("n0"), sim.node("n1")
    assert n0.config.tcp_timeout == 1.0
    sim.pause("n1", pause)
    n0.core.exchanges.exchange(n1.addr, ExchangePurpose.SYNC, "n1")
    sim._after(n0, n0.core._drain())
    sim.run_for(2.0)
    stats = n0.core.membership.stats
    assert (stats["exchange_sync_ok"], stats["exchange_sync_failed"]) == (
        (1, 0) if ok else (0, 1)
    )
    # served on resume either way (the paused process reads it then)
    assert n1.core.membership.stats["exchange_served"] >= 1


def test_pause_buffer_is_bounded() -> None:
    sim = converged_cluster(4)
    sim.pause_backlog = 3
    sim.pause("n1", 5.0)
    sim.run_for(4.9)
    node = sim.node("n1")
    assert node.backlog_datagrams == 3
    assert sim.stats["dropped_backlog"] > 0
    sim.run_for(0.2)
    assert not node.paused
    assert node.backlog_datagrams == 0


def test_route_push_reaches_every_live_node() -> None:
    """Push effects travel as TCP requests: a write on n0 is applied everywhere
    (the simulator carries route pushes too, for tests that drive them)."""
    sim = converged_cluster(4)
    core = sim.node("n0").core
    outcome, effects = core.put_route("svc", "10.1.1.1:80", {}, None, sim.now, sim.now)
    assert outcome.changed
    sim.execute("n0", effects)
    sim.run_for(1.0)
    for name in ("n1", "n2", "n3"):
        route = sim.node(name).core.routes.get("svc")
        assert route is not None
        assert route.target == "10.1.1.1:80"
    assert sim.stats["pushes"] == 3


# --- membership behaviour ---


def test_bootstrap_of_five_converges() -> None:
    sim = SimNet.cluster(5, seed=7, profile="local")
    cfg = sim.node("n0").config
    when = sim.run_until_converged(cfg.push_pull_interval, step=0.01)
    assert when is not None
    # the seeds answer the joins at once; gossip spreads the rest in a few rounds
    assert when < 10 * cfg.gossip_interval
    assert all(n.core.joined for n in sim.nodes.values())


@pytest.mark.parametrize("seed", range(3))
def test_crash_refused_detected(seed: int) -> None:
    """Process gone, host up: the TCP fallback probe is refused, so the first
    accuser declares it dead ``refused_suspicion_mult * probe_interval`` later."""
    n = 5
    sim = converged_cluster(n, seed=seed, profile="lan")
    cfg = sim.node("n0").config
    pi, pt = cfg.probe_interval, cfg.probe_timeout
    sim.run_for(5)
    crashed_at = sim.now
    sim.crash("n4", refuse=True)
    sim.run_for(30)
    events = [e for e in sim.events if e.time >= crashed_at]
    suspect = first(events, EventKind.SUSPECT, "n4")
    dead = first(events, EventKind.DEAD, "n4")
    # A probe must time out first; every survivor probes n4 within two of its
    # shuffled rounds of n - 1 members.
    assert crashed_at + pt - 2 * MAX_DELAY <= suspect.time
    assert suspect.time <= crashed_at + 2 * (n - 1) * pi + pt + 4 * MAX_DELAY
    assert dead.observer == suspect.observer
    assert dead.time == pytest.approx(
        suspect.time + cfg.refused_suspicion_mult * pi, abs=1e-9
    )
    # the accuser gossips it to gossip_nodes >= n - 2 members at its next round
    assert observers(events, EventKind.DEAD, "n4") == {"n0", "n1", "n2", "n3"}
    assert (
        last(events, EventKind.DEAD, "n4").time
        <= dead.time + cfg.gossip_interval + 2 * MAX_DELAY
    )


@pytest.mark.parametrize("seed", range(3))
def test_crash_host_down_detected(seed: int) -> None:
    """No TCP answer at all: Lifeguard suspicion, between min and max timeout."""
    n = 5
    sim = converged_cluster(n, seed=seed, profile="lan")
    cfg = sim.node("n0").config
    pi = cfg.probe_interval
    min_timeout = suspicion_timeout(cfg.suspicion_mult, n, pi)
    max_timeout = cfg.suspicion_max_timeout_mult * min_timeout
    assert (min_timeout, max_timeout) == (4.0, 24.0)
    sim.run_for(5)
    crashed_at = sim.now
    sim.crash("n4", refuse=False)
    sim.run_for(60)
    events = [e for e in sim.events if e.time >= crashed_at]
    suspect = first(events, EventKind.SUSPECT, "n4")
    dead = first(events, EventKind.DEAD, "n4")
    # suspected at the end of a probe interval without any ack
    assert crashed_at + pi - 2 * MAX_DELAY <= suspect.time
    assert suspect.time <= crashed_at + 2 * (n - 1) * pi + pi
    # every survivor suspects it too, so k = suspicion_mult - 2 = 2
    # confirmations bring the first accuser down to the minimum
    assert suspect.time + min_timeout - 1e-9 <= dead.time
    assert dead.time <= suspect.time + max_timeout
    assert observers(events, EventKind.DEAD, "n4") == {"n0", "n1", "n2", "n3"}


@pytest.mark.parametrize("seed", range(4))
def test_pause_shorter_than_min_suspicion_is_never_dead(seed: int) -> None:
    n = 5
    sim = converged_cluster(n, seed=seed, profile="lan")
    cfg = sim.node("n0").config
    min_timeout = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
    start = sim.now
    for _ in range(3):
        sim.pause("n2", 0.9 * min_timeout)
        sim.run_for(20)
    assert not [e for e in sim.events if e.time >= start and e.kind is EventKind.DEAD]
    assert sim.converged()


def test_pause_longer_than_max_suspicion_refutes_and_returns() -> None:
    n = 5
    sim = converged_cluster(n, seed=3, profile="local")
    cfg = sim.node("n0").config
    max_timeout = cfg.suspicion_max_timeout_mult * suspicion_timeout(
        cfg.suspicion_mult, n, cfg.probe_interval
    )
    before = sim.node("n2").core.incarnation
    sim.pause("n2", max_timeout + 2 * cfg.probe_interval * n)
    sim.run_for(max_timeout + 2 * cfg.probe_interval * n - 0.01)
    assert all(
        sim.status(o, "n2") is MemberStatus.DEAD for o in ("n0", "n1", "n3", "n4")
    )
    # Resumed: it hears it is dead (gossip in its buffer, or a reconnect
    # exchange), refutes, and is alive everywhere at a higher incarnation.
    sim.run_for(0.02)
    assert not sim.node("n2").paused
    when = sim.run_until_converged(
        cfg.reconnect_interval + cfg.push_pull_interval,
        expected=["n0", "n1", "n2", "n3", "n4"],
    )
    assert when is not None
    assert sim.node("n2").core.incarnation > before


@pytest.mark.parametrize("seed", range(5))
def test_partition_heals_without_operator(seed: int) -> None:
    n = 6
    sim = converged_cluster(n, seed=seed, profile="local")
    cfg = sim.node("n0").config
    left, right = ["n0", "n1", "n2"], ["n3", "n4", "n5"]
    sim.partition([left, right])
    sim.run_for(30)
    for name in left:
        assert sim.alive_view(name) == frozenset(left)
    for name in right:
        assert sim.alive_view(name) == frozenset(right)
    healed_at = sim.now
    # Each node push-pulls with a random dead member every reconnect_interval;
    # the first exchange makes both ends refute (each side has the other dead
    # at the same incarnation), the refutations spread by gossip and periodic
    # push-pull: one reconnect and one push-pull interval.
    sim.heal()
    when = sim.run_until_converged(cfg.reconnect_interval + cfg.push_pull_interval)
    assert when is not None, {n: sorted(sim.alive_view(n)) for n in sim.nodes}
    assert when - healed_at <= cfg.reconnect_interval + cfg.push_pull_interval


def test_restart_after_death_is_accepted_at_a_higher_incarnation() -> None:
    sim = converged_cluster(5, seed=2, profile="local")
    old = sim.node("n3").core.incarnation
    sim.crash("n3")
    sim.run_for(10)
    assert all(
        sim.status(o, "n3") is MemberStatus.DEAD for o in ("n0", "n1", "n2", "n4")
    )
    sim.restart("n3")
    assert sim.run_until_converged(5) is not None
    new = sim.node("n3").core.incarnation
    assert new > old
    for name in ("n0", "n1", "n2", "n4"):
        member = sim.node(name).core.member("n3")
        assert member is not None
        assert member.incarnation == new


def test_restart_before_detection_is_not_declared_dead() -> None:
    sim = converged_cluster(5, seed=5, profile="local")
    start = sim.now
    sim.restart("n1")
    sim.run_for(20)
    assert not [e for e in sim.events if e.time >= start and e.kind is EventKind.DEAD]
    assert sim.converged()


def test_graceful_leave_is_left_everywhere_and_stays_left() -> None:
    sim = converged_cluster(5, seed=9, profile="local")
    cfg = sim.node("n0").config
    sim.leave("n2")
    sim.run_for(1)
    node = sim.node("n2")
    assert not node.up
    assert node.left
    for name in ("n0", "n1", "n3", "n4"):
        assert sim.status(name, "n2") is MemberStatus.LEFT
    # Old gossip and push-pull never bring it back at the same incarnation.
    sim.run_for(4 * cfg.push_pull_interval)
    for name in ("n0", "n1", "n3", "n4"):
        assert sim.status(name, "n2") is MemberStatus.LEFT
    assert not [e for e in sim.events if e.member == "n2" and e.kind is EventKind.DEAD]
    assert sim.converged()


def test_config_for_added_node_comes_from_profile_and_overrides() -> None:
    sim = SimNet(seed=0, profile="local", probe_interval=0.3)
    node = sim.add_node("x")
    assert node.config == Config.local(
        name="x", bind=node.addr, advertise=node.addr, probe_interval=0.3
    )


def test_periodic_member_sync_sends_digests_not_tables_when_idle() -> None:
    """An idle, converged mesh's periodic syncs are digest-only (issue 4, item
    4); a difference is followed by one full exchange each way."""
    sim = converged_cluster(8)
    sim.run_for(30.0)  # let join-time differences settle
    before = Counter[str]()
    for node in sim.nodes.values():
        before.update(node.core.membership.stats)
    sim.run_for(60.0)
    after = Counter[str]()
    for node in sim.nodes.values():
        after.update(node.core.membership.stats)
    syncs = after["exchange_sync_ok"] - before["exchange_sync_ok"]
    same = after["exchange_sync_same"] - before["exchange_sync_same"]
    assert syncs >= 8 * 60 / sim.node("n0").config.push_pull_interval - 8
    assert same == syncs


def test_a_member_table_difference_is_merged_both_ways_by_a_sync() -> None:
    sim = converged_cluster(3)
    n0, n1 = sim.node("n0").core, sim.node("n1").core
    # Each alone learns of a member; n1's summary sync with n0 must carry
    # both: n0's in the reply, n1's in the full exchange that follows.
    n0.membership.merge(
        [MemberState("ghost0", ("10.9.9.9", 7946), 1, MemberStatus.ALIVE)],
        "n0",
        sim.now,
    )
    n1.membership.merge(
        [MemberState("ghost1", ("10.9.9.8", 7946), 1, MemberStatus.ALIVE)],
        "n1",
        sim.now,
    )
    before = n1.membership.stats["exchange_sync_ok"]
    token = n1.exchanges.exchange(
        sim.node("n0").addr, ExchangePurpose.SYNC, "n0", summary=True
    )
    n1.exchanges.summary_syncs.add(token)
    sim._after(sim.node("n1"), n1._drain())
    sim.run_for(0.1)
    # the summary, then one full exchange (gossip may carry the rows too)
    assert n1.membership.stats["exchange_sync_ok"] - before == 2
    assert n1.membership.get("ghost0") is not None
    assert n0.membership.get("ghost1") is not None

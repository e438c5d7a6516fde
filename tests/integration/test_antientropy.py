"""Anti-entropy with real agent processes: a paused peer whose pushes were
given up is repaired after it resumes, a late joiner receives the whole table
before it reports caught up, and a delete it missed is never undone.

The `local` profile: antientropy_interval 1 s, push_deadline 1.5 s. Every wait
is a condition polled under a deadline; the repair deadline is the issue's
"two anti-entropy intervals of resuming" plus the time a resumed process needs
to be seen alive again (it may have been declared dead while stopped).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import httpx

from mesh.config import Config
from mesh.testing.agents import AgentCluster, AgentProcess, wait_until

from .test_routes import route_of, routes_of

LOCAL = Config.local(name="x")
#: two anti-entropy intervals, plus a refutation round and process wake-up
REPAIR_DEADLINE = 2 * LOCAL.antientropy_interval + 3.0


def metric(agent: AgentProcess, name: str) -> float:
    """Sum of a metric's samples (all label sets) from /metrics."""
    text = agent.get("/metrics").text
    total = 0.0
    for match in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE):
        total += float(match.group(1))
    return total


def put(agent: AgentProcess, key: str, target: str) -> None:
    response = agent.request("PUT", f"/v1/routes/{key}", json={"target": target})
    assert response.status_code == 200, response.text


def delete(agent: AgentProcess, key: str) -> None:
    response = agent.request("DELETE", f"/v1/routes/{key}")
    assert response.status_code == 200, response.text


def alive_everywhere(cluster: AgentCluster, name: str) -> bool:
    return all(
        a.statuses().get(name) == "alive" for a in cluster.live() if a.name != name
    )


def test_a_paused_peer_gets_every_missed_write_and_delete(
    cluster: AgentCluster,
) -> None:
    cluster.start(3)
    wait_until(cluster.converged, 10.0, what="convergence")
    n1, n2, n3 = (cluster.agents[f"node{i}"] for i in (1, 2, 3))
    for i in range(20):
        put(n1, f"old{i}", "http://before")
    wait_until(lambda: len(routes_of(n3)) == 20, 10.0, what="first writes")
    n3.pause()
    paused_at = time.monotonic()
    try:
        for i in range(50):
            put(n1, f"new{i}", "http://during")
        for i in range(10):
            delete(n2, f"old{i}")
        # every push to n3 given up: its deltas dropped, n3 marked for repair
        wait_until(
            lambda: (
                metric(n1, "mesh_push_dropped_total") >= 50
                and metric(n2, "mesh_push_dropped_total") >= 10
            ),
            15.0,
            what="pushes to the paused peer given up",
        )
        # The stall is this test's input: longer than push_deadline (1.5 s
        # on local) plus a probe interval, so n3's timers are that late.
        time.sleep(max(0.0, paused_at + 3.0 - time.monotonic()))
    finally:
        n3.resume()
    want = routes_of(n1)
    assert len(want) == 60
    # Back from a stall longer than the push deadline, n3 is not ready until a
    # round has repaired it: ready must never come with a stale table.
    deadline = time.monotonic() + REPAIR_DEADLINE
    while not n3.get("/v1/health").json()["ready"]:
        assert time.monotonic() < deadline, "n3 ready again"
    assert routes_of(n3) == want
    assert metric(n3, "mesh_antientropy_stall_resyncs_total") == 1
    wait_until(lambda: alive_everywhere(cluster, "node3"), 15.0, what="n3 alive")
    assert metric(n3, "mesh_antientropy_routes_total") > 0


class StreamingWriter(threading.Thread):
    """Writes a new key every ``every`` seconds, alternating between agents,
    until stopped or ``limit`` writes (a bounded load); remembers when each
    key was written."""

    def __init__(
        self, agents: list[AgentProcess], every: float = 0.02, limit: int = 2000
    ) -> None:
        super().__init__(daemon=True)
        self.agents, self.every, self.limit = agents, every, limit
        self.written: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def __enter__(self) -> StreamingWriter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(10.0)

    def wait_repaired(self, done: Callable[[], bool], what: str) -> None:
        """``done`` holds within the repair deadline while writes still
        stream (the point: repairs must not wait for them to stop)."""
        wait_until(done, REPAIR_DEADLINE, what=what)
        assert self.is_alive(), "the writes must still stream during the repair"

    def run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            for i in range(self.limit):
                if self.stop.wait(self.every):
                    return
                agent = self.agents[i % len(self.agents)]
                key = f"stream{i}"
                url = f"{agent.base_url}/v1/routes/{key}"
                if client.put(url, json={"target": "http://s"}).status_code == 200:
                    self.written.append((time.monotonic(), key))


def test_a_paused_peer_is_repaired_while_writes_keep_streaming(
    cluster: AgentCluster,
) -> None:
    """Anti-entropy opens no round with a member routes are streaming to or
    from (what differs is on its way), unless that member is marked for
    repair or we are catching up: a peer paused past the push deadline must
    get what it missed while the other members keep writing to it and to
    each other (here its stall resync does it; the next test takes marks)."""
    cluster.start(3)
    wait_until(cluster.converged, 10.0, what="convergence")
    n1, n2, n3 = (cluster.agents[f"node{i}"] for i in (1, 2, 3))
    with StreamingWriter([n1, n2]) as writer:
        wait_until(lambda: len(writer.written) >= 20, 10.0, what="streaming")
        n3.pause()
        paused_at = time.monotonic()
        try:
            wait_until(
                lambda: (
                    metric(n1, "mesh_push_dropped_total") > 0
                    and metric(n2, "mesh_push_dropped_total") > 0
                ),
                15.0,
                what="pushes to the paused peer given up",
            )
            # the stall is the input: past push_deadline (1.5 s on local)
            time.sleep(max(0.0, paused_at + 3.0 - time.monotonic()))
        finally:
            n3.resume()
        resumed_at = time.monotonic()
        missed = {k for t, k in writer.written if t < resumed_at}
        wait_until(lambda: alive_everywhere(cluster, "node3"), 15.0, what="n3 alive")
        writer.wait_repaired(
            lambda: missed <= set(routes_of(n3)), what="writes missed while paused"
        )
    wait_until(
        lambda: routes_of(n3) == routes_of(n1) == routes_of(n2),
        REPAIR_DEADLINE,
        what="all equal once the writes stop",
    )


def test_pushes_dropped_on_overflow_are_repaired_while_writes_keep_streaming(
    cluster: AgentCluster,
) -> None:
    """The marked-for-repair path without a stall: node1's push queues hold
    5 deltas, so a 100-route batch overflows them and marks both peers; the
    100 routes must reach them while every member keeps writing (rounds
    with unmarked members wait for such streams to end; marked ones may not
    wait)."""
    n1 = cluster.add("node1", env={"MESH_PUSH_QUEUE_MAX": "5"})
    n2, n3 = cluster.add("node2"), cluster.add("node3")
    wait_until(cluster.converged, 10.0, what="convergence")
    # every member writes: routes stream between every pair, both ways, so
    # only the marks can let a round through
    with StreamingWriter([n1, n2, n3]) as writer:
        wait_until(lambda: len(writer.written) >= 20, 10.0, what="streaming")
        batch = {
            "put": [{"key": f"b{i:03d}", "target": "http://b"} for i in range(100)]
        }
        assert n1.request("POST", "/v1/routes", json=batch).status_code == 200
        wait_until(
            lambda: metric(n1, 'mesh_push_dropped_total{reason="overflow"}') > 0,
            10.0,
            what="pushes dropped on overflow",
        )
        keys = {f"b{i:03d}" for i in range(100)}
        writer.wait_repaired(
            lambda: keys <= set(routes_of(n2)) and keys <= set(routes_of(n3)),
            what="the overflowed batch",
        )


def test_a_late_joiner_gets_the_whole_table_before_it_is_caught_up(
    cluster: AgentCluster,
) -> None:
    cluster.start(3)
    wait_until(cluster.converged, 10.0, what="convergence")
    n1 = cluster.agents["node1"]
    batch = {
        "put": [{"key": f"k{i:04d}", "target": f"http://t{i}"} for i in range(900)]
    }
    assert n1.request("POST", "/v1/routes", json=batch).status_code == 200
    for i in range(100):
        delete(n1, f"k{i:04d}")
    wait_until(
        lambda: all(len(routes_of(a)) == 800 for a in cluster.live()),
        15.0,
        what="table everywhere",
    )
    late = cluster.add("late")
    wait_until(
        lambda: metric(late, "mesh_routes_caught_up") == 1, 15.0, what="caught up"
    )
    assert routes_of(late) == routes_of(n1)
    # tombstones came too: the deleted keys are known deleted, not unknown
    assert metric(late, 'mesh_routes{state="tombstone"}') == 100


def test_a_delete_missed_by_a_paused_peer_stays_deleted(cluster: AgentCluster) -> None:
    cluster.start(3)
    wait_until(cluster.converged, 10.0, what="convergence")
    n1, n2, n3 = (cluster.agents[f"node{i}"] for i in (1, 2, 3))
    put(n1, "victim", "http://old")
    wait_until(lambda: route_of(n3, "victim") is not None, 10.0, what="replicated")
    n3.pause()
    try:
        delete(n1, "victim")
        wait_until(
            lambda: metric(n1, "mesh_push_dropped_total") >= 1,
            15.0,
            what="delete push to n3 given up",
        )
    finally:
        n3.resume()
    wait_until(lambda: alive_everywhere(cluster, "node3"), 15.0, what="n3 alive")
    wait_until(
        lambda: route_of(n3, "victim") is None, REPAIR_DEADLINE, what="delete repaired"
    )
    # Several more rounds: n3's old live copy must not come back anywhere.
    deadline = time.monotonic() + 4 * LOCAL.antientropy_interval
    while time.monotonic() < deadline:
        assert all(route_of(a, "victim") is None for a in (n1, n2, n3))
        time.sleep(0.2)
    assert n1.get("/v1/routes/victim").status_code == 404

"""The pusher: httpx failures mapped to the core's Failure, retries within the
batch deadline, the fan-out bound, coalescing end to end, and the peer side.

Every test runs on a ``MockClock(autojump_threshold=0)`` made inside the test,
so the timing asserts are exact; ``httpx.MockTransport`` (or an
``httpx.ASGITransport`` onto a second agent's peer app) stands in for peers.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from mesh.codec_routes import (
    decode_routes,
    decode_routes_ack,
    encode_routes,
    encode_routes_ack,
)
from mesh.core.routes import Route, Version
from mesh.core.sync import Batch, Failure, is_transient
from mesh.messages import Alive, Dead
from mesh.shell.agent import Agent
from mesh.shell.peer_http import (
    ACK_LIMIT,
    ROUTES_PATH,
    make_peer_app,
)
from mesh.shell.pusher import (
    Pusher,
    failure_from_exception,
    failure_from_status,
    open_pusher,
)

from .conftest import local_config

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run ``test`` on a fresh autojumping MockClock: virtual time, exact."""
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def ack(request: httpx.Request) -> httpx.Response:
    """What a healthy peer answers."""
    _, routes = decode_routes(request.content, max_routes=10_000)
    body = encode_routes_ack(len(routes), {"applied": len(routes)})
    return httpx.Response(200, content=body)


def peer_name(request: httpx.Request) -> str:
    """Test peers are named after their port: peer-<port>."""
    return f"peer-{request.url.port}"


def add_peers(agent: Agent, count: int) -> list[str]:
    names = []
    for i in range(count):
        port = 10_000 + i
        names.append(f"peer-{port}")
        agent.receive(
            ("127.0.0.2", 7946), [Alive(1, f"peer-{port}", ("127.0.0.2", port), {})]
        )
    return names


@attrs.define
class Harness:
    agent: Agent
    pusher: Pusher
    #: (trio time, batch, ok, reason) of every push_done
    done: list[tuple[float, Batch, bool, str]]

    def sample(self, name: str, **labels: str) -> float:
        value = self.agent.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    def write(self, key: str, target: str = "http://t") -> None:
        outcome = self.agent.put_route(key, target, {}, None)
        assert outcome.changed


@asynccontextmanager
async def pushing(
    handler: Handler, *, peers: int = 1, seed: int = 7, **overrides: Any
) -> AsyncIterator[Harness]:
    """An agent with ``peers`` alive peers behind ``handler``, and its pusher
    (retry jitter from ``random.Random(seed)``)."""
    # No timer loop runs here, and nothing else would release a batch held
    # back by push_min_interval (the core tests cover that interval).
    config = local_config("self", **{"push_min_interval": 0.0, **overrides})
    agent = Agent(
        config,
        addr=("127.0.0.1", 7946),
        now=trio.current_time(),
        rng=random.Random(1),
    )
    add_peers(agent, peers)
    done: list[tuple[float, Batch, bool, str]] = []
    report = agent.push_done

    def spy(batch: Batch, ok: bool, reason: str) -> None:
        done.append((trio.current_time(), batch, ok, reason))
        report(batch, ok, reason)

    agent.push_done = spy  # type: ignore[method-assign]
    transport = httpx.MockTransport(handler)
    async with open_pusher(agent, transport=transport, rng=random.Random(seed)) as p:
        yield Harness(agent, p, done)


# --- the boundary: httpx -> Failure ---


def _request() -> httpx.Request:
    return httpx.Request("POST", "http://127.0.0.2:1/")


@pytest.mark.parametrize(
    ("exc", "failure", "transient"),
    [
        (httpx.ConnectError("refused", request=_request()), Failure.CONNECT, True),
        (httpx.ReadError("reset", request=_request()), Failure.CONNECT, True),
        (
            httpx.RemoteProtocolError("closed", request=_request()),
            Failure.CONNECT,
            True,
        ),
        (httpx.ConnectTimeout("slow", request=_request()), Failure.TIMEOUT, True),
        (httpx.ReadTimeout("slow", request=_request()), Failure.TIMEOUT, True),
        (httpx.PoolTimeout("busy", request=_request()), Failure.TIMEOUT, True),
        (httpx.UnsupportedProtocol("ftp", request=_request()), Failure.PROTOCOL, False),
    ],
)
def test_exception_mapping(
    exc: httpx.HTTPError, failure: Failure, transient: bool
) -> None:
    assert failure_from_exception(exc) is failure
    assert is_transient(failure) is transient


@pytest.mark.parametrize(
    ("status", "transient"),
    [(429, True), (500, True), (503, True), (400, False), (404, False), (409, False)],
)
def test_status_mapping(status: int, transient: bool) -> None:
    assert failure_from_status(200) is None
    failure = failure_from_status(status)
    assert failure is Failure.STATUS
    assert is_transient(failure, status) is transient


@pytest.mark.parametrize(
    ("answer", "retried"),
    [
        (httpx.ConnectError, True),
        (httpx.ReadTimeout, True),
        (httpx.PoolTimeout, True),
        (429, True),
        (503, True),
        (400, False),
        (404, False),
    ],
)
def test_peer_failures_are_retried_only_when_transient(
    answer: type[httpx.TransportError] | int, retried: bool
) -> None:
    """End to end through the pusher: a transient failure is tried until the
    retries run out ("failed"), a permanent one exactly once ("rejected")."""

    async def main() -> None:
        attempts = 0

        async def handler(request: httpx.Request) -> httpx.Response:
            nonlocal attempts
            attempts += 1
            if isinstance(answer, int):
                return httpx.Response(answer)
            raise answer("no", request=request)

        # A long deadline: the retry schedule, not the deadline, ends the batch.
        async with pushing(handler, push_deadline=30.0, push_max_retries=3) as h:
            h.write("k")
            await h.agent.flush_pushes()
            [(_, batch, ok, reason)] = h.done
        delays = h.agent.core.retry_policy.delays(random.Random(7))
        assert not ok
        if retried:
            assert attempts == 1 + len(delays)
            assert reason == "failed"
            assert h.sample("mesh_push_retries_total") == len(delays)
        else:
            assert attempts == 1
            assert reason == "rejected"
            assert h.sample("mesh_push_retries_total") == 0
        assert h.sample("mesh_pushes_total", result=reason) == 1
        stats = h.agent.core.pushes.stats
        assert stats[f"dropped_{reason}"] == len(batch.routes) == 1
        assert batch.peer in h.agent.core.pushes.needs_repair

    run(main)


# --- retries and deadlines ---


def test_503_then_200_is_retried_and_delivered() -> None:
    async def main() -> None:
        answers = [503, 200]
        times: list[float] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            times.append(trio.current_time())
            status = answers.pop(0)
            return ack(request) if status == 200 else httpx.Response(status)

        async with pushing(handler) as h:
            h.write("k")
            await h.agent.flush_pushes()
        [(_, batch, ok, _)] = h.done
        assert ok
        assert len(times) == 2
        first_delay = h.agent.core.retry_policy.delays(random.Random(7))[0]
        assert times[1] - times[0] == pytest.approx(first_delay)
        assert h.sample("mesh_pushes_total", result="ok") == 1
        assert h.sample("mesh_push_retries_total") == 1
        assert h.agent.core.pushes.stats["delivered"] == 1
        assert batch.peer not in h.agent.core.pushes.needs_repair

    run(main)


def test_400_is_tried_exactly_once() -> None:
    async def main() -> None:
        attempts = 0

        async def handler(request: httpx.Request) -> httpx.Response:
            nonlocal attempts
            attempts += 1
            return httpx.Response(400, json={"error": "no"})

        async with pushing(handler) as h:
            start = trio.current_time()
            h.write("k")
            await h.agent.flush_pushes()
        assert attempts == 1
        [(at, _, ok, reason)] = h.done
        assert (ok, reason) == (False, "rejected")
        assert at == start  # no sleep: a permanent failure is not retried

    run(main)


def test_silent_peer_is_abandoned_exactly_at_the_batch_deadline() -> None:
    async def main() -> None:
        attempts: list[float] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            attempts.append(trio.current_time())
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        async with pushing(handler) as h:
            config = h.agent.config
            start = trio.current_time()
            for key in ("a", "b", "c"):
                h.write(key)  # "a" goes at once, "b" and "c" wait behind it
            await h.agent.flush_pushes()
        first, second = h.done[0], h.done[1]
        at, batch, ok, reason = first
        assert (ok, reason) == (False, "deadline")
        assert batch.deadline == pytest.approx(start + config.push_deadline)
        assert at == pytest.approx(batch.deadline)
        # Each attempt was cut at the request timeout, then retried after the
        # policy's delay, until the batch deadline cut the last one.
        delays = h.agent.core.retry_policy.delays(random.Random(7))
        expected = [start]
        while True:
            i = len(expected) - 1
            nxt = expected[-1] + config.push_request_timeout + delays[i]
            if nxt >= batch.deadline:
                break
            expected.append(nxt)
        assert attempts[: len(expected)] == pytest.approx(expected)
        assert attempts[len(expected)] == pytest.approx(batch.deadline)  # batch 2
        # The next batch ("b", "c") went out when the first ended, and met the
        # same fate one push_deadline later.
        at2, batch2, ok2, reason2 = second
        assert {r.key for r in batch2.routes} == {"b", "c"}
        assert (ok2, reason2) == (False, "deadline")
        assert at2 == pytest.approx(at + config.push_deadline)
        assert h.agent.core.pushes.stats["dropped_deadline"] == 3
        assert h.sample("mesh_pushes_total", result="deadline") == 2
        assert h.sample("mesh_push_dropped_total", reason="deadline") == 3
        assert h.pusher.statistics().tasks == 0

    run(main)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_total_retry_sleep_is_below_the_request_timeout(seed: int) -> None:
    async def main() -> None:
        times: list[float] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            times.append(trio.current_time())
            return httpx.Response(503)  # answered at once: gaps are the sleeps

        overrides: dict[str, Any] = {"push_deadline": 30.0, "push_max_retries": 50}
        async with pushing(handler, seed=seed, **overrides) as h:
            h.write("k")
            await h.agent.flush_pushes()
        [(_, _, ok, reason)] = h.done
        assert (ok, reason) == (False, "failed")
        slept = times[-1] - times[0]
        assert len(times) > 2
        assert slept <= h.agent.config.push_retry_budget
        assert slept < h.agent.config.push_request_timeout

    run(main)


def test_a_batch_waiting_for_a_slot_ends_at_its_deadline() -> None:
    """One slot, held by a request that hangs until the batch deadline: the
    other peer's batch waits for the slot and ends at its deadline, unsent;
    the slot is free again afterwards."""

    async def main() -> None:
        served: list[str] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            served.append(peer_name(request))
            if len(served) == 1:
                await trio.sleep_forever()
            return ack(request)

        # The request timeout as long as the deadline: the first attempt
        # holds the only slot to the end.
        overrides: dict[str, Any] = {
            "push_concurrency": 1,
            "push_request_timeout": 1.5,
            "push_deadline": 1.5,
        }
        async with pushing(handler, peers=2, **overrides) as h:
            start = trio.current_time()
            h.write("a")
            await h.agent.flush_pushes()
            assert len(served) == 1
            assert [(at, ok, reason) for at, _, ok, reason in h.done] == [
                (start + 1.5, False, "deadline"),
                (start + 1.5, False, "deadline"),
            ]
            stats = h.pusher.statistics()
            assert (stats.tasks, stats.requests_in_flight) == (0, 0)
            h.write("b")
            await h.agent.flush_pushes()
        assert [ok for _, _, ok, _ in h.done[2:]] == [True, True]
        assert h.pusher.statistics().max_requests_in_flight == 1

    run(main)


# --- fan-out and coalescing ---


def test_fan_out_to_200_peers_never_exceeds_push_concurrency() -> None:
    async def main() -> None:
        in_flight = 0
        peak = 0
        served: set[str] = set()

        async def handler(request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await trio.sleep(0.1)
            finally:
                in_flight -= 1
            served.add(peer_name(request))
            return ack(request)

        overrides: dict[str, Any] = {"push_concurrency": 16, "push_deadline": 10.0}
        async with pushing(handler, peers=200, **overrides) as h:
            start = trio.current_time()
            h.write("k")
            await h.agent.flush_pushes()
            elapsed = trio.current_time() - start
        assert peak == 16
        assert h.pusher.statistics().max_requests_in_flight == 16
        assert len(served) == 200
        assert h.sample("mesh_pushes_total", result="ok") == 200
        # 200 requests of 0.1 s, 16 at a time: ceil(200 / 16) rounds.
        assert elapsed == pytest.approx(13 * 0.1)

    run(main)


def test_burst_while_a_batch_is_in_flight_coalesces_into_one_batch() -> None:
    async def main() -> None:
        sizes: list[int] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            _, routes = decode_routes(request.content, max_routes=10_000)
            sizes.append(len(routes))
            await trio.sleep(0.1)  # in flight for a while
            return ack(request)

        async with pushing(handler) as h:
            h.write("key0", "http://first")
            await trio.testing.wait_all_tasks_blocked()
            assert sizes == [1]  # the first batch is at the peer
            for i in range(1000):
                h.write(f"key{i % 10}", f"http://t/{i}")
            assert h.agent.core.pushes.depth() == 10
            await h.agent.flush_pushes()
        assert sizes == [1, 10]
        last = h.done[-1][1]
        assert {r.key: r.target for r in last.routes} == {
            f"key{k}": f"http://t/{990 + k}" for k in range(10)
        }
        assert h.sample("mesh_push_coalesced_total") == 990
        assert h.sample("mesh_push_batch_size_count") == 2
        assert h.sample("mesh_push_batch_size_sum") == 11

    run(main)


def test_a_push_to_a_peer_declared_dead_ends_by_its_deadline() -> None:
    async def main() -> None:
        async def handler(request: httpx.Request) -> httpx.Response:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        async with pushing(handler) as h:
            start = trio.current_time()
            h.write("a")
            h.write("b")  # queued behind the batch in flight
            await trio.testing.wait_all_tasks_blocked()
            h.agent.receive(("127.0.0.2", 10_000), [Dead(1, "peer-10000", "x")])
            pushes = h.agent.core.pushes
            assert "peer-10000" not in pushes
            assert pushes.stats["dropped_peer_dead"] == 2
            await h.agent.flush_pushes()  # nothing left for anyone: at once
            assert trio.current_time() == start
            assert h.pusher.statistics().tasks == 1
            with trio.fail_after(h.agent.config.push_deadline + 1):
                while h.pusher.statistics().tasks:
                    await h.agent.wait_push_progress()
        [(at, _, _, reason)] = h.done
        assert reason == "deadline"
        assert at == pytest.approx(start + h.agent.config.push_deadline)
        # Its report was ignored: nothing more was counted as dropped.
        assert pushes.stats["dropped_peer_dead"] == 2
        assert "dropped_deadline" not in pushes.stats

    run(main)


# --- the peer side, back to back ---


def test_push_to_a_real_peer_app_applies_and_acks() -> None:
    async def main() -> None:
        peer = Agent(
            local_config("peer-10000"),
            addr=("127.0.0.2", 10_000),
            now=trio.current_time(),
        )
        app = make_peer_app(
            name=peer.core.name,
            handle_exchange=peer.handle_exchange,
            metrics=peer.metrics,
            log=peer.log,
            max_members=100,
            handle_routes=peer.receive_routes,
        )
        transport = httpx.ASGITransport(app=app)

        async def handler(request: httpx.Request) -> httpx.Response:
            return await transport.handle_async_request(request)

        async with pushing(handler) as h:
            h.write("svc.a", "http://a")
            h.agent.put_route("svc.b", "http://b", {"zone": "z"}, 7)
            h.agent.delete_route("svc.a", None)
            await h.agent.flush_pushes()
        assert all(ok for _, _, ok, _ in h.done)
        b = peer.core.routes.get("svc.b")
        assert b is not None
        assert (b.target, dict(b.meta), b.version.revision) == (
            "http://b",
            {"zone": "z"},
            7,
        )
        a = peer.core.routes.get("svc.a")
        assert a is not None
        assert a.deleted
        assert h.agent.core.routes.get("svc.a") == a
        received = peer.metrics.registry.get_sample_value(
            "mesh_routes_received_total", {"outcome": "applied"}
        )
        assert received == 3

    run(main)


def test_the_request_is_prebuilt_with_the_client_timeouts() -> None:
    """Sent as built (no client default headers for both ends to validate),
    with the client's timeouts for the transport to apply per phase."""

    async def main() -> None:
        requests: list[httpx.Request] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            requests.append(request)
            return ack(request)

        async with pushing(handler) as h:
            h.write("k")
            await h.agent.flush_pushes()
            h.write("k", "http://other")
            await h.agent.flush_pushes()
        assert all(ok for _, _, ok, _ in h.done)
        timeout = httpx.Timeout(h.agent.config.push_request_timeout).as_dict()
        for request in requests:
            assert request.method == "POST"
            assert request.url.path == ROUTES_PATH
            assert sorted(request.headers.keys()) == [
                "content-length",
                "content-type",
                "host",
            ]
            assert request.headers["content-type"] == "application/msgpack"
            assert request.extensions["timeout"] == timeout

    run(main)


class Chunks(httpx.AsyncByteStream):
    """A body of unknown length, in chunks; a plain iterator, like the h11
    transport's (nothing left to finalize when the reader stops early)."""

    def __init__(self, data: bytes, size: int) -> None:
        self._chunks = [data[i : i + size] for i in range(0, len(data), size)]

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)


@pytest.mark.parametrize("declared", [True, False])
def test_an_ack_over_the_size_limit_is_rejected(declared: bool) -> None:
    """Past ACK_LIMIT, whether its length is declared or it streams in."""

    async def main() -> None:
        attempts = 0

        async def handler(request: httpx.Request) -> httpx.Response:
            nonlocal attempts
            attempts += 1
            _, routes = decode_routes(request.content, max_routes=10_000)
            # a valid ack, padded past the limit
            body = encode_routes_ack(len(routes), {}) + b"\x00" * ACK_LIMIT
            if declared:
                return httpx.Response(200, content=body)
            return httpx.Response(200, stream=Chunks(body, 512))

        async with pushing(handler) as h:
            h.write("k")
            await h.agent.flush_pushes()
        [(_, _, ok, reason)] = h.done
        assert (ok, reason) == (False, "rejected")
        assert attempts == 1

    run(main)


def test_a_200_that_is_not_an_ack_is_rejected() -> None:
    """Something else on the peer's port answering 200 is not a delivery."""

    async def main() -> None:
        async def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"hello": "world"})

        async with pushing(handler) as h:
            h.write("k")
            await h.agent.flush_pushes()
        [(_, _, ok, reason)] = h.done
        assert (ok, reason) == (False, "rejected")

    run(main)


async def test_peer_app_refuses_a_bad_batch_and_counts_it() -> None:
    peer = Agent(local_config("peer"), addr=("127.0.0.2", 1), now=0.0)
    app = make_peer_app(
        name="peer",
        handle_exchange=peer.handle_exchange,
        metrics=peer.metrics,
        log=peer.log,
        max_members=100,
        handle_routes=peer.receive_routes,
    )
    good = Route(
        "k", "http://t", {}, Version(0, int(time.time() * 1000) << 16, "other")
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://peer"
    ) as client:
        bad = await client.post(ROUTES_PATH, content=b"\xc1")
        ok = await client.post(ROUTES_PATH, content=encode_routes("other", [good]))
        wrong = await client.get(ROUTES_PATH)
    assert bad.status_code == 400
    refused = peer.metrics.registry.get_sample_value(
        "mesh_route_batches_refused_total", {"reason": "malformed"}
    )
    assert refused == 1
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "application/msgpack"
    assert decode_routes_ack(ok.content) == {"received": 1, "applied": 1}
    assert wrong.status_code == 405


def test_peers_handed_the_same_routes_share_one_encoded_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write goes to every peer as the same routes: it is encoded once.
    A later write (other routes) is encoded afresh, and each peer still
    decodes exactly what was written to it."""
    from mesh.shell import pusher as pusher_module

    encoded: list[int] = []
    real = pusher_module.encode_routes

    def counting(sender: str, routes: Any) -> bytes:
        encoded.append(len(routes))
        return real(sender, routes)

    monkeypatch.setattr(pusher_module, "encode_routes", counting)

    async def main() -> None:
        got: dict[str, list[list[str]]] = {}

        async def handler(request: httpx.Request) -> httpx.Response:
            _, routes = decode_routes(request.content, max_routes=10_000)
            got.setdefault(peer_name(request), []).append([r.target for r in routes])
            return ack(request)

        async with pushing(handler, peers=3) as h:
            h.write("k1", "http://one")
            await h.agent.flush_pushes()
            h.write("k1", "http://two")
            await h.agent.flush_pushes()
        assert encoded == [1, 1]  # one body per write, not one per peer
        assert len(got) == 3
        assert all(v == [["http://one"], ["http://two"]] for v in got.values())

    run(main)

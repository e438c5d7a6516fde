"""The embedding API (``mesh.open_node``) on real sockets (127.0.0.1, port 0),
and the documented example, executed as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import mesh
from mesh.embed import RouteError

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 15.0


def config(name: str, **overrides: Any) -> mesh.Config:
    return mesh.Config.local(
        name=name, bind=("127.0.0.1", 0), http=("127.0.0.1", 0), **overrides
    )


async def wait_for(check: Callable[[], bool]) -> None:
    """Until ``check`` holds: gossip reaches the other node with no event we
    could await from here."""
    with trio.fail_after(DEADLINE):
        while not check():  # noqa: ASYNC110 - no event to await, see docstring
            await trio.sleep(0.02)


async def wait_until_left(observer: mesh.Node, name: str) -> None:
    """Until ``observer`` holds ``name`` as left (a graceful leave, not dead)."""
    await wait_for(
        lambda: (
            [m.status for m in observer.members() if m.name == name]
            == [mesh.MemberStatus.LEFT]
        )
    )


async def test_two_nodes_replicate_and_watch() -> None:
    async with mesh.open_node(config("a")) as a:
        async with mesh.open_node(config("b", join=(a.address,))) as b:
            await wait_for(lambda: [m.name for m in a.members()] == ["a", "b"])
            assert {m.status for m in b.members()} == {mesh.MemberStatus.ALIVE}
            watch = b.watch_routes(prefix="svc.")
            first = await anext(watch)
            assert first.snapshot
            assert first.routes == []
            route = await a.put_route("svc.x", "http://t", meta={"az": "1"})
            assert a.get_route("svc.x") == route
            with trio.fail_after(DEADLINE):
                batch = await anext(watch)
            assert [e.key for e in batch.events] == ["svc.x"]
            assert b.get_route("svc.x") == route
            await a.delete_route("svc.x", sync_timeout=5)
            assert a.last_sync is not None
            assert a.last_sync.acked == ["b"]
            assert a.get_route("svc.x") is None
            with trio.fail_after(DEADLINE):
                batch = await anext(watch)
            assert batch.events[0].deleted
            assert b.get_route("svc.x") is None
        # b left gracefully: a saw it leave, not die
        await wait_until_left(a, "b")


async def test_wait_ready_returns_once_a_joiner_takes_writes() -> None:
    async with mesh.open_node(config("a")) as a:
        await a.put_route("k", "http://t", revision=5)
        async with mesh.open_node(config("b", join=(a.address,))) as b:
            with trio.fail_after(DEADLINE):
                await b.wait_ready()
            health = b.health()
            assert health["ready"]
            assert health["joined"]
            assert b.get_route("k") is not None  # pulled before it is ready
            await b.put_route("j", "http://t")  # taken at once, no retry


async def test_rejected_writes_raise() -> None:
    async with mesh.open_node(config("a")) as a:
        await a.put_route("k", "t", revision=5)
        with pytest.raises(RouteError) as info:
            await a.put_route("k", "t", revision=4)
        assert info.value.status == "conflict"
        assert info.value.current is not None
        with pytest.raises(RouteError) as info:
            await a.put_route("bad key!", "t")
        assert info.value.status == "invalid"


async def test_a_client_leave_ends_the_block_and_the_node_leaves_gracefully() -> None:
    reached_after_leave = False
    async with mesh.open_node(config("a")) as a:
        async with mesh.open_node(config("b", join=(a.address,))) as b:
            with trio.fail_after(DEADLINE):
                await b.wait_ready()  # a joiner takes writes once caught up
            await b.put_route("k", "t")
            async with httpx.AsyncClient(trust_env=False) as client:
                response = await client.get(f"http://{b.http_address}/v1/routes/k")
                assert response.json()["target"] == "t"
                assert b.health()["ready"] is True
                watch = b.watch_routes()
                assert (await anext(watch)).snapshot
                response = await client.post(f"http://{b.http_address}/v1/leave")
                assert response.status_code == 200
            with trio.fail_after(DEADLINE):
                await trio.sleep_forever()  # cancelled by the leave
            reached_after_leave = True
        # As mesh agent exits: the block ended, the node left, gracefully.
        assert not reached_after_leave
        assert b.leave_requested
        assert not a.leave_requested
        with trio.fail_after(DEADLINE):
            with pytest.raises(StopAsyncIteration):
                await anext(watch)
        assert b.health()["reasons"] == ["leaving"]
        with trio.fail_after(DEADLINE), pytest.raises(RouteError) as info:
            await b.wait_ready()  # it will never be ready: no endless wait
        assert info.value.status == "unavailable"
        await wait_until_left(a, "b")


async def test_a_bad_sync_timeout_is_refused_before_the_write() -> None:
    async with mesh.open_node(config("a")) as a:
        maximum = a._agent.config.sync_timeout_max
        index = a.index
        for bad in (-1, 0, maximum + 1, float("nan"), float("inf"), True, "1"):
            with pytest.raises(RouteError) as info:
                await a.put_route("k", "t", sync_timeout=bad)  # type: ignore[arg-type]
            assert info.value.status == "invalid"
            assert "sync_timeout" in str(info.value)
            with pytest.raises(RouteError):
                await a.delete_route("k", sync_timeout=bad)  # type: ignore[arg-type]
        assert a.index == index  # nothing written, not even a tombstone
        await a.put_route("k", "t", sync_timeout=maximum)  # alone: nobody to wait for
        assert a.get_route("k") is not None


def test_documented_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "embed.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("a listening: mesh=127.0.0.1:")
    assert "a wrote svc.api; acked by ['b']" in lines
    assert "b sees svc.api -> http://10.0.0.7:8080" in lines
    assert lines[-1] == "both nodes left the mesh"


class _AppFailedError(RuntimeError):
    pass


async def test_an_exception_out_of_the_block_comes_out_as_raised() -> None:
    """Audit 7: it came out wrapped in four exception groups, one per nursery
    of the node, so ``except RuntimeError`` did not catch it."""
    cause = KeyError("why")
    boom = _AppFailedError("the application failed")
    with pytest.raises(_AppFailedError) as info:
        async with mesh.open_node(config("a")):
            raise boom from cause
    assert info.value is boom
    assert boom.__cause__ is cause  # the application's chain, untouched

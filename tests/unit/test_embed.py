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
        assert b.health()["reasons"] == ["stopped"]  # its block is over
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


async def test_an_exception_group_out_of_the_block_comes_out_as_raised() -> None:
    """Audit of session 14: a group the block raised (its own nursery's)
    came out inside five more, one per nursery of the node."""
    mine = ExceptionGroup("mine", [ValueError("x")])
    with pytest.raises(ExceptionGroup) as info:
        async with mesh.open_node(config("a")):
            raise mine
    assert info.value is mine


@pytest.mark.parametrize("revision", [1.5, True, "3", -1, 2**64])
async def test_a_revision_that_is_not_a_u64_integer_is_invalid(
    revision: object,
) -> None:
    """Audit of session 14: 1.5 and True were stored, and every peer then
    refused the batches that carried them (a joiner never got ready); "3"
    raised a TypeError from inside the table. The HTTP API answers 400."""
    async with mesh.open_node(config("a")) as a:
        index = a.index
        with pytest.raises(RouteError) as put:
            await a.put_route("k", "t", revision=revision)  # type: ignore[arg-type]
        with pytest.raises(RouteError) as delete:
            await a.delete_route("k", revision=revision)  # type: ignore[arg-type]
        for info in (put, delete):
            assert info.value.status == "invalid"
            assert "revision must be an integer in 0..2**64-1" in str(info.value)
            assert info.value.current is None
        assert a.index == index


async def test_meta_that_is_not_a_mapping_is_invalid() -> None:
    async with mesh.open_node(config("a")) as a:
        with pytest.raises(RouteError) as info:
            await a.put_route("k", "t", meta=[("k", "v")])  # type: ignore[arg-type]
        assert info.value.status == "invalid"
        assert a.get_route("k") is None


async def test_returned_routes_cannot_change_the_table() -> None:
    """Audit of session 14: a route's meta was the table's own dict, so
    changing it changed the stored route under an unchanged version, and no
    anti-entropy round could repair the other replicas."""
    async with mesh.open_node(config("a")) as a:
        written = await a.put_route("k", "t", meta={"tok": "v1"})
        watch = a.watch_routes()
        snapshot = await anext(watch)
        await a.put_route("k", "t2", meta={"tok": "v2"})
        change = await anext(watch)
        await a.delete_route("k", revision=0)
        await a.put_route("k", "t4", meta={"tok": "v4"}, revision=1)
        with pytest.raises(RouteError) as conflict:
            await a.put_route("k", "t5", revision=0)  # older: a conflict
        current = conflict.value.current
        assert current is not None
        held = (
            written,
            a.get_route("k"),
            a.routes()[0],
            snapshot.routes[0],
            change.events[0].route,
            current,
        )
        for route in held:
            assert route is not None
            with pytest.raises(TypeError):
                route.meta["evil"] = "x"  # type: ignore[index]
        assert a.get_route("k").meta == {"tok": "v4"}  # type: ignore[union-attr]
        assert a.get_route("k") == current  # equal by value, as before


async def test_arguments_of_the_wrong_type_raise_a_type_error_naming_them() -> None:
    async with mesh.open_node(config("a")) as a:
        for call, name in (
            (lambda: a.get_route(5), "key"),  # type: ignore[arg-type]
            (lambda: a.routes(prefix=5), "prefix"),  # type: ignore[arg-type]
            (lambda: a.watch_routes(prefix=5), "prefix"),  # type: ignore[arg-type]
            (lambda: a.watch_routes(index="x"), "index"),  # type: ignore[arg-type]
        ):
            with pytest.raises(TypeError, match=name):
                call()


async def test_a_node_whose_block_raised_is_stopped_for_its_callers() -> None:
    """Audit of session 14: after the block raised, the node still said it
    was ready and took writes, and a task outside the block waiting for it
    (ready, a watch) waited for good."""
    outcomes: dict[str, object] = {}

    async def wait_outside(node: mesh.Node, started: trio.Event) -> None:
        watch = node.watch_routes()
        await anext(watch)  # the snapshot
        started.set()
        try:
            await node.wait_ready()  # never ready: its seed does not answer
        except RouteError as exc:
            outcomes["wait_ready"] = exc.status
        outcomes["watch"] = [batch async for batch in watch]

    nodes: list[mesh.Node] = []

    async def fail(outside: trio.Nursery) -> None:
        async with mesh.open_node(config("c", join=("127.0.0.1:9",))) as node:
            nodes.append(node)
            started = trio.Event()
            outside.start_soon(wait_outside, node, started)
            await started.wait()
            raise KeyError("the application failed")

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as outside:
            with pytest.raises(KeyError):
                await fail(outside)
    (c,) = nodes
    assert outcomes == {"wait_ready": "unavailable", "watch": []}
    assert c.health()["ready"] is False
    assert "stopped" in c.health()["reasons"]
    with pytest.raises(RouteError) as info:
        await c.put_route("k", "t")
    assert info.value.status == "unavailable"
    assert "stopped" in str(info.value)


async def test_a_cancelled_watch_raises_a_plain_cancelled() -> None:
    """Audit of session 14: ``anext`` cancelled from outside raised a group
    of two Cancelled (a nursery inside), which ``except trio.Cancelled``
    does not catch."""
    async with mesh.open_node(config("a")) as a:
        watch = a.watch_routes()
        assert (await anext(watch)).snapshot
        caught: list[BaseException] = []
        with trio.move_on_after(0.05):
            try:
                await anext(watch)  # nothing changes: waits
            except trio.Cancelled as exc:
                caught.append(exc)
                raise
        assert len(caught) == 1
        await a.put_route("k", "t")  # the watch goes on after the cancel
        with trio.fail_after(DEADLINE):
            batch = await anext(watch)
        assert [e.key for e in batch.events] == ["k"]

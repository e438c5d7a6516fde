"""The routes endpoints of the client API, in-process through
``httpx.ASGITransport``: every status code and error shape of the contract,
batch results in order, and ``sync=all`` waiting on pushes (on trio's MockClock,
so "at once" and "after the timeout" are exact)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
import trio
import trio.testing
from hypothesis import given, strategies as st

from mesh.core.effects import Push
from mesh.core.routes import Route, Write
from mesh.messages import Alive
from mesh.shell.agent import Agent
from mesh.shell.api import make_api_app
from mesh.shell.routes_api import (
    BATCH_BODY_LIMIT,
    BATCH_MAX_ITEMS,
    _batch_item,
    _typed_puts,
    routes_endpoints,
)
from mesh.shell.watch_api import LIST_SLICE_ROUTES, encode_route_list

from .conftest import MakeAgent


def routes_client(agent: Agent) -> httpx.AsyncClient:
    app = make_api_app(agent, routes=routes_endpoints(agent))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mesh.test"
    )


@pytest.fixture
async def agent(make_agent: MakeAgent) -> Agent:
    # No timer loop runs in these tests, and nothing else would release a
    # batch held back by push_min_interval (tests/unit/core covers it).
    return make_agent("self", push_min_interval=0.0)


@pytest.fixture
async def client(agent: Agent) -> AsyncIterator[httpx.AsyncClient]:
    async with routes_client(agent) as c:
        yield c


def writes(agent: Agent, result: str) -> float:
    value = agent.metrics.registry.get_sample_value(
        "mesh_route_writes_total", {"result": result}
    )
    return value or 0.0


# --- single-item calls ---


async def test_put_returns_the_stored_route(
    agent: Agent, client: httpx.AsyncClient
) -> None:
    response = await client.put(
        "/v1/routes/svc.a", json={"target": "http://a:80", "meta": {"zone": "z1"}}
    )
    assert response.status_code == 200
    route = response.json()
    assert set(route) == {"key", "target", "meta", "version", "origin", "revision"}
    assert route["key"] == "svc.a"
    assert route["target"] == "http://a:80"
    assert route["meta"] == {"zone": "z1"}
    assert route["origin"] == "self"
    assert route["revision"] == 0
    assert isinstance(route["version"], str)
    fetched = await client.get("/v1/routes/svc.a")
    assert fetched.status_code == 200
    assert fetched.json() == route
    assert writes(agent, "applied") == 1


async def test_versions_increase_with_each_write(client: httpx.AsyncClient) -> None:
    versions = []
    for target in ("http://1", "http://2", "http://3"):
        response = await client.put("/v1/routes/k", json={"target": target})
        versions.append(response.json()["version"])
    assert versions == sorted(versions)
    assert len(set(versions)) == 3


async def test_revision_orders_writes_and_stale_is_409(
    agent: Agent, client: httpx.AsyncClient
) -> None:
    first = await client.put("/v1/routes/k", json={"target": "http://a", "revision": 5})
    assert first.status_code == 200
    assert first.json()["revision"] == 5
    stale = await client.put("/v1/routes/k", json={"target": "http://b", "revision": 4})
    assert stale.status_code == 409
    body = stale.json()
    assert set(body) == {"error", "current"}
    assert body["current"] == first.json()
    same = await client.put("/v1/routes/k", json={"target": "http://c", "revision": 5})
    assert same.status_code == 200
    unrevised = await client.put("/v1/routes/k", json={"target": "http://d"})
    assert unrevised.json()["revision"] == 5  # inherits the stored revision
    assert (await client.get("/v1/routes/k")).json()["target"] == "http://d"
    assert writes(agent, "conflict") == 1


async def test_url_encoded_key_is_decoded(client: httpx.AsyncClient) -> None:
    response = await client.put("/v1/routes/a%3Ab%40c", json={"target": "http://x"})
    assert response.status_code == 200
    assert response.json()["key"] == "a:b@c"
    assert (await client.get("/v1/routes/a:b@c")).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"target": "http://x", "color": "red"},  # unknown field
        {"target": "http://x", "key": "k"},  # the key is in the path
        {},  # target missing
        {"target": ""},
        {"target": "x" * 1025},
        {"target": 7},
        {"target": None},
        {"target": "http://x", "meta": ["a"]},
        {"target": "http://x", "meta": {"a": 1}},
        {"target": "http://x", "meta": {f"k{i}": "v" for i in range(33)}},
        {"target": "http://x", "meta": {"k": "v" * 257}},
        {"target": "http://x", "revision": True},
        {"target": "http://x", "revision": -1},
        {"target": "http://x", "revision": 1.0},
        {"target": "http://x", "revision": "3"},
        {"target": "http://x", "revision": 2**64},
        ["http://x"],
        "http://x",
    ],
)
async def test_invalid_put_is_400_and_changes_nothing(
    agent: Agent, client: httpx.AsyncClient, body: Any
) -> None:
    response = await client.put("/v1/routes/k", json=body)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert (await client.get("/v1/routes/k")).status_code == 404
    assert len(agent.core.routes) == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"target": "\\ud800"}',
        b'{"target": "http://x", "meta": {"k": "\\udfff"}}',
        b'{"target": "http://x", "meta": {"\\udc80": "v"}}',
    ],
)
async def test_lone_surrogates_are_400(
    agent: Agent, client: httpx.AsyncClient, body: bytes
) -> None:
    # Valid JSON, but not Unicode that msgpack (or any UTF-8 encoder) can
    # carry: stored, it would crash every push of it to a peer.
    response = await client.put("/v1/routes/k", content=body)
    assert response.status_code == 400
    assert "surrogate" in response.json()["error"]
    batch = b'{"put": [{"key": "k", "target": "ok", "meta": {"\\ud800": "v"}}]}'
    response = await client.post("/v1/routes", content=batch)
    assert response.status_code == 200
    assert response.json()["results"][0]["status"] == 400
    assert len(agent.core.routes) == 0


async def test_an_error_echoing_a_lone_surrogate_is_still_json(
    client: httpx.AsyncClient,
) -> None:
    # The error names the unknown field, which UTF-8 cannot carry: the
    # answer falls back to an encoder that escapes it, rather than a 500.
    response = await client.put(
        "/v1/routes/k", content=b'{"target": "t", "\\ud800x": 1}'
    )
    assert response.status_code == 400
    assert response.content.endswith(b'"unknown fields: \\ud800x"}')
    assert response.json() == {"error": "unknown fields: \ud800x"}


async def test_answers_are_utf_8(client: httpx.AsyncClient) -> None:
    response = await client.put(
        "/v1/routes/k", json={"target": "http://é.example", "meta": {"ключ": "値"}}
    )
    assert response.status_code == 200
    assert '"target":"http://é.example"'.encode() in response.content
    assert response.json()["meta"] == {"ключ": "値"}


async def test_optional_fields_may_be_null(client: httpx.AsyncClient) -> None:
    response = await client.put(
        "/v1/routes/k", json={"target": "http://x", "meta": None, "revision": None}
    )
    assert response.status_code == 200
    assert response.json()["meta"] == {}


async def test_limits_at_the_edge_are_accepted(client: httpx.AsyncClient) -> None:
    body = {
        "target": "t" * 1024,
        "meta": {f"{i:03d}" + "k" * 253: "v" * 256 for i in range(32)},
        "revision": 2**64 - 1,
    }
    response = await client.put("/v1/routes/" + "k" * 253, json=body)
    assert response.status_code == 200


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.put("/v1/routes/k", content=b"{not json")
    assert response.status_code == 400
    assert "error" in response.json()


@pytest.mark.parametrize(
    "key",
    ["-leading-dash", "a%20b", "caf%C3%A9", "k" * 254, "a%2Fb", "a%2fb", ".dot"],
)
async def test_invalid_key_in_the_path_is_400(
    client: httpx.AsyncClient, key: str
) -> None:
    for method in ("GET", "PUT", "DELETE"):
        kw: dict[str, Any] = {"json": {"target": "http://x"}} if method == "PUT" else {}
        response = await client.request(method, f"/v1/routes/{key}", **kw)
        # "a%2Fb" is one path segment that decodes to the key "a/b": invalid
        assert response.status_code == 400
        assert "error" in response.json()


async def test_put_over_64_kib_is_413(client: httpx.AsyncClient) -> None:
    body = json.dumps({"target": "http://x", "pad": "x" * (64 * 1024)}).encode()
    response = await client.put("/v1/routes/k", content=body)
    assert response.status_code == 413
    assert "error" in response.json()


async def test_full_table_is_507(make_agent: MakeAgent) -> None:
    agent = make_agent("self", max_routes=2)
    async with routes_client(agent) as client:
        for key in ("a", "b"):
            ok = await client.put(f"/v1/routes/{key}", json={"target": "http://x"})
            assert ok.status_code == 200
        full = await client.put("/v1/routes/c", json={"target": "http://x"})
        assert full.status_code == 507
        assert set(full.json()) == {"error"}
        again = await client.put("/v1/routes/a", json={"target": "http://y"})
        assert again.status_code == 200  # an existing key still takes writes
    assert writes(agent, "full") == 1


async def test_writes_before_the_member_caught_up_are_503(
    make_agent: MakeAgent,
) -> None:
    # Not joined yet (its seed never answers here): it cannot know the stored
    # revision a write inherits or is checked against (audit 11).
    agent = make_agent("self", join=("127.0.0.1:7999",))
    index = agent.core.routes.index
    async with routes_client(agent) as client:
        put = await client.put("/v1/routes/a", json={"target": "http://x"})
        delete = await client.delete("/v1/routes/a")
        batch = await client.post(
            "/v1/routes", json={"put": [{"key": "b", "target": "http://x"}]}
        )
        for response in (put, delete, batch):
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            error = response.json()["error"]
            assert error.startswith("this member has not caught up with the mesh")
            assert "(not joined)" in error
        assert agent.core.routes.index == index  # nothing written
        # reads still answer, from what it has
        assert (await client.get("/v1/routes/a")).status_code == 404
    assert writes(agent, "unavailable") == 3
    assert writes(agent, "applied") == 0


async def test_writes_while_the_member_leaves_are_503(
    agent: Agent, client: httpx.AsyncClient
) -> None:
    # Its last pushes are being flushed: a write taken now could go with it
    # (audit 12: the last 1-2 writes acknowledged during a leave were lost).
    assert (await client.put("/v1/routes/a", json={"target": "http://x"})).is_success
    agent.core.leave(trio.current_time())
    put = await client.put("/v1/routes/b", json={"target": "http://x"})
    batch = await client.post("/v1/routes", json={"delete": [{"key": "a"}]})
    for response in (put, batch):
        assert response.status_code == 503
        assert "leaving the mesh" in response.json()["error"]
    assert (await client.get("/v1/routes/a")).status_code == 200  # reads answer
    assert writes(agent, "unavailable") == 2


async def test_get_unknown_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/routes/nothing-here")
    assert response.status_code == 404
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/v1/routes/k", "DELETE, GET, HEAD, PUT"),
        ("PATCH", "/v1/routes/k", "DELETE, GET, HEAD, PUT"),
        ("PUT", "/v1/routes", "GET, HEAD, POST"),
        ("DELETE", "/v1/routes", "GET, HEAD, POST"),
    ],
)
async def test_wrong_method_is_405(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert set(response.json()) == {"error"}


async def test_head_answers_as_get_does_without_waiting(
    agent: Agent, client: httpx.AsyncClient
) -> None:
    # RFC 9110: HEAD wherever GET works, same status and headers (the server
    # drops the body: test_http_server). Used to be 405 everywhere.
    await client.put("/v1/routes/k", json={"target": "http://x"})
    for path in (
        "/v1/health",
        "/v1/members",
        "/v1/routes",
        "/v1/routes?prefix=k",
        "/v1/routes/k",
        "/v1/routes/missing",
        "/v1/routes/bad%20key",
    ):
        get = await client.get(path)
        head = await client.head(path)
        assert head.status_code == get.status_code, path
        assert head.headers == get.headers, path
    metrics = await client.head("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    sample = agent.metrics.registry.get_sample_value(
        "mesh_api_requests_total",
        {"method": "HEAD", "path": "/v1/routes/{key}", "code": "404"},
    )
    assert sample == 1


async def test_delete_leaves_a_tombstone_that_reads_as_404(
    agent: Agent, client: httpx.AsyncClient
) -> None:
    put = await client.put("/v1/routes/k", json={"target": "http://x"})
    response = await client.delete("/v1/routes/k")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"key", "deleted", "version"}
    assert body["key"] == "k"
    assert body["deleted"] is True
    assert body["version"] > put.json()["version"]
    assert (await client.get("/v1/routes/k")).status_code == 404
    listing = (await client.get("/v1/routes")).json()
    assert (listing["routes"], listing["count"]) == ([], 0)
    tombstone = agent.core.routes.get("k")
    assert tombstone is not None
    assert tombstone.deleted
    samples = agent.metrics.registry
    assert samples.get_sample_value("mesh_routes", {"state": "tombstone"}) == 1
    assert samples.get_sample_value("mesh_routes", {"state": "live"}) == 0


async def test_delete_with_a_stale_revision_is_409(client: httpx.AsyncClient) -> None:
    put = await client.put("/v1/routes/k", json={"target": "http://x", "revision": 9})
    stale = await client.delete("/v1/routes/k", params={"revision": "8"})
    assert stale.status_code == 409
    assert stale.json()["current"] == put.json()
    assert (await client.get("/v1/routes/k")).status_code == 200
    newer = await client.delete("/v1/routes/k", params={"revision": "9"})
    assert newer.status_code == 200
    # A write older than the tombstone cannot resurrect the key.
    old = await client.put("/v1/routes/k", json={"target": "http://y", "revision": 8})
    assert old.status_code == 409
    assert old.json()["current"]["deleted"] is True
    assert (await client.get("/v1/routes/k")).status_code == 404


@pytest.mark.parametrize(
    "revision",
    ["abc", "-1", "1.5", "", " 1", "1" * 21, str(2**64), "9" * 5000, "\u0665"],
)
async def test_delete_with_a_bad_revision_is_400(
    client: httpx.AsyncClient, revision: str
) -> None:
    """Every refusal names the range, whatever is wrong with the number
    (black-box audit, session 14: past 20 characters it said something else)."""
    await client.put("/v1/routes/k", json={"target": "http://x"})
    response = await client.delete("/v1/routes/k", params={"revision": revision})
    assert response.status_code == 400
    assert "revision must be an integer in 0..2**64-1" in response.json()["error"]
    assert (await client.get("/v1/routes/k")).status_code == 200


@pytest.mark.parametrize(
    ("revision", "status"),
    [("0" * 30 + "5", 200), ("0" * 30 + "4", 409), (str(2**64 - 1), 200)],
)
async def test_a_delete_revision_may_have_leading_zeros(
    client: httpx.AsyncClient, revision: str, status: int
) -> None:
    await client.put("/v1/routes/k", json={"target": "http://x", "revision": 5})
    response = await client.delete("/v1/routes/k", params={"revision": revision})
    assert response.status_code == status


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"revision": 3}', 400),  # a condition in the body: never ignored
        (b"garbage{", 400),
        (b"[]", 400),
        (b"", 200),
        (b" \r\n", 200),
        (b"{}", 200),  # what some clients send by default: says nothing
        (b"null", 200),  # JSON null means absent, here too (audit, session 14)
        (b'{"revision": null}', 200),
        (b'{"revision": null, "key": "k"}', 400),
    ],
)
async def test_a_delete_with_a_body_saying_something_is_400(
    client: httpx.AsyncClient, body: bytes, status: int
) -> None:
    """A revision sent in a DELETE's body, the shape of a batch item, must
    not make the delete unconditional by being ignored (black-box audit,
    session 13): the route stays, and the answer says where it goes."""
    await client.put("/v1/routes/k", json={"target": "http://x", "revision": 5})
    response = await client.request("DELETE", "/v1/routes/k", content=body)
    assert response.status_code == status
    left = await client.get("/v1/routes/k")
    if status == 400:
        assert (
            "?revision=" in response.json()["error"]
            or "malformed" in (response.json()["error"])
        )
        assert left.status_code == 200
    else:
        assert left.status_code == 404


async def test_list_is_live_sorted_and_filtered(client: httpx.AsyncClient) -> None:
    for key in ("b.2", "a.1", "b.1", "c.1"):
        await client.put(f"/v1/routes/{key}", json={"target": f"http://{key}"})
    await client.delete("/v1/routes/c.1")
    everything = (await client.get("/v1/routes")).json()
    assert [r["key"] for r in everything["routes"]] == ["a.1", "b.1", "b.2"]
    assert everything["count"] == 3
    only_b = (await client.get("/v1/routes", params={"prefix": "b."})).json()
    assert [r["key"] for r in only_b["routes"]] == ["b.1", "b.2"]
    assert only_b["count"] == 2
    assert only_b["routes"][0]["target"] == "http://b.1"


# --- the batch call ---


async def test_batch_results_are_in_order_puts_then_deletes(
    client: httpx.AsyncClient,
) -> None:
    await client.put("/v1/routes/old", json={"target": "http://o", "revision": 3})
    await client.put("/v1/routes/gone", json={"target": "http://g"})
    body = {
        "put": [
            {"key": "a", "target": "http://a", "meta": {"m": "1"}},
            {"key": "bad key", "target": "http://b"},
            {"key": "old", "target": "http://o2", "revision": 2},
            {"key": "c", "target": "http://c", "extra": 1},
            "not an object",
            {"key": "d", "target": "http://d", "revision": 4},
        ],
        "delete": [
            {"key": "gone"},
            {"key": "old", "revision": 1},
            {"key": "e", "revision": -1},
        ],
    }
    response = await client.post("/v1/routes", json=body)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["key"], r["status"]) for r in results] == [
        ("a", 200),
        ("bad key", 400),  # echoed as sent
        ("old", 409),
        ("c", 400),
        (None, 400),
        ("d", 200),
        ("gone", 200),
        ("old", 409),
        ("e", 400),
    ]
    # Each is what the single call answers, with key and status added.
    single = (await client.get("/v1/routes/a")).json()
    assert results[0] == {"status": 200, **single}
    assert results[2]["current"]["revision"] == 3
    assert set(results[3]) == {"key", "status", "error"}
    assert set(results[6]) == {"key", "status", "deleted", "version"}
    assert results[6]["deleted"] is True
    assert (await client.get("/v1/routes/gone")).status_code == 404
    assert (await client.get("/v1/routes/c")).status_code == 404


async def test_empty_batch(client: httpx.AsyncClient) -> None:
    bodies: list[dict[str, Any]] = [{}, {"put": [], "delete": []}, {"put": None}]
    for body in bodies:
        response = await client.post("/v1/routes", json=body)
        assert response.status_code == 200
        assert response.json() == {"results": []}


@pytest.mark.parametrize(
    "body",
    [
        {"put": [], "upsert": []},
        {"put": {"key": "a"}},
        {"delete": "a"},
        [],
        {"put": [{"key": f"k{i}", "target": "t"} for i in range(BATCH_MAX_ITEMS)]}
        | {"delete": [{"key": "x"}]},
    ],
)
async def test_bad_batch_is_400_and_writes_nothing(
    agent: Agent, client: httpx.AsyncClient, body: Any
) -> None:
    response = await client.post("/v1/routes", json=body)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert len(agent.core.routes) == 0


async def test_batch_of_1000_items_is_accepted(
    agent: Agent, client: httpx.AsyncClient
) -> None:
    puts = [{"key": f"k{i}", "target": "t"} for i in range(BATCH_MAX_ITEMS - 1)]
    response = await client.post(
        "/v1/routes", json={"put": puts, "delete": [{"key": "k0"}]}
    )
    assert response.status_code == 200
    assert len(response.json()["results"]) == BATCH_MAX_ITEMS
    assert len(agent.core.routes) == BATCH_MAX_ITEMS - 2
    assert writes(agent, "applied") == BATCH_MAX_ITEMS  # counted per status


async def test_batch_over_4_mib_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/routes",
        content=b" " * (BATCH_BODY_LIMIT + 1),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413


async def test_batch_body_between_64_kib_and_4_mib_is_fine(
    client: httpx.AsyncClient,
) -> None:
    puts = [{"key": f"k{i}", "target": "t" * 1000} for i in range(200)]
    response = await client.post("/v1/routes", json={"put": puts})
    assert response.status_code == 200


# --- sync=all ---


@pytest.mark.parametrize(
    "query",
    [
        "sync=all&timeout=1",
        "sync=all&timeout=0.25",
        "sync=all&timeout=.5",
        "sync=all&timeout=2.",
        "sync=all&timeout=30",  # sync_timeout_max itself
        # any number of digits, as any ASCII decimal (black-box audit, session 14)
        "sync=all&timeout=1.0000000000",
        "sync=all&timeout=000000000001",
        "sync=all&timeout=29.999999999999999999999",
    ],
)
async def test_sync_all_without_peers_answers_at_once(
    client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock, query: str
) -> None:
    start = trio.current_time()
    put = await client.put(f"/v1/routes/k?{query}", json={"target": "http://x"})
    batch = await client.post(
        f"/v1/routes?{query}", json={"put": [{"key": "b", "target": "t"}]}
    )
    delete = await client.delete(f"/v1/routes/k?{query}")
    assert trio.current_time() == start
    for response in (put, batch, delete):
        assert response.status_code == 200
        assert response.json()["acked"] == []
        assert response.json()["pending"] == []
    assert put.json()["target"] == "http://x"
    assert delete.json()["deleted"] is True
    assert batch.json()["results"][0]["status"] == 200


async def test_without_sync_there_are_no_ack_fields(
    client: httpx.AsyncClient,
) -> None:
    response = await client.put("/v1/routes/k", json={"target": "http://x"})
    assert "acked" not in response.json()
    assert "pending" not in response.json()


@pytest.mark.parametrize(
    "query",
    [
        "sync=one&timeout=1",
        "sync=all",
        "timeout=1",
        "sync=all&timeout=0",
        "sync=all&timeout=-1",
        "sync=all&timeout=nan",
        "sync=all&timeout=inf",
        "sync=all&timeout=soon",
        "sync=all&timeout=30.5",  # over sync_timeout_max
        # numbers as the query's others are: ASCII decimals, nothing around
        "sync=all&timeout=%D9%A5",  # ARABIC-INDIC DIGIT FIVE
        "sync=all&timeout=%205",
        "sync=all&timeout=5%20",
        "sync=all&timeout=+5",
        "sync=all&timeout=5e0",
        "sync=all&timeout=5_0",
        "sync=all&timeout=.",
        "sync=all&timeout=",
    ],
)
async def test_bad_sync_parameters_are_400_before_any_write(
    agent: Agent, client: httpx.AsyncClient, query: str
) -> None:
    put = await client.put(f"/v1/routes/k?{query}", json={"target": "http://x"})
    batch = await client.post(
        f"/v1/routes?{query}", json={"put": [{"key": "b", "target": "t"}]}
    )
    assert put.status_code == 400
    assert batch.status_code == 400
    assert len(agent.core.routes) == 0
    await client.put("/v1/routes/k", json={"target": "http://x"})
    delete = await client.delete(f"/v1/routes/k?{query}")
    assert delete.status_code == 400
    assert (await client.get("/v1/routes/k")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("DELETE", "/v1/routes/k?rev=1", "unknown query parameters: rev"),
        ("PUT", "/v1/routes/k?timeout=1", "timeout goes with sync=all"),
        ("DELETE", "/v1/routes/k?revision=1&revision=2", "given twice: revision"),
        ("PUT", "/v1/routes/k?foo=bar", "unknown query parameters: foo"),
        ("PUT", "/v1/routes/k?sync=all&timeout=1&timeout=2", "given twice: timeout"),
        ("POST", "/v1/routes?revision=3", "unknown query parameters: revision"),
    ],
)
async def test_write_calls_refuse_unknown_or_repeated_query_parameters(
    agent: Agent, client: httpx.AsyncClient, method: str, path: str, message: str
) -> None:
    # A misspelt ?revision= used to delete unconditionally.
    await client.put("/v1/routes/k", json={"target": "t", "revision": 5})
    body = {"put": [{"key": "b", "target": "t"}]} if method == "POST" else None
    if method == "PUT":
        body = {"target": "new"}
    response = await client.request(method, path, json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert (await client.get("/v1/routes/k")).json()["target"] == "t"
    assert (await client.get("/v1/routes/b")).status_code == 404
    assert writes(agent, "invalid") == 1


@pytest.mark.parametrize(
    "query", ["prefix=a&prefix=b", "index=1&index=2", "wait=1s&wait=2s&index=1"]
)
async def test_reads_refuse_a_repeated_query_parameter(
    client: httpx.AsyncClient, query: str
) -> None:
    # audit 14: a read took the last of two values, a write refused them
    response = await client.get(f"/v1/routes?{query}")
    assert response.status_code == 400
    assert "given twice" in response.json()["error"]
    assert (await client.get("/v1/routes?prefix=a&other=1")).status_code == 200


async def test_sync_all_waits_for_the_peer_ack(
    agent: Agent, client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    agent.receive(("127.0.0.2", 1), [Alive(1, "peer", ("127.0.0.2", 1), {})])
    pushes: list[Push] = []
    agent.push_handler = pushes.append
    responses: list[httpx.Response] = []
    start = trio.current_time()

    async def write() -> None:
        responses.append(
            await client.put(
                "/v1/routes/k?sync=all&timeout=5", json={"target": "http://x"}
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        assert not responses  # waiting for the peer
        [push] = pushes
        await trio.sleep(1.0)
        assert not responses
        agent.push_done(push.batch, True, "ok")
    [response] = responses
    assert trio.current_time() == start + 1.0  # answered when the ack came
    assert response.status_code == 200
    assert response.json()["acked"] == ["peer"]
    assert response.json()["pending"] == []


async def test_sync_all_gives_up_at_the_timeout_naming_the_pending_peer(
    agent: Agent, client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    for name, port in (("fast", 1), ("slow", 2)):
        agent.receive(("127.0.0.2", port), [Alive(1, name, ("127.0.0.2", port), {})])
    pushes: list[Push] = []

    def handle(push: Push) -> None:
        pushes.append(push)
        if push.batch.peer == "fast":
            agent.push_done(push.batch, True, "ok")

    agent.push_handler = handle
    start = trio.current_time()
    response = await client.post(
        "/v1/routes?sync=all&timeout=2.5",
        json={"put": [{"key": "a", "target": "t"}], "delete": [{"key": "b"}]},
    )
    assert trio.current_time() == start + 2.5
    assert response.status_code == 200
    assert response.json()["acked"] == ["fast"]
    assert response.json()["pending"] == ["slow"]


async def test_sync_all_ends_when_the_client_goes(
    agent: Agent, autojump_clock: trio.testing.MockClock
) -> None:
    # A client that hangs up mid-wait frees its connection then, not at the
    # timeout: nobody is left to answer. The write itself stands.
    agent.receive(("127.0.0.2", 1), [Alive(1, "peer", ("127.0.0.2", 1), {})])
    agent.push_handler = lambda push: None  # never acked
    app = make_api_app(agent, routes=routes_endpoints(agent))
    hang_up = trio.Event()
    sent: list[dict[str, Any]] = []
    body = [{"type": "http.request", "body": b'{"target": "t"}', "more_body": False}]

    async def receive() -> dict[str, Any]:
        if body:
            return body.pop()
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "PUT",
        "path": "/v1/routes/k",
        "query_string": b"sync=all&timeout=20",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5),
    }
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, scope, receive, send)
        await trio.sleep(3.0)
        assert not sent  # still waiting for the peer
        hang_up.set()
    assert trio.current_time() == start + 3.0
    assert sent[0]["status"] == 499
    assert agent.core.routes.get("k") is not None
    gone = agent.metrics.registry.get_sample_value(
        "mesh_api_requests_total",
        {"method": "PUT", "path": "/v1/routes/{key}", "code": "499"},
    )
    assert gone == 1


async def test_sync_all_is_not_awaited_for_a_failed_write(
    agent: Agent, client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    agent.receive(("127.0.0.2", 1), [Alive(1, "peer", ("127.0.0.2", 1), {})])
    agent.push_handler = lambda push: None  # never acked
    start = trio.current_time()
    response = await client.put(
        "/v1/routes/k?sync=all&timeout=5", json={"target": "http://x", "revision": -1}
    )
    assert response.status_code == 400
    assert trio.current_time() == start


# --- secrets ---


async def test_targets_and_meta_are_never_logged(make_agent: MakeAgent) -> None:
    secret = "s3cr3t-token"
    with structlog.testing.capture_logs() as logs:
        agent = make_agent("self")
        async with routes_client(agent) as client:
            await client.put(
                "/v1/routes/k",
                json={"target": f"http://u:{secret}@h", "meta": {"auth": secret}},
            )
            await client.post(
                "/v1/routes",
                json={"put": [{"key": "b", "target": secret, "meta": {"x": secret}}]},
            )
            await client.put("/v1/routes/k", json={"target": secret, "bad": secret})
            await client.delete("/v1/routes/k")
    assert logs  # debug lines name the keys
    assert all(secret not in repr(entry) for entry in logs)


# --- invalid writes are counted ---


async def test_writes_refused_with_400_count_as_invalid(
    agent: Agent, client: httpx.AsyncClient
) -> None:
    refused = [
        await client.put("/v1/routes/k", json={"target": ""}),
        await client.put("/v1/routes/k", json={"target": "x" * 2000}),
        await client.put("/v1/routes/k", json={"target": "x", "meta": {"a": 1}}),
        await client.put("/v1/routes/-k", json={"target": "x"}),
        await client.put("/v1/routes/k", content=b"{not json"),
        await client.put("/v1/routes/k?sync=all", json={"target": "x"}),
        await client.delete("/v1/routes/k", params={"revision": "-1"}),
        await client.delete("/v1/routes/-k"),
        await client.post("/v1/routes", json=[]),  # the whole call: one
    ]
    assert [r.status_code for r in refused] == [400] * len(refused)
    assert writes(agent, "invalid") == len(refused)
    batch = await client.post(
        "/v1/routes",
        json={
            "put": [{"key": "ok", "target": "x"}, {"key": "bad", "target": ""}],
            "delete": [{"key": "-k"}],
        },
    )
    assert [r["status"] for r in batch.json()["results"]] == [200, 400, 400]
    assert writes(agent, "invalid") == len(refused) + 2
    assert writes(agent, "applied") == 1
    # A read refused with 400 is not a write.
    assert (await client.get("/v1/routes/-k")).status_code == 400
    assert writes(agent, "invalid") == len(refused) + 2


# --- long lists: encoded in slices, the loop running between ---


def _old_list_body(agent: Agent, index: int) -> bytes:
    """The list answer as the agent built it before slicing."""
    routes = [r.to_json() for r in agent.core.routes.live()]
    document = {"routes": routes, "count": len(routes), "index": index}
    return json.dumps(document, separators=(",", ":")).encode()


async def test_a_long_list_lets_other_tasks_run_and_answers_its_snapshot(
    agent: Agent, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 3 * LIST_SLICE_ROUTES + 7
    agent.write_routes(
        [Write(f"k{i:05d}", f"http://t{i}", {"i": str(i)}) for i in range(n)]
    )
    agent.write_routes([Write("k00003", "", deleted=True)])  # a tombstone
    index = agent.core.routes.index
    expected = _old_list_body(agent, index)
    encoded = 0
    real_to_json = Route.to_json

    def counting_to_json(route: Route) -> dict[str, object]:
        nonlocal encoded
        encoded += 1
        return real_to_json(route)

    monkeypatch.setattr(Route, "to_json", counting_to_json)
    seen: list[int] = []  # how far the encoding was each time we ran
    done = False

    async def meanwhile() -> None:
        while not done:
            seen.append(encoded)
            if 0 < encoded < n - 1 and agent.core.routes.get("k00000.new") is None:
                # A write while the list is being encoded: not in the answer.
                agent.write_routes([Write("k00000.new", "http://new")])
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(meanwhile)
        response = await client.get("/v1/routes")
        done = True
    assert [s for s in seen if 0 < s < n - 1], "nothing ran while the list was encoded"
    assert response.status_code == 200
    assert response.content == expected
    assert response.headers["x-mesh-index"] == str(index)
    assert response.headers["content-length"] == str(len(expected))
    assert agent.core.routes.index == index + 1  # the write landed meanwhile


async def test_a_short_list_is_encoded_without_a_checkpoint(agent: Agent) -> None:
    agent.write_routes([Write(f"k{i}", "http://t") for i in range(LIST_SLICE_ROUTES)])
    keys, entries = agent.core.routes.sorted_snapshot()
    coroutine = encode_route_list(keys, entries, 5)
    with pytest.raises(StopIteration) as finished:  # done on its first step
        coroutine.send(None)
    document = json.loads(finished.value.value)
    assert (document["count"], document["index"]) == (LIST_SLICE_ROUTES, 5)
    empty = encode_route_list([], {}, 0)
    with pytest.raises(StopIteration) as finished:
        empty.send(None)
    assert finished.value.value == b'{"routes":[],"count":0,"index":0}'


# --- the batch call's column check ---

_VALID_PUT: dict[str, Any] = {
    "key": "svc.a-1",
    "target": "http://a:80",
    "meta": {"zone": "z1"},
    "revision": 3,
}
_MISSING = object()
# One field of a valid put swapped for a value just inside or outside a limit.
_NEAR = {
    "key": ["k", "bad key", "a\nb", "", "x" * 253, "x" * 254, 1, None, _MISSING],
    "target": [
        "t",
        "",
        "x" * 1024,
        "x" * 1025,
        "é",
        "\ud800",
        None,
        1,
        _MISSING,
    ],
    "meta": [
        None,
        {},
        {"a": 1},
        {"a": "é"},
        {"a": "\ud800"},
        {"k" * 256: "v" * 256},
        {"k" * 257: "v"},
        {"k": "v" * 257},
        {f"k{i}": "v" for i in range(32)},
        {f"k{i}": "v" for i in range(33)},
        [],
        "m",
        _MISSING,
    ],
    "revision": [None, 0, -1, 2**64 - 1, 2**64, True, 1.5, "3", _MISSING],
    "extra": [1, _MISSING],
}


@st.composite
def _near_valid_puts(draw: st.DrawFn) -> list[object]:
    """Valid puts with, at most, one of them near-valid (one field swapped
    for a value just inside or outside a limit), or not an object at all."""
    items: list[object] = [
        dict(_VALID_PUT, key=f"k{i}") for i in range(draw(st.integers(1, 6)))
    ]
    at = draw(st.integers(0, len(items)))  # len(items): none spoiled
    if at < len(items):
        field = draw(st.sampled_from([*sorted(_NEAR), "whole"]))
        if field == "whole":
            items[at] = draw(st.sampled_from(["not an object", ["k"], None]))
        else:
            item = items[at]
            assert isinstance(item, dict)
            value = draw(st.sampled_from(_NEAR[field]))
            if value is _MISSING:
                item.pop(field, None)
            else:
                item[field] = value
    return items


@given(_near_valid_puts(), st.sampled_from(["", ', "delete": []', ', "delete": null']))
def test_batch_typed_decode_agrees_with_the_item_by_item_check(
    items: list[object], deletes: str
) -> None:
    """``_typed_puts`` accepts a batch only when every item passes
    ``_batch_item``, and then builds the very same writes."""
    body = ('{"put": ' + json.dumps(items) + deletes + "}").encode()
    one_by_one = [_batch_item(item, deleted=False) for item in json.loads(body)["put"]]
    typed = _typed_puts(body)
    if typed is not None:
        assert typed == one_by_one
        assert all(type(w) is Write for w in typed)


def test_batch_typed_decode_takes_a_batch_of_common_puts() -> None:
    puts: list[object] = [
        {"key": "a", "target": "http://a"},
        {"key": "b", "target": "http://b", "meta": None, "revision": None},
        {
            "key": "c",
            "target": "é" * 1024,
            "meta": {"m": "é" * 256},
            "revision": 2**64 - 1,
        },
    ]
    assert _typed_puts(json.dumps({"put": puts}).encode()) == [
        Write("a", "http://a", {}, None),
        Write("b", "http://b", {}, None),
        Write("c", "é" * 1024, {"m": "é" * 256}, 2**64 - 1),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b'{"put": [{"key": "a", "target": "t"}], "delete": [{"key": "b"}]}',
        b'{"put": []}',
        b'{"put": [{"key": "a", "target": "t"}], "other": 1}',
        b'{"put": [{"key": "a", "target": "t"}]} x',
        b'[{"key": "a", "target": "t"}]',
        # each limit, just over: item by item, for the item's own 400
        ('{"put": [{"key": "a", "target": "' + "x" * 1025 + '"}]}').encode(),
        b'{"put": [{"key": "a", "target": ""}]}',
        b'{"put": [{"key": "-a", "target": "t"}]}',
        b'{"put": [{"key": "a", "target": "t", "revision": -1}]}',
        b'{"put": [{"key": "a", "target": "t", "revision": true}]}',
        (
            '{"put": [{"key": "a", "target": "t", "meta": {"m": "' + "v" * 257 + '"}}]}'
        ).encode(),
        json.dumps(
            {
                "put": [
                    {
                        "key": "a",
                        "target": "t",
                        "meta": {str(i): "v" for i in range(33)},
                    }
                ]
            }
        ).encode(),
        (
            '{"put": [' + ",".join(['{"key": "a", "target": "t"}'] * 1001) + "]}"
        ).encode(),
    ],
)
def test_batch_typed_decode_leaves_other_bodies_to_the_item_by_item_check(
    body: bytes,
) -> None:
    assert _typed_puts(body) is None

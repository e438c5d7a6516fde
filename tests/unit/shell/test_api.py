"""The client API and the peer HTTP app, driven in-process through
``httpx.ASGITransport`` (no sockets)."""

from __future__ import annotations

import json

import httpx
import pytest

from mesh.codec import decode_push_pull, encode_push_pull
from mesh.messages import Alive, MemberState, MemberStatus, PushPull
from mesh.shell.agent import Agent
from mesh.shell.api import BODY_LIMIT, make_api_app
from mesh.shell.asgi import (
    ASGIApp,
    HttpError,
    Request,
    Response,
    Route,
    Router,
    json_response,
    read_body,
)
from mesh.shell.peer_http import EXCHANGE_PATH, PING_PATH, make_peer_app
from mesh.shell.routes_api import routes_endpoints

from .conftest import MakeAgent


def client_for(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mesh.test"
    )


def api_client(agent: Agent, routes: list[Route] | None = None) -> httpx.AsyncClient:
    return client_for(make_api_app(agent, routes=routes or []))


async def test_health_shape(make_agent: MakeAgent) -> None:
    agent = make_agent("alpha")
    async with api_client(agent) as client:
        response = await client.get("/v1/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "status": "ok",
        "name": "alpha",
        "joined": True,  # no seeds: nothing to join
        "members_alive": 1,
        "health_score": 0,
        "ready": True,
        "routes_caught_up": True,
        "routes_behind": 0,
        "reasons": [],
    }


async def test_health_not_joined_while_seeds_unanswered(make_agent: MakeAgent) -> None:
    agent = make_agent("alpha", join=("127.0.0.1:1",))
    agent.start()  # the join exchange fails at once: no I/O attached
    async with api_client(agent) as client:
        document = (await client.get("/v1/health")).json()
    assert document["joined"] is False


async def test_members_sorted_with_contract_fields(make_agent: MakeAgent) -> None:
    agent = make_agent("mid")
    agent.receive(
        ("127.0.0.9", 7946),
        [
            Alive(3, "zulu", ("127.0.0.3", 7001), {"zone": "b"}),
            Alive(5, "alpha", ("::1", 7002), {}),
        ],
    )
    async with api_client(agent) as client:
        response = await client.get("/v1/members")
    assert response.status_code == 200
    members = response.json()["members"]
    assert [m["name"] for m in members] == ["alpha", "mid", "zulu"]
    assert members[0] == {
        "name": "alpha",
        "addr": "[::1]:7002",
        "status": "alive",
        "incarnation": 5,
        "tags": {},
    }
    assert members[2]["addr"] == "127.0.0.3:7001"
    assert members[2]["tags"] == {"zone": "b"}
    assert {m["status"] for m in members} == {"alive"}


async def test_unknown_path_is_404_json(make_agent: MakeAgent) -> None:
    async with api_client(make_agent()) as client:
        response = await client.get("/v1/nope")
    assert response.status_code == 404
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/v1/health", "GET, HEAD"),
        ("DELETE", "/v1/members", "GET, HEAD"),
        ("GET", "/v1/leave", "POST"),
        ("HEAD", "/v1/leave", "POST"),
        ("PUT", "/metrics", "GET, HEAD"),
        # the change stream is served outside the route table, and used to
        # answer 404 to any other method
        ("POST", "/v1/watch/routes", "GET, HEAD"),
        ("DELETE", "/v1/watch/routes", "GET, HEAD"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    make_agent: MakeAgent, method: str, path: str, allow: str
) -> None:
    async with api_client(make_agent()) as client:
        response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    if method != "HEAD":  # (no body in answer to HEAD)
        assert "error" in response.json()


async def test_oversized_body_is_413(make_agent: MakeAgent) -> None:
    agent = make_agent()
    async with api_client(agent) as client:
        response = await client.post("/v1/leave", content=b"x" * (BODY_LIMIT + 1))
    assert response.status_code == 413
    assert "error" in response.json()
    assert not agent.shutdown_requested.is_set()


async def test_body_limit_enforced_while_reading_chunks() -> None:
    """Without a content-length the limit holds chunk by chunk: reading stops
    at the first chunk past it, before the rest is buffered."""
    chunks = [b"y" * 8192] * 20
    delivered = 0

    async def receive() -> dict[str, object]:
        nonlocal delivered
        delivered += 1
        return {
            "type": "http.request",
            "body": chunks[delivered - 1],
            "more_body": True,
        }

    with pytest.raises(HttpError) as info:
        await read_body(receive, BODY_LIMIT)
    assert info.value.status == 413
    assert delivered == BODY_LIMIT // 8192 + 1


async def test_malformed_json_is_400_on_an_extension_route(
    make_agent: MakeAgent,
) -> None:
    """Routes added later (the routes API) get the same body limit and errors."""

    async def echo(request: Request) -> Response:
        return json_response(200, await request.json(BODY_LIMIT))

    routes = [Route("POST", "/v1/echo/{key}", echo)]
    async with api_client(make_agent(), routes) as client:
        bad = await client.post("/v1/echo/k", content=b"{not json")
        deep = await client.post("/v1/echo/k", content=b"[" * 60_000)
        good = await client.post("/v1/echo/k", json={"a": 1})
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("malformed JSON")
    assert deep.status_code == 400
    assert good.json() == {"a": 1}


async def test_handler_bug_is_500_json_and_logged(make_agent: MakeAgent) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    agent = make_agent()
    async with api_client(agent, [Route("GET", "/v1/broken", broken)]) as client:
        response = await client.get("/v1/broken")
        after = await client.get("/v1/health")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert after.status_code == 200


async def test_leave_answers_then_requests_shutdown(make_agent: MakeAgent) -> None:
    agent = make_agent()
    async with api_client(agent) as client:
        response = await client.post("/v1/leave")
    assert response.status_code == 200
    assert response.json() == {"status": "leaving"}
    assert agent.shutdown_requested.is_set()


async def test_metrics_exposition(make_agent: MakeAgent) -> None:
    agent = make_agent()
    async with api_client(agent) as client:
        await client.get("/v1/health")
        await client.get("/v1/nope")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'mesh_members{status="alive"} 1.0' in text
    assert "mesh_health_score 0.0" in text
    assert 'mesh_probes_total{result="ack"} 0.0' in text
    registry = agent.metrics.registry
    labels = {"method": "GET", "path": "/v1/health", "code": "200"}
    assert registry.get_sample_value("mesh_api_requests_total", labels) == 1
    labels = {"method": "GET", "path": "unmatched", "code": "404"}
    assert registry.get_sample_value("mesh_api_requests_total", labels) == 1


async def test_unknown_methods_share_one_metric_label(make_agent: MakeAgent) -> None:
    agent = make_agent()
    async with api_client(agent) as client:
        for method in ("BREW", "WHEN", "FOO"):
            await client.request(method, "/v1/health")
    labels = {"method": "OTHER", "path": "/v1/health", "code": "405"}
    assert agent.metrics.registry.get_sample_value(
        "mesh_api_requests_total", labels
    ) == pytest.approx(3)


async def test_a_405_is_counted_under_the_path_it_matched(
    make_agent: MakeAgent,
) -> None:
    # "unmatched" is for paths nothing serves (404): a wrong method on a
    # real route is that route's traffic.
    agent = make_agent()
    async with api_client(agent) as client:
        assert (await client.post("/v1/health")).status_code == 405
        assert (await client.post("/v1/members")).status_code == 405
        assert (await client.put("/v1/nope")).status_code == 404
    registry = agent.metrics.registry
    for method, path, code in (
        ("POST", "/v1/health", "405"),
        ("POST", "/v1/members", "405"),
        ("PUT", "unmatched", "404"),
    ):
        labels = {"method": method, "path": path, "code": code}
        assert registry.get_sample_value("mesh_api_requests_total", labels) == 1


async def test_a_refusal_before_the_app_is_counted_under_its_route(
    make_agent: MakeAgent,
) -> None:
    """The API token check (outside the app) reports its 401s here, under
    the label the router gives the requests it serves: matched on the
    percent-decoded segments of the raw path, a wrong method under the
    path's pattern (as its 405 is)."""
    agent = make_agent()
    app = make_api_app(agent, routes=routes_endpoints(agent))
    for method, path, raw in [
        ("GET", "/v1/routes/a.b", None),
        ("HEAD", "/v1/routes", None),
        ("GET", "/v1/watch/routes", None),
        ("GET", "/nowhere", None),
        ("BREW", "/metrics", None),
        ("DELETE", "/v1/routes/a/b", b"/v1/routes/a%2Fb"),
    ]:
        scope = {"type": "http", "method": method, "path": path}
        if raw is not None:
            scope["raw_path"] = raw
        app.observe_refusal(scope, 401)
    registry = agent.metrics.registry
    for method, path in [
        ("GET", "/v1/routes/{key}"),
        ("HEAD", "/v1/routes"),
        ("GET", "/v1/watch/routes"),
        ("GET", "unmatched"),
        ("OTHER", "/metrics"),
        ("DELETE", "/v1/routes/{key}"),
    ]:
        labels = {"method": method, "path": path, "code": "401"}
        assert registry.get_sample_value("mesh_api_requests_total", labels) == 1


# --- the peer app ---


def peer_client(agent: Agent) -> httpx.AsyncClient:
    app = make_peer_app(
        name=agent.core.name,
        handle_exchange=agent.handle_exchange,
        metrics=agent.metrics,
        log=agent.log,
        max_members=agent.config.max_members,
    )
    return client_for(app)


async def test_the_peer_port_says_what_it_is_on_an_unknown_path(
    make_agent: MakeAgent,
) -> None:
    """The CLI pointed at the mesh port got a bare 404 (operator audit,
    session 14); the client API's 404 stays as it was."""
    agent = make_agent()
    async with peer_client(agent) as client:
        peer = await client.get("/v1/members")
    async with client_for(make_api_app(agent)) as client:
        api = await client.get("/v1/nothing")
    assert peer.status_code == api.status_code == 404
    assert "mesh port: the client API is on its --http address" in peer.json()["error"]
    assert api.json()["error"] == "no such path: /v1/nothing"


async def test_peer_ping_answers_only_for_our_name(make_agent: MakeAgent) -> None:
    agent = make_agent("node-a")
    async with peer_client(agent) as client:
        ours = await client.get(PING_PATH, params={"name": "node-a"})
        other = await client.get(PING_PATH, params={"name": "node-b"})
        missing = await client.get(PING_PATH)
    assert ours.status_code == 200
    assert other.status_code == 404
    assert missing.status_code == 404


async def test_peer_exchange_round_trip(make_agent: MakeAgent) -> None:
    agent = make_agent("node-a")
    theirs = MemberState("node-b", ("127.0.0.2", 7946), 9, MemberStatus.ALIVE, {})
    body = encode_push_pull(PushPull(join=True, members=(theirs,), sender="node-b"))
    async with peer_client(agent) as client:
        response = await client.post(EXCHANGE_PATH, content=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/msgpack"
    reply = decode_push_pull(response.content)
    assert [m.name for m in reply.members] == ["node-a"]
    merged = agent.core.member("node-b")
    assert merged is not None
    assert merged.incarnation == 9


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xc1", "malformed"),
        (b"\x92\x07\xc2", "bad_version"),
        (json.dumps([1, True, [["x"]]]).encode(), "malformed"),
    ],
)
async def test_peer_exchange_bad_body_is_400_and_counted(
    make_agent: MakeAgent, body: bytes, reason: str
) -> None:
    agent = make_agent()
    async with peer_client(agent) as client:
        response = await client.post(EXCHANGE_PATH, content=body)
    assert response.status_code == 400
    assert "error" in response.json()
    labels = {"side": "server", "reason": reason}
    value = agent.metrics.registry.get_sample_value(
        "mesh_exchange_errors_total", labels
    )
    assert value == 1


async def test_peer_exchange_over_limit_is_413(make_agent: MakeAgent) -> None:
    agent = make_agent()
    async with peer_client(agent) as client:
        response = await client.post(
            EXCHANGE_PATH,
            content=b"",
            headers={"content-length": str(16 * 1024 * 1024 + 1)},
        )
    assert response.status_code == 413
    assert server_errors(agent, "too_large") == 1


async def test_peer_port_refusals_are_counted(make_agent: MakeAgent) -> None:
    # audit 15: 404, 405 and 413 on the mesh port were counted nowhere
    agent = make_agent("node-a")
    async with peer_client(agent) as client:
        assert (await client.post("/mesh/v1/nope")).status_code == 404
        assert (await client.get(EXCHANGE_PATH)).status_code == 405
        other = await client.get(PING_PATH, params={"name": "someone-else"})
    assert other.status_code == 404  # an answer to a probe, not a refusal
    assert server_errors(agent, "not_found") == 1
    assert server_errors(agent, "bad_method") == 1


def server_errors(agent: Agent, reason: str) -> float:
    labels = {"side": "server", "reason": reason}
    value = agent.metrics.registry.get_sample_value(
        "mesh_exchange_errors_total", labels
    )
    return value or 0.0


# --- the router ---


async def test_routes_added_after_serving_are_matched() -> None:
    # The router indexes its table by segment count; a route appended later
    # (the runner appends to the peer app) must be seen, and order kept.
    async def named(request: Request) -> Response:
        return json_response(200, {"params": request.params})

    router = Router([Route("GET", "/a/{x}", named)])
    async with client_for(router) as client:
        assert (await client.get("/a/1")).json() == {"params": {"x": "1"}}
        assert (await client.get("/b/1/c")).status_code == 404
        router.routes.append(Route("GET", "/b/{y}/c", named))
        router.routes.append(Route("PUT", "/a/{x}", named))
        router.add("DELETE", "/a/{x}", named)
        assert (await client.get("/b/1/c")).json() == {"params": {"y": "1"}}
        response = await client.post("/a/1")
        assert response.status_code == 405
        assert response.headers["allow"] == "DELETE, GET, HEAD, PUT"
        # an empty parameter segment matches nothing
        assert (await client.get("/b//c")).status_code == 404


async def test_request_headers_are_decoded_lower_case() -> None:
    seen: list[dict[str, str]] = []

    async def headers(request: Request) -> Response:
        seen.append(request.headers)
        return json_response(200, {"ok": True})

    router = Router([Route("GET", "/h", headers)])
    async with client_for(router) as client:
        response = await client.get("/h", headers={b"X-Thing": b"caf\xe9"})
    assert response.content == b'{"ok":true}'
    assert seen[0]["x-thing"] == "caf\xe9"

"""The client API (``--http``): JSON over HTTP/1.1, raw ASGI.

Contract (docs: contract.md): errors are ``{"error": message}``; unknown path
404, wrong method 405 with ``Allow``, malformed JSON 400, a body over the limit
413; nothing a client sends can crash the agent. The route table is open:
:func:`make_api_app` takes extra routes, so the routes endpoints plug in without
touching this module's dispatch.

Two things need more than a request-in, response-out handler, so
:class:`ApiApp` (the :class:`Router` the agent serves) adds them: the route
change stream (``watch_api``), whose body never ends (``GET`` and ``HEAD`` of it
are answered before routing; its route in the table gives other methods their
405), and the latency metric, which needs the request's start time.

``HEAD`` works wherever ``GET`` does (the :class:`Router` runs the ``GET``
handler; the server sends no body); on the watch endpoints it answers at once.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from typing import Any

import trio

from .agent import Agent
from .asgi import (
    HttpError,
    Receive,
    Request,
    Response,
    Route,
    Router,
    Scope,
    Send,
    json_response,
    normalize_method,
)
from .metrics import CONTENT_TYPE
from .net import format_address
from .watch_api import STREAM_PATH, RouteWatchHub, serve_stream, wrap_list

__all__ = ["BODY_LIMIT", "ApiApp", "make_api_app", "readiness"]

#: request body limit of the single-item calls (contract: 64 KiB)
BODY_LIMIT = 64 * 1024

#: what ApiApp answers on the stream path itself (the table's route for it
#: only makes other methods 405, with Allow)
_STREAM_METHODS = frozenset(("GET", "HEAD"))

# When the request being handled started: the Router's observer hook runs in
# the request's task and reads it for the latency histogram.
_started: contextvars.ContextVar[float] = contextvars.ContextVar("api_request_start")


def readiness(agent: Agent) -> dict[str, Any]:
    """The readiness view: ready means joined, route table caught up and not
    leaving; ``reasons`` says what is missing (empty when ready)."""
    core = agent.core
    reasons: list[str] = []
    if not core.joined:
        reasons.append("not joined")
    sync = core.route_sync()
    if not sync.caught_up:
        reason = sync.reason or "route table not caught up"
        if reason not in reasons:
            reasons.append(reason)
    other = core.membership.local_conflict
    if other is not None:
        reasons.append(
            f"name conflict: {core.name} is held at {format_address(other)} "
            "(another process, or this one's previous life not yet found dead)"
        )
    if agent.stopped:
        reasons.append("stopped")
    elif agent.shutdown_requested.is_set():
        reasons.append("leaving")
    return {
        "ready": not reasons,
        "routes_caught_up": sync.caught_up,
        "routes_behind": sync.behind,
        "reasons": reasons,
    }


class ApiApp(Router):
    """The client API router, plus the streaming path and request timing."""

    def __init__(
        self, agent: Agent, hub: RouteWatchHub, routes: Iterable[Route]
    ) -> None:
        super().__init__(
            routes,
            observe=self._observe_api,
            on_error=self._on_error,
            body_timeout=agent.config.http_body_timeout,
        )
        self.agent = agent
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        start = trio.current_time()
        _started.set(start)
        if scope["path"] == STREAM_PATH and scope["method"] in _STREAM_METHODS:
            status = await serve_stream(self.hub, scope, receive, send)
            self._observe_api(scope["method"], STREAM_PATH, status)
            return
        await super().__call__(scope, receive, send)

    def observe_refusal(self, scope: Scope, code: int) -> None:
        """Count a request refused before it reached this app (the API token
        check's 401) in ``mesh_api_requests_total``, labelled as the router
        labels the requests it serves (:meth:`Router.pattern_of`)."""
        method = normalize_method(str(scope.get("method", "")))
        self.agent.metrics.observe_api(method, self.pattern_of(scope), code)

    def _observe_api(self, method: str, path: str, code: int) -> None:
        # ``method`` is already a label: the Router normalizes it.
        start = _started.get(None)
        duration = None if start is None else trio.current_time() - start
        self.agent.metrics.observe_api(method, path, code, duration)

    def _on_error(self, request: Request, exc: BaseException) -> None:
        self.agent.log.error(
            "api request failed", method=request.method, path=request.path, exc_info=exc
        )


def make_api_app(
    agent: Agent, *, routes: Iterable[Route] = (), hub: RouteWatchHub | None = None
) -> ApiApp:
    """The client API of ``agent``, plus ``routes`` (the runner passes
    :func:`mesh.shell.routes_api.routes_endpoints`). ``GET /v1/routes`` among
    them gains the blocking query (:func:`mesh.shell.watch_api.wrap_list`)."""
    if hub is None:
        hub = RouteWatchHub(agent)

    async def health(request: Request) -> Response:
        # Liveness is the 200 itself; ?ready turns it into a readiness probe
        # (503 until ready), same path so it needs no API token either.
        document = {**agent.health(), **readiness(agent)}
        if "ready" in request.query and not document["ready"]:
            return json_response(503, document)
        return json_response(200, document)

    async def members(request: Request) -> Response:
        return json_response(200, {"members": agent.members()})

    async def leave(request: Request) -> Response:
        # Read (and bound) the body even though it is ignored: the contract's
        # 413 holds for every call, and an unread body would stall keep-alive.
        await request.body(BODY_LIMIT)
        return json_response(200, {"status": "leaving"}, after=agent.request_shutdown)

    async def metrics(request: Request) -> Response:
        return Response(200, agent.metrics.render(), content_type=CONTENT_TYPE)

    async def stream(request: Request) -> Response:
        # Never reached through ApiApp, which serves GET and HEAD of the
        # stream before routing: in the table so other methods answer 405.
        raise HttpError(500, "the route stream is served by ApiApp")

    extra = [
        Route(r.method, r.pattern, wrap_list(hub, r.handler))
        if (r.method, r.pattern) == ("GET", "/v1/routes")
        else r
        for r in routes
    ]
    return ApiApp(
        agent,
        hub,
        [
            Route("GET", "/v1/health", health),
            Route("GET", "/v1/members", members),
            Route("POST", "/v1/leave", leave),
            Route("GET", "/metrics", metrics),
            Route("GET", STREAM_PATH, stream),
            *extra,
        ],
    )

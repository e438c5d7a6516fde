"""The client API (``--http``): JSON over HTTP/1.1, raw ASGI.

Contract (docs: contract.md): errors are ``{"error": message}``; unknown path
404, wrong method 405 with ``Allow``, malformed JSON 400, a body over the limit
413; nothing a client sends can crash the agent. The route table is open:
:func:`make_api_app` takes extra routes, so the routes endpoints plug in without
touching this module's dispatch.
"""

from __future__ import annotations

from collections.abc import Iterable

from .agent import Agent
from .asgi import Request, Response, Route, Router, json_response
from .metrics import CONTENT_TYPE

__all__ = ["BODY_LIMIT", "make_api_app"]

#: request body limit of the single-item calls (contract: 64 KiB)
BODY_LIMIT = 64 * 1024


def make_api_app(agent: Agent, *, routes: Iterable[Route] = ()) -> Router:
    """The client API of ``agent``, plus ``routes`` (the runner passes
    :func:`mesh.shell.routes_api.routes_endpoints`)."""

    async def health(request: Request) -> Response:
        return json_response(200, agent.health())

    async def members(request: Request) -> Response:
        return json_response(200, {"members": agent.members()})

    async def leave(request: Request) -> Response:
        # Read (and bound) the body even though it is ignored: the contract's
        # 413 holds for every call, and an unread body would stall keep-alive.
        await request.body(BODY_LIMIT)
        return json_response(200, {"status": "leaving"}, after=agent.request_shutdown)

    async def metrics(request: Request) -> Response:
        return Response(200, agent.metrics.render(), content_type=CONTENT_TYPE)

    def on_error(request: Request, exc: BaseException) -> None:
        agent.log.error(
            "api request failed", method=request.method, path=request.path, exc_info=exc
        )

    return Router(
        [
            Route("GET", "/v1/health", health),
            Route("GET", "/v1/members", members),
            Route("POST", "/v1/leave", leave),
            Route("GET", "/metrics", metrics),
            *routes,
        ],
        observe=agent.metrics.observe_api,
        on_error=on_error,
    )

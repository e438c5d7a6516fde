"""Anti-entropy over the mesh port: the peer endpoint and the client call.

The core decides everything (mesh/core/antientropy.py); this module only
carries its requests as HTTP POST bodies on the peer port (sealed like every
peer body when a keyring is set) and hands replies back. A body that does not
decode is refused with 400 and counted; a failed call reports None to the core,
which ends the round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..codec_ae import (
    MAX_AE_BODY,
    AeLimits,
    decode_ae_reply,
    decode_ae_request,
    encode_ae_reply,
    encode_ae_request,
)
from ..core.antientropy import AeReply, Reconcile
from ..errors import DecodeError
from .asgi import Request, Response, Route
from .peer_http import MSGPACK, PeerClient, refuse_body

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["AE_PATH", "ae_route", "reconcile"]

AE_PATH = "/mesh/v1/ae"


def ae_route(agent: Agent) -> Route:
    """The peer endpoint answering other members' anti-entropy requests."""
    limits = AeLimits.from_config(agent.config)
    count = agent.metrics.antientropy_bytes

    async def handle(request: Request) -> Response:
        body = await request.body(MAX_AE_BODY)
        count.labels("received", "peer").inc(len(body))
        try:
            ae_request = decode_ae_request(body, limits)
        except DecodeError as exc:
            counter = agent.metrics.antientropy_refused.labels(exc.reason)
            raise refuse_body(
                request, exc, "anti-entropy body", counter, agent.log
            ) from None
        data = encode_ae_reply(agent.handle_reconcile(ae_request))
        count.labels("sent", "peer").inc(len(data))
        return Response(200, data, content_type=MSGPACK)

    return Route("POST", AE_PATH, handle)


async def reconcile(
    agent: Agent, peers: PeerClient, effect: Reconcile
) -> AeReply | None:
    """Run one request of a round; None on any failure (counted)."""
    body = encode_ae_request(effect.request)
    count = agent.metrics.antientropy_bytes
    count.labels("sent", "initiator").inc(len(body))
    data = None
    with trio.move_on_after(agent.config.antientropy_timeout) as scope:
        data = await peers.call(effect.addr, AE_PATH, body, limit=MAX_AE_BODY)
    if scope.cancelled_caught:
        agent.metrics.exchange_errors.labels("client", "timeout").inc()
    if data is None:
        return None
    count.labels("received", "initiator").inc(len(data))
    try:
        return decode_ae_reply(data, AeLimits.from_config(agent.config))
    except DecodeError as exc:
        agent.metrics.antientropy_refused.labels(exc.reason).inc()
        agent.log.debug(
            "bad anti-entropy reply",
            peer=effect.peer,
            reason=exc.reason,
            error=str(exc),
        )
        return None

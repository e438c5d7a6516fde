"""Keyring rotation through the client API, spread over the peer port.

Client API (JSON)::

    GET  /v1/keyring                 -> 200 {"keys": [{"fingerprint", "primary"}]}
                                        (409 without --encrypt, as the POSTs)
    POST /v1/keyring/install|use|remove  {"key": "<base64>"}
        -> 200 {"fingerprint": str, "results": {member: "ok" | "<error>"}}

A POST applies the operation here first (400 for a malformed key, 409 when it
conflicts: removing the primary, using a key that is not installed, no keyring
at all), then asks every other member it knows that has not left (alive,
suspect *and dead*) to apply it too, over the peer port with the request sealed
like any other peer body, and reports each answer: ``results`` names every
known member that has not left, so "every result is ok" means every member.
A dead member is asked too (it may only have been paused or cut off, and a
member that answers is a member that now holds the key); the attempt is
bounded by ``tcp_timeout`` and runs alongside the others, and a failure is
reported as ``"member is dead: <why>"``, never left out. (Serf's keyring query
reports the same thing the other way round: responses out of members.) One
member's failure does not undo the others: the operator reads ``results`` and
repeats the call (each operation is idempotent) before the next step. Key
material is never answered nor logged, only fingerprints.

Rotation (docs/security.md): ``install`` the new key everywhere (everyone can
now open it), ``use`` it everywhere (everyone seals with it, and still opens
the old one), ``remove`` the old one. At no step does a member receive a packet
it cannot open, so nobody is suspected.
"""

from __future__ import annotations

from typing import Any

import msgpack
import trio

from ..messages import MemberStatus
from ..security import Keyring, KeyringError, decode_key
from .agent import Agent
from .asgi import HttpError, Request, Response, Route, json_response
from .peer_http import KEYRING_PATH

__all__ = ["OPS", "keyring_endpoints", "peer_keyring_route"]

OPS = ("install", "use", "remove")
#: a keyring request is one small JSON object
_BODY_LIMIT = 4096


def _apply(keyring: Keyring, op: str, key: bytes) -> str:
    if op == "install":
        return keyring.install(key)
    if op == "use":
        return keyring.use(key)
    return keyring.remove(key)


def _keyring(agent: Agent) -> Keyring:
    keyring = agent.sealer.keyring
    if keyring is None:
        raise HttpError(
            409, "gossip encryption is off on this node; start it with --encrypt"
        )
    return keyring


def keyring_endpoints(agent: Agent) -> list[Route]:
    """The client API routes of the keyring."""

    async def list_keys(request: Request) -> Response:
        infos = _keyring(agent).list()  # 409 without --encrypt, as the POSTs
        keys = [{"fingerprint": i.fingerprint, "primary": i.primary} for i in infos]
        return json_response(200, {"keys": keys})

    def operation(op: str) -> Route:
        async def handler(request: Request) -> Response:
            document = await request.json(_BODY_LIMIT)
            if not isinstance(document, dict) or set(document) != {"key"}:
                raise HttpError(400, 'body must be {"key": "<base64>"}')
            try:
                key = decode_key(document["key"])
            except KeyringError as exc:
                raise HttpError(exc.status, str(exc)) from None
            keyring = _keyring(agent)
            try:
                fp = _apply(keyring, op, key)
            except KeyringError as exc:
                raise HttpError(exc.status, str(exc)) from None
            agent.log.info("keyring changed", op=op, fingerprint=fp, by="api")
            results = {agent.core.name: "ok", **await _distribute(agent, op, key)}
            return json_response(200, {"fingerprint": fp, "results": results})

        return Route("POST", f"/v1/keyring/{op}", handler)

    return [Route("GET", "/v1/keyring", list_keys), *(operation(op) for op in OPS)]


async def _distribute(agent: Agent, op: str, key: bytes) -> dict[str, str]:
    """Ask every other member that has not left (alive, suspect or dead) at
    once; each answer or error, a dead member's failure marked as such."""
    results: dict[str, str] = {}
    targets = [
        view
        for view in agent.core.members()
        if view.name != agent.core.name and view.status is not MemberStatus.LEFT
    ]
    peers = agent.peers
    if peers is None:
        return {view.name: "no peer client" for view in targets}

    # As many at once as route pushes: a large mesh is asked in waves.
    limiter = trio.CapacityLimiter(agent.config.push_concurrency)

    async def one(name: str, addr: tuple[str, int], dead: bool) -> None:
        async with limiter:
            answer = await peers.keyring_op(addr, op, key)
        if dead and answer != "ok":
            answer = f"member is dead: {answer}"
        results[name] = answer

    async with trio.open_nursery() as nursery:
        for view in targets:
            dead = view.status is MemberStatus.DEAD
            nursery.start_soon(one, view.name, view.addr, dead)
    return results


def peer_keyring_route(agent: Agent) -> Route:
    """``POST /mesh/v1/keyring``: a member distributing an operation to us.

    Reached only through the sealed peer app, so only a key holder can ask.
    """

    async def handler(request: Request) -> Response:
        body = await request.body(_BODY_LIMIT)
        op, key = _decode_op(body)
        keyring = _keyring(agent)
        try:
            fp = _apply(keyring, op, key)
        except KeyringError as exc:
            raise HttpError(exc.status, str(exc)) from None
        agent.log.info("keyring changed", op=op, fingerprint=fp, by="peer")
        return json_response(200, {"fingerprint": fp})

    return Route("POST", KEYRING_PATH, handler)


def _decode_op(body: bytes) -> tuple[str, bytes]:
    try:
        document: Any = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_str_len=16,
            max_bin_len=64,
            max_array_len=0,
            max_map_len=4,
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise HttpError(400, "malformed keyring operation") from None
    if not isinstance(document, dict) or set(document) != {"op", "key"}:
        raise HttpError(400, "keyring operation must be {op, key}")
    op, key = document["op"], document["key"]
    if op not in OPS or not isinstance(key, bytes):
        raise HttpError(400, "keyring operation must name install, use or remove")
    return op, key

"""The routes part of the client API (contract.md, "Client API"), plugged into
:func:`mesh.shell.api.make_api_app` with ``routes=routes_endpoints(agent)``.

A write returns as soon as the core has committed it and queued it for peers:
it never waits on a peer, because a slow or paused peer must add no latency to
writes (contract, "Guarantees"). Only ``?sync=all&timeout=S`` waits, at most S
seconds, for every member live at write time to acknowledge; it re-checks the
core's ticket each time a push batch ends (:meth:`Agent.wait_push_progress`),
never by polling.

The list (``GET /v1/routes``) answers a snapshot of the table taken at one
instant with its index, encoded in slices with the loop running between
(:func:`mesh.shell.watch_api.encode_route_list`): a 100,000-route list never
stalls probes or other requests for more than a few ms at a stretch.

A write refused with 400 here, before the core (a bad body, key, revision or
``sync`` query; each such item of a batch; a batch call refused whole counts
once), is counted as ``mesh_route_writes_total{result="invalid"}``, like the
ones the core refuses.

Targets and meta may carry access tokens: they are never logged; debug lines
name keys only.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from functools import partial
from itertools import repeat
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
import trio

from ..codec_routes import META_TYPE, U64_TYPE
from ..core.route_checks import keys_ok, targets_ok, validate_route_fields
from ..core.routes import (
    Outcome,
    OutcomeStatus,
    Route as Entry,  # (asgi's Route is an endpoint)
    Write,
)
from ..core.sync import SyncTicket
from .agent import Agent
from .api import BODY_LIMIT
from .asgi import (
    CLIENT_GONE,
    DECIMAL,
    HttpError,
    Request,
    Response,
    Route,
    json_response,
    parse_json,
    query_u64,
    refuse_repeated,
    wait_unless_disconnected,
)
from .watch_api import encode_route_list

__all__ = ["BATCH_BODY_LIMIT", "BATCH_MAX_ITEMS", "routes_endpoints"]

#: body limit of ``POST /v1/routes`` (contract: 4 MiB)
BATCH_BODY_LIMIT = 4 * 1024 * 1024
#: most items (puts and deletes together) in one batch call
BATCH_MAX_ITEMS = 1000

_PUT_FIELDS = frozenset(("target", "meta", "revision"))
_BATCH_PUT_FIELDS = _PUT_FIELDS | {"key"}
_BATCH_DELETE_FIELDS = frozenset(("key", "revision"))
_BATCH_FIELDS = frozenset(("put", "delete"))
_SECONDS_RE = re.compile(DECIMAL)
#: a ``sync=all`` wait longer than this also watches for its client going
#: away (seconds): a bound on how long a gone client holds its connection, not
#: a tunable
_WATCH_GONE_AFTER = 1.0
# query parameters of the write calls: any other, or one given twice, is 400
_SYNC_PARAMS = frozenset(("sync", "timeout"))
_DELETE_PARAMS = _SYNC_PARAMS | {"revision"}

#: (HTTP status, JSON body) as the single-item call answers it
Result = tuple[int, dict[str, Any]]


class _Put(NamedTuple):
    """A parsed put; target and meta may carry tokens, so never in a repr
    (a named tuple: one per item of a batch call, built in C)."""

    target: str
    meta: dict[str, str]
    revision: int | None

    def __repr__(self) -> str:
        return f"_Put(revision={self.revision!r})"


def routes_endpoints(agent: Agent) -> list[Route]:
    """The ``/v1/routes`` handlers of ``agent``."""
    sync_max = agent.config.sync_timeout_max

    async def get_one(request: Request) -> Response:
        key = _path_key(request)
        route = agent.core.routes.get(key)
        if route is None or route.deleted:
            raise HttpError(404, f"no route for key {key!r}")
        return json_response(200, route.to_json())

    async def put_one(request: Request) -> Response:
        with _count_invalid(agent):
            document = await request.json(BODY_LIMIT)
            key = _path_key(request)
            _check_query(request, _SYNC_PARAMS)
            timeout = _sync_timeout(request, sync_max)
            parsed = _parse_put(document, _PUT_FIELDS)
            if isinstance(parsed, str):
                raise HttpError(400, parsed)
        status, body = _put(agent, key, parsed)
        if timeout is not None and status == 200:
            body.update(await _sync_all(agent, timeout, request))
        return json_response(status, body, headers=_retry_after(status))

    async def delete_one(request: Request) -> Response:
        with _count_invalid(agent):
            # Read (and bound) any body: an unread one would stall keep-alive.
            _no_conditions_in(await request.body(BODY_LIMIT))
            key = _path_key(request)
            _check_query(request, _DELETE_PARAMS)
            timeout = _sync_timeout(request, sync_max)
            text = request.query_one("revision")
            revision = None if text is None else query_u64(text, "revision")
        status, body = _delete(agent, key, revision)
        if timeout is not None and status == 200:
            body.update(await _sync_all(agent, timeout, request))
        return json_response(status, body, headers=_retry_after(status))

    async def list_all(request: Request) -> Response:
        refuse_repeated(request.query, ("prefix",))
        prefix = request.query_one("prefix") or ""
        # The table and its index at one instant; encoding a long list then
        # yields to the loop between slices, reading only this snapshot.
        table = agent.core.routes
        keys, entries = table.sorted_snapshot(prefix)
        index = table.index
        body = await encode_route_list(keys, entries, index)
        return Response(200, body, headers=(("x-mesh-index", str(index)),))

    async def batch(request: Request) -> Response:
        with _count_invalid(agent):  # the whole call refused: one count
            data = await request.body(BATCH_BODY_LIMIT)
            at_once = _typed_puts(data)
            document = None if at_once is not None else parse_json(data)
            _check_query(request, _SYNC_PARAMS)
            timeout = _sync_timeout(request, sync_max)
            puts, deletes = ([], []) if at_once is not None else _parse_batch(document)
        refusal = agent.core.write_refusal()
        if refusal is not None:  # node-wide: the call, not each item
            agent.metrics.route_write(OutcomeStatus.UNAVAILABLE.value)
            raise HttpError(503, refusal, headers=_RETRY_AFTER)
        # Items are checked first and the valid ones written in one core call
        # (in order, each as if alone), so they reach peers as one batch.
        results: list[dict[str, Any]] = []
        writes: list[Write] = []
        slots: Sequence[int] = []  # where each write's result goes
        if at_once is not None:  # (each result is set below)
            writes, slots, results = at_once, range(len(at_once)), [{}] * len(at_once)
        else:
            slots = []
            for items, deleted in ((puts, False), (deletes, True)):
                for item in items:
                    parsed = _batch_item(item, deleted=deleted)
                    if isinstance(parsed, Write):
                        slots.append(len(results))
                        writes.append(parsed)
                        parsed = {}
                    else:  # refused here, before the core (which counts its own)
                        agent.metrics.route_write(OutcomeStatus.INVALID.value)
                    results.append(parsed)
        if writes:
            outcomes = agent.write_routes(writes)
            for slot, write, outcome in zip(slots, writes, outcomes, strict=True):
                agent.log.debug(
                    "route delete" if write.deleted else "route put",
                    key=write.key,
                    result=outcome.status.value,
                )
                stored = outcome.route
                if (
                    outcome.status is OutcomeStatus.APPLIED
                    and stored is not None
                    and not stored.deleted
                ):
                    results[slot] = _stored(stored)
                else:
                    status, answer = _result(outcome)
                    results[slot] = {"key": write.key, "status": status, **answer}
        body: dict[str, Any] = {"results": results}
        if timeout is not None:
            # After the last item, with no checkpoint since: covers them all.
            body.update(await _sync_all(agent, timeout, request))
        return json_response(200, body)

    return [
        Route("GET", "/v1/routes", list_all),
        Route("POST", "/v1/routes", batch),
        Route("GET", "/v1/routes/{key}", get_one),
        Route("PUT", "/v1/routes/{key}", put_one),
        Route("DELETE", "/v1/routes/{key}", delete_one),
    ]


# --- writes ---

#: a 503 (not caught up yet) is worth retrying soon: a bootstrap takes seconds
_RETRY_AFTER = (("retry-after", "1"),)


def _no_conditions_in(body: bytes) -> None:
    """A DELETE's conditions go in its query (``?revision=``). A body that
    says anything is refused (400) rather than ignored: a revision sent
    there, as a batch item carries it, would otherwise make a conditional
    delete unconditional without a word. Nothing, blanks, ``null``, an empty
    JSON object (what some clients send by default) or ``{"revision": null}``
    (JSON ``null`` means absent, as everywhere in the API) say nothing."""
    if body.strip() and parse_json(body) not in _SAYS_NOTHING:
        raise HttpError(400, "a DELETE takes no body: give its revision as ?revision=N")


#: DELETE bodies that carry no condition (see _no_conditions_in)
_SAYS_NOTHING: tuple[object, ...] = (None, {}, {"revision": None})


def _retry_after(status: int) -> tuple[tuple[str, str], ...]:
    return _RETRY_AFTER if status == 503 else ()


@contextlib.contextmanager
def _count_invalid(agent: Agent) -> Iterator[None]:
    """Count a write refused with 400 before it reached the core as
    ``mesh_route_writes_total{result="invalid"}`` (the core counts the
    writes it refuses itself, through the agent)."""
    try:
        yield
    except HttpError as exc:
        if exc.status == 400:
            agent.metrics.route_write(OutcomeStatus.INVALID.value)
        raise


def _put(agent: Agent, key: str, put: _Put) -> Result:
    outcome = agent.put_route(key, put.target, put.meta, put.revision)
    agent.log.debug("route put", key=key, result=outcome.status.value)
    return _result(outcome)


def _delete(agent: Agent, key: str, revision: int | None) -> Result:
    outcome = agent.delete_route(key, revision)
    agent.log.debug("route delete", key=key, result=outcome.status.value)
    return _result(outcome)


_new = tuple.__new__


def _result(outcome: Outcome) -> Result:
    """The single-item call's answer to a write's outcome."""
    status = outcome.status
    route = outcome.route
    if status is OutcomeStatus.INVALID:
        return 400, {"error": outcome.reason}
    if status is OutcomeStatus.FULL:
        return 507, {"error": outcome.reason}
    if status is OutcomeStatus.UNAVAILABLE:
        return 503, {"error": outcome.reason}
    assert route is not None  # every other outcome names the stored route
    if status is OutcomeStatus.CONFLICT:
        current = route.to_json()
        if route.deleted:
            current["deleted"] = True  # a tombstone: its target is empty
        return 409, {"error": outcome.reason, "current": current}
    # APPLIED (a client's write always supersedes what it replaces)
    if route.deleted:
        return 200, {"key": route.key, "deleted": True, "version": str(route.version)}
    return 200, route.to_json()


def _stored(route: Entry) -> dict[str, Any]:
    """A batch item's result for a live route it stored: ``{"key", "status"}``
    and :meth:`Route.to_json`, as one dict rather than two and a merge (1.0
    of 2.4 us per item; a batch call answers up to 1,000). The meta is the
    stored route's own, not a copy: the table never changes a stored meta
    (it stores a new route), and the answer only reads it."""
    version = route.version
    return {
        "key": route.key,
        "status": 200,
        "target": route.target,
        "meta": route.meta,
        "version": str(version),
        "origin": version.origin,
        "revision": version.revision,
    }


async def _wait_acked(agent: Agent, ticket: SyncTicket) -> None:
    """Return once every peer of ``ticket`` acked (the caller bounds the wait)."""
    # Checking and starting to wait happen without a checkpoint between, so no
    # push can end unseen.
    while agent.core.sync_status(ticket)[1]:
        await agent.wait_push_progress()


async def _sync_all(
    agent: Agent, wait: float, request: Request
) -> dict[str, list[str]]:
    """``sync=all``: wait at most ``wait`` seconds for every peer live at the write
    to ack it. Call right after the write, with no checkpoint since the core
    call, so the ticket covers exactly that write.

    A client that goes meanwhile ends the wait (499, counted): its connection
    would otherwise stay taken for up to ``sync_timeout_max`` with nobody to
    answer, and enough of them would fill ``http_max_connections``. That
    watch starts only after :data:`_WATCH_GONE_AFTER`: most waits end within a
    push round trip, and a watch task costs them a scheduling round when it is
    cancelled (tens of ms on a loaded loop)."""
    ticket = agent.core.sync_ticket()
    # The caller waits: its write goes out now, not at the push rate limit's
    # next token (plain writes are gathered under load; this one is not).
    agent.expedite_pushes()
    deadline = trio.current_time() + wait
    with trio.move_on_at(min(deadline, trio.current_time() + _WATCH_GONE_AFTER)):
        await _wait_acked(agent, ticket)
    gone = False
    if agent.core.sync_status(ticket)[1] and trio.current_time() < deadline:
        with trio.move_on_at(deadline):
            gone = await wait_unless_disconnected(
                request.receive, partial(_wait_acked, agent, ticket)
            )
    if gone:  # the write stands; only its answer has nobody to go to
        raise HttpError(CLIENT_GONE, "client disconnected")
    acked_by, pending = agent.core.sync_status(ticket)
    return {"acked": acked_by, "pending": pending}


# --- request parsing ---


def _path_key(request: Request) -> str:
    # The server hands us the path already URL-decoded.
    key = request.params["key"]
    error = validate_route_fields(key)
    if error is not None:
        raise HttpError(400, error)
    return key


def _check_query(request: Request, known: frozenset[str]) -> None:
    """HttpError 400 for a query parameter a write call does not take, or one
    given twice: a misspelt ``revision`` must not turn a conditional delete
    into an unconditional one, and which of two values counts is a guess."""
    unknown = sorted(set(request.query) - known)
    if unknown:
        raise HttpError(400, f"unknown query parameters: {', '.join(unknown)}")
    refuse_repeated(request.query, request.query)


def _sync_timeout(request: Request, maximum: float) -> float | None:
    """``?sync=all&timeout=S``: S, or None when the client does not wait."""
    sync = request.query_one("sync")
    text = request.query_one("timeout")
    if sync is None and text is None:
        return None
    if sync is None:
        raise HttpError(400, "timeout goes with sync=all")
    if sync != "all":
        raise HttpError(400, f"sync must be 'all' (with timeout), got {sync!r}")
    if text is None:
        raise HttpError(400, "sync=all needs timeout=SECONDS")
    # ASCII decimals only, as the other numbers of the query: float() would
    # also take spaces, signs, exponents and digits of any script
    timeout = float(text) if _SECONDS_RE.fullmatch(text) else math.nan
    if not (math.isfinite(timeout) and 0 < timeout <= maximum):
        raise HttpError(
            400, f"timeout must be a number of seconds in (0, {maximum}], got {text!r}"
        )
    return timeout


def _parse_put(document: object, fields: frozenset[str]) -> _Put | str:
    """A put's fields, or the 400 error message."""
    if not isinstance(document, dict):
        return "body must be a JSON object"
    if not document.keys() <= fields:  # (no set built for a valid put)
        unknown = sorted(set(document) - fields)
        return f"unknown fields: {', '.join(unknown)}"
    if "target" not in document:
        return "target is required"
    target = document["target"]
    meta = document.get("meta")
    if meta is None:  # absent or null: no metadata
        meta = {}
    error = validate_route_fields("x", target, meta)
    if error is not None:
        return error
    revision = _parse_revision(document.get("revision"))
    if isinstance(revision, str):
        return revision
    return _new(_Put, (target, dict(meta), revision))


def _parse_revision(value: object) -> int | str | None:
    """An optional revision (None when absent or null), or the error message."""
    if value is None:
        return None
    if type(value) is not int or value < 0:  # bool is an int: refused too
        return "revision must be a non-negative integer"
    return value


def _parse_batch(document: object) -> tuple[list[object], list[object]]:
    """The batch call's put and delete lists; HttpError 400 for the whole call."""
    if not isinstance(document, dict):
        raise HttpError(400, "body must be a JSON object")
    unknown = sorted(set(document) - _BATCH_FIELDS)
    if unknown:
        raise HttpError(400, f"unknown fields: {', '.join(unknown)}")
    lists: list[list[object]] = []
    for name in ("put", "delete"):
        items = document.get(name)
        if items is None:
            items = []
        if not isinstance(items, list):
            raise HttpError(400, f"{name} must be an array")
        lists.append(items)
    puts, deletes = lists
    total = len(puts) + len(deletes)
    if total > BATCH_MAX_ITEMS:
        raise HttpError(
            400, f"a batch holds at most {BATCH_MAX_ITEMS} items, got {total}"
        )
    return puts, deletes


class _TypedPut(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    key: str
    target: str
    meta: META_TYPE | None = None
    revision: U64_TYPE | None = None


class _TypedBatch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    put: list[_TypedPut] | None = None
    delete: list[Any] | None = None


_TYPED_BATCH = msgspec.json.Decoder(_TypedBatch)
_KEY = attrgetter("key")
_TARGET = attrgetter("target")
_META = attrgetter("meta")
_REVISION = attrgetter("revision")


def _typed_puts(data: bytes) -> list[Write] | None:
    """A batch call's body of puts only, as writes, checked without a Python
    step per item: msgspec decodes it against :class:`_TypedBatch` (known
    fields, strings, the meta limits in characters, revisions absent, null or
    u64, in C), then keys and target lengths are checked column by column.
    None for any other body, valid or not: it is then parsed as JSON and
    checked item by item (:func:`_batch_item`), which says what is wrong.
    Accepts only what :func:`_batch_item` accepts and builds the same writes
    (a property test holds it to that). Why: a batch call carries up to
    1,000 items; parsing and checking them cost ~3 us each before."""
    try:
        batch = _TYPED_BATCH.decode(data)
    except msgspec.DecodeError:  # (ValidationError is one)
        return None
    puts = batch.put
    if batch.delete or not puts or len(puts) > BATCH_MAX_ITEMS:
        return None
    keys = list(map(_KEY, puts))
    targets = list(map(_TARGET, puts))
    if not targets_ok(targets) or not keys_ok(keys):
        return None
    metas = [{} if m is None else m for m in map(_META, puts)]
    columns = zip(keys, targets, metas, map(_REVISION, puts), repeat(False))
    return list(map(_new_write, columns))


_new_write = partial(tuple.__new__, Write)


def _batch_item(item: object, *, deleted: bool) -> Write | dict[str, Any]:
    """One item as a write, or its 400 result ``{"key", "status", "error"}``."""
    if not isinstance(item, dict):
        return {"key": None, "status": 400, "error": "item must be a JSON object"}
    key = item.get("key")
    shown = key if isinstance(key, str) else None
    error = validate_route_fields(key)
    if error is not None:
        return {"key": shown, "status": 400, "error": error}
    assert isinstance(key, str)
    if deleted:
        unknown = sorted(set(item) - _BATCH_DELETE_FIELDS)
        revision = _parse_revision(item.get("revision"))
        if unknown:
            error = f"unknown fields: {', '.join(unknown)}"
        elif isinstance(revision, str):
            error = revision
        else:
            return Write(key, "", {}, revision, deleted=True)
    else:
        parsed = _parse_put(item, _BATCH_PUT_FIELDS)
        if not isinstance(parsed, str):
            # tuple.__new__ straight: a named tuple's own __new__ is a Python
            # function, one frame per item of a batch call
            return _new(
                Write, (key, parsed.target, parsed.meta, parsed.revision, False)
            )
        error = parsed
    return {"key": key, "status": 400, "error": error}

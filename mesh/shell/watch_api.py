"""Watching the route table: blocking queries and a change stream.

Two forms, for two kinds of client (docs/contract.md, "Watching routes"):

* **Blocking query** (Consul's style): ``GET /v1/routes?index=N&wait=30s``
  answers at once if the table's change index is past ``N`` (or behind it: the
  agent restarted and the client's index is from its previous life), otherwise
  when it moves or ``wait`` ends. Every ``GET /v1/routes`` answer carries the
  index (``X-Mesh-Index`` header, ``"index"`` field), so a client loops
  ``index = answer.index``. :func:`wrap_list` adds the wait around the plain
  list handler of ``routes_api`` without touching it (that handler gives the
  index of its snapshot; wrap_list adds it to a handler's answer that lacks it).
* **Stream**: ``GET /v1/watch/routes[?index=N&prefix=P]`` answers with
  newline-delimited JSON for as long as the client reads: a ``snapshot`` line
  (every live route), then one ``put`` or ``delete`` line per change, each with
  the index it brings the client to, and a ``heartbeat`` line after
  ``watch_heartbeat_interval`` of quiet. Given an ``index`` still covered by the
  change log, the stream starts with the changes since it instead of a snapshot.

Bounds. The route table keeps its last ``watch_log_max`` changes, each with
its own index (:meth:`RouteTable.changes_after`), so a client may resume
after any event it saw, in the middle of a batch too. Streams hold only a
position in that log, never a queue of their own: a stream that falls off
the end gets a fresh ``snapshot`` (resync), and one whose client accepts
nothing for ``watch_send_timeout`` is dropped. The stream goes out in pieces
of :data:`SEND_PIECE_BYTES`, each with that timeout, so a client reading
slowly but steadily keeps its stream however big a batch (to a piece: one
taking in less than a piece in that time is dropped). At most
``watch_max_clients`` blocking queries and streams are open at once (429
past it); each also waits on ``receive`` for its client's disconnect, so a
client that went away frees its place at once, not when its ``wait`` or the
next heartbeat ends. Waiting costs
nothing: waiters sleep on :meth:`Agent.wait_routes_changed`, set by the agent
when the index moves.

Big lists. A list answer is a snapshot of the table (its sorted keys and its
entries, copied at one instant with the index: :meth:`RouteTable.sorted_snapshot`)
encoded by :func:`encode_route_list` in slices of :data:`LIST_SLICE_ROUTES`
with a checkpoint between, so reading 100,000 routes (15 MB of JSON), or
blocking queries re-listing them on every change, never holds the loop for
more than a few ms at a stretch: probes and other requests are served
meanwhile.

``HEAD`` on either form answers at once with what ``GET`` would start with
(status and headers, 400 and 429 included), never waiting or taking a place.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs

import attrs
import trio

from ..core.routes import Route
from .agent import Agent
from .asgi import (
    CLIENT_GONE,
    DECIMAL,
    Handler,
    HttpError,
    Message,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    query_u64,
    refuse_repeated,
    until_disconnected,
)

__all__ = [
    "LIST_SLICE_ROUTES",
    "SEND_PIECE_BYTES",
    "STREAM_CONTENT_TYPE",
    "STREAM_PATH",
    "RouteEvent",
    "RouteWatchHub",
    "RouteWatcher",
    "WatchBatch",
    "encode_route_list",
    "parse_wait",
    "serve_stream",
    "wrap_list",
]

#: routes serialised between two checkpoints of a long list answer: about
#: 2 ms of work (~4 µs a route), so a 100,000-route list lets the loop serve
#: probes and requests ~200 times meanwhile. A latency bound of this module,
#: not a tunable: no deployment is better served by another value.
LIST_SLICE_ROUTES = 512
#: what json.dumps(..., separators=(",", ":")) builds (as json_response does)
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))

#: path of the change stream (not under /v1/routes/: "watch" is a valid key)
STREAM_PATH = "/v1/watch/routes"
STREAM_CONTENT_TYPE = "application/x-ndjson"
#: most bytes of a stream in one send (one ASGI body message: one socket
#: write), each under its own ``watch_send_timeout``, so the timeout measures
#: whether the client reads, not how long a batch takes it (300 KB in one send
#: cut a client reading 8 KB/s). Smaller costs CPU (4 KiB: +20% on a 15 MB
#: snapshot); 16 KiB costs nothing measurable. A bound, not a tunable.
SEND_PIECE_BYTES = 16 * 1024
_WAIT_RE = re.compile(f"({DECIMAL})(ms|s|m|h)?")
_WAIT_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@attrs.frozen
class RouteEvent:
    """One change: ``route`` is the new entry (a tombstone for a delete), None
    when the entry disappeared from the table (a tombstone reaped)."""

    index: int
    key: str
    route: Route | None

    @property
    def deleted(self) -> bool:
        return self.route is None or self.route.deleted

    def to_json(self) -> dict[str, Any]:
        """The stream's ``put`` / ``delete`` line (targets only in ``put``)."""
        if self.route is not None and not self.route.deleted:
            return {"event": "put", "index": self.index, "route": self.route.to_json()}
        line: dict[str, Any] = {"event": "delete", "index": self.index, "key": self.key}
        if self.route is not None:
            line["version"] = str(self.route.version)
        return line


class RouteWatchHub:
    """The change log shared by one agent's streams, and the watcher count.

    Args:
        agent: whose route table is watched.
    """

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._table = agent.core.routes
        self._max_clients = agent.config.watch_max_clients
        #: blocking queries and streams open now
        self.clients = 0

    @property
    def index(self) -> int:
        """The table's change index: the position of a client in step."""
        return self._table.index

    def check_room(self) -> None:
        """Raise the 429 :meth:`client_slot` would, without taking a place or
        counting a refusal (``HEAD``: GET's status, no watcher)."""
        if self.clients >= self._max_clients:
            raise self._too_many()

    def _too_many(self) -> HttpError:
        return HttpError(
            429,
            f"too many route watchers (watch_max_clients={self._max_clients})",
            headers=[("retry-after", "1")],
        )

    @contextlib.contextmanager
    def client_slot(self) -> Iterator[None]:
        """Hold one of ``watch_max_clients`` places, or raise 429."""
        if self.clients >= self._max_clients:
            self.agent.metrics.route_watch_dropped.labels("too_many").inc()
            raise self._too_many()
        self.clients += 1
        self.agent.metrics.route_watchers.set(self.clients)
        try:
            yield
        finally:
            self.clients -= 1
            self.agent.metrics.route_watchers.set(self.clients)

    def events_after(self, index: int) -> list[RouteEvent] | None:
        """The changes past ``index``, oldest first, each with its own index
        (so a client may resume after any event, mid-batch too); None if the
        table's change log (``watch_log_max``) no longer reaches back that
        far, or ``index`` is from the future: the caller must resync from a
        snapshot."""
        changes = self._table.changes_after(index)
        if changes is None:
            return None
        return [RouteEvent(i, key, route) for i, key, route in changes]

    def snapshot(self, prefix: str = "") -> tuple[int, list[Route]]:
        """Every live route under ``prefix``, sorted by key, and the index it
        reflects."""
        return self._table.index, self._table.live(prefix)

    def watcher(self, index: int | None = None, prefix: str = "") -> RouteWatcher:
        """A cursor over this log for one client (stream or embedding)."""
        return RouteWatcher(self, index, prefix)


@attrs.frozen
class WatchBatch:
    """What a :class:`RouteWatcher` hands out: a snapshot (every live route,
    replacing whatever the client held) or changes, and the index after it."""

    index: int
    snapshot: bool
    routes: list[Route] = attrs.field(factory=list, repr=False)
    events: list[RouteEvent] = attrs.field(factory=list, repr=False)


class RouteWatcher:
    """One client's position in a :class:`RouteWatchHub`'s log.

    Holds no queue: :meth:`next` reads the shared log from its position, so a
    client that reads slowly just gets larger batches, and one that fell off
    the log gets a snapshot. Cancelling :meth:`next` loses nothing.
    """

    def __init__(self, hub: RouteWatchHub, index: int | None, prefix: str) -> None:
        self._hub = hub
        self._prefix = prefix
        #: the index the client is in step with; None until the first batch
        self.position: int | None = None
        if index is not None and hub.events_after(index) is not None:
            self.position = index

    async def next(self) -> WatchBatch:
        """The next snapshot or non-empty batch of changes (waits for one)."""
        while True:
            batch = self.poll()
            if batch is not None:
                return batch
            await self._hub.agent.wait_routes_changed()

    def poll(self) -> WatchBatch | None:
        """:meth:`next` if one is ready now, else None (then wait for
        ``agent.wait_routes_changed()`` and poll again)."""
        hub = self._hub
        while True:
            if self.position is None:
                return self._snapshot()
            events = hub.events_after(self.position)
            if events is None:
                hub.agent.metrics.route_watch_dropped.labels("resync").inc()
                return self._snapshot()
            if hub.index == self.position:
                return None
            self.position = hub.index
            mine = [e for e in events if e.key.startswith(self._prefix)]
            if mine:
                return WatchBatch(self.position, False, events=mine)

    def _snapshot(self) -> WatchBatch:
        index, routes = self._hub.snapshot(self._prefix)
        self.position = index
        return WatchBatch(index, True, routes=routes)


async def encode_route_list(
    keys: Sequence[str], entries: Mapping[str, Route], index: int
) -> bytes:
    """``{"routes": [...], "count": n, "index": index}`` of the live entries
    of ``keys`` in that order, as compact JSON: byte for byte what
    :func:`json_response` builds from that document.

    ``keys`` and ``entries`` must be a snapshot
    (:meth:`RouteTable.sorted_snapshot`), since the loop runs between
    slices. Up to :data:`LIST_SLICE_ROUTES` keys are encoded at once with no
    checkpoint (the common, small list costs nothing more); a longer list is
    encoded a slice at a time with a checkpoint after each, so a
    100,000-route answer never holds the loop for more than a few ms at a
    stretch.
    """
    pages = (
        [
            r.to_json()
            for k in keys[start : start + LIST_SLICE_ROUTES]
            if not (r := entries[k]).deleted
        ]
        for start in range(0, len(keys), LIST_SLICE_ROUTES)
    )
    items, count = await _json_items(pages)
    return b"".join(
        (b'{"routes":[', *items, f'],"count":{count},"index":{index}}}'.encode())
    )  # one copy of the whole body


async def _json_items(pages: Iterable[list[dict[str, Any]]]) -> tuple[list[bytes], int]:
    """The compact JSON of every object of ``pages``, comma-separated and
    without brackets (the inside of an array), and how many: one page
    (:data:`LIST_SLICE_ROUTES` routes) encoded at a time, with a checkpoint
    before each page after the first, so the loop runs between pages. The
    pages are built lazily, each when its turn comes: callers pass a
    generator over a snapshot."""
    encode = _COMPACT_JSON.encode
    parts: list[bytes] = []
    count = 0
    for n, page in enumerate(pages):
        if n:
            await trio.lowlevel.checkpoint()
        if page:
            if count:
                parts.append(b",")
            count += len(page)
            parts.append(encode(page)[1:-1].encode())  # without the brackets
    return parts, count


async def snapshot_line(index: int, routes: Sequence[Route]) -> bytes:
    """The stream's ``snapshot`` line, byte for byte what :func:`_line` makes
    of ``{"event": "snapshot", "index": index, "routes": [...]}``, encoded
    :data:`LIST_SLICE_ROUTES` routes at a time with a checkpoint between, as
    :func:`encode_route_list` does: a stream opened on a 100,000-route table
    must not hold the loop for the whole table. ``routes`` is a snapshot
    (immutable routes in a list of its own)."""
    pages = (
        [r.to_json() for r in routes[start : start + LIST_SLICE_ROUTES]]
        for start in range(0, len(routes), LIST_SLICE_ROUTES)
    )
    items, _ = await _json_items(pages)
    head = f'{{"event":"snapshot","index":{index},"routes":['.encode()
    return b"".join((head, *items, b"]}\n"))


def _with_index(body: bytes, index: int) -> bytes:
    """A compact JSON object's body with ``"index"`` added last: what
    re-encoding the parsed document with the field would build, without
    parsing a list of maybe 100,000 routes again."""
    if not body.endswith(b"}"):  # not a JSON object: take the slow way
        document = json.loads(body)
        document["index"] = index
        return json.dumps(document, separators=(",", ":")).encode()
    glue = b"," if body != b"{}" else b""
    return b"".join((body[:-1], glue, b'"index":', str(index).encode(), b"}"))


def parse_wait(text: str | None, maximum: float) -> float:
    """``wait`` as seconds: ``30s``, ``500ms``, ``5m``, ``1h`` or a bare number
    of seconds; clamped to ``maximum`` (absent: ``maximum``).

    Raises:
        HttpError: 400 for anything else.
    """
    if text is None:
        return maximum
    match = _WAIT_RE.fullmatch(text)  # no spaces, as for every query number
    if match is None:
        raise HttpError(
            400, f"wait must be a duration such as 30s, 500ms or 5m, got {text!r}"
        )
    seconds = float(match.group(1)) * _WAIT_UNITS[match.group(2)]
    return min(seconds, maximum)


def _parse_index(text: str | None) -> int | None:
    if text is None:
        return None
    return query_u64(text, "index")


async def _wait_for_change(agent: Agent, index: int, receive: Receive) -> bool:
    """Return once the table's index differs from ``index``, the agent is
    leaving (a leaving agent should not hold clients until their wait ends) or
    the client went away (True: its slot is free at once, not after ``wait``)."""
    gone = False
    async with trio.open_nursery() as nursery:

        async def changed() -> None:
            while agent.core.routes.index == index:
                await agent.wait_routes_changed()
            nursery.cancel_scope.cancel()

        async def leaving() -> None:
            await agent.shutdown_requested.wait()
            nursery.cancel_scope.cancel()

        async def disconnected() -> None:
            nonlocal gone
            await until_disconnected(receive)
            gone = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(changed)
        nursery.start_soon(leaving)
        nursery.start_soon(disconnected)
    return gone


def wrap_list(hub: RouteWatchHub, inner: Handler) -> Handler:
    """``GET /v1/routes`` with the blocking query around ``inner`` (the plain
    list handler): every answer carries the index (added here if ``inner``'s
    lacks the ``X-Mesh-Index`` header); ``index``/``wait`` block.
    ``HEAD`` answers at once (what a ``GET`` would start with: the status, the
    index and length of the list as it is now), never waiting nor taking a
    slot."""
    agent = hub.agent
    table = agent.core.routes

    async def handler(request: Request) -> Response:
        refuse_repeated(request.query, ("index", "wait"))
        index = _parse_index(request.query_one("index"))
        wait_text = request.query_one("wait")
        if index is not None or wait_text is not None:
            wait = parse_wait(wait_text, agent.config.watch_wait_max)
            # Any other index answers now: behind ours (a change since, or an
            # earlier run of this agent: runs start their index at the wall
            # clock), or ahead (not ours; Consul answers at once too).
            if index is None or index == table.index:
                if request.method == "HEAD":
                    hub.check_room()
                else:
                    gone = False
                    with hub.client_slot(), trio.move_on_after(wait):
                        gone = await _wait_for_change(
                            agent, table.index, request.receive
                        )
                    if gone:  # nobody to answer: skip building the list
                        raise HttpError(CLIENT_GONE, "client disconnected")
        # No checkpoint until inner has taken its snapshot of the table (it
        # may serialise it in slices afterwards, the loop running between).
        current = table.index
        response = await inner(request)
        if response.status != 200 or any(
            name == "x-mesh-index" for name, _ in response.headers
        ):
            return response  # the list handler gave its snapshot's index
        return attrs.evolve(
            response,
            body=_with_index(response.body, current),
            headers=(*response.headers, ("x-mesh-index", str(current))),
        )

    return handler


def _line(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def _pieces(lines: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The bytes of ``lines``, in order, regrouped in pieces of ``size`` bytes
    (the last one shorter): short lines share a piece, a long one (a
    snapshot) spans several. Copies ``size`` bytes at a time, never a whole
    batch or line."""
    held = bytearray()
    for line in lines:
        start = 0
        if held:
            start = size - len(held)
            held += line[:start]
            if len(held) < size:
                continue
            yield bytes(held)
            held.clear()
        while len(line) - start >= size:
            yield line[start : start + size]
            start += size
        held += line[start:]
    if held:
        yield bytes(held)


async def serve_stream(
    hub: RouteWatchHub, scope: Scope, receive: Receive, send: Send
) -> int:
    """Answer one ``GET`` (or ``HEAD``) ``/v1/watch/routes`` as raw ASGI;
    returns the status for the request metric. Ends when the client goes away
    (``receive`` says so: its slot is free at once), is too slow, or the agent
    leaves. ``HEAD`` answers at once with the stream's status and headers (no
    body, no slot taken: nothing to wait for)."""
    try:
        query = _query(scope)
        index = _parse_index(query.get("index"))
        prefix = query.get("prefix") or ""
        if scope["method"] == "HEAD":
            hub.check_room()
            await send(_stream_start(hub))
            await send({"type": "http.response.body", "body": b""})
            return 200
        with hub.client_slot():
            await send(_stream_start(hub))
            # The head goes out now, not with the first line: a client
            # resuming at the current index may wait long for one, and a
            # client or proxy waiting that long for headers gives up.
            await send({"type": "http.response.body", "body": b"", "more_body": True})
            await _stream(hub, index, prefix, receive, send)
            return 200
    except HttpError as exc:
        body = json.dumps({"error": exc.message}, separators=(",", ":")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": exc.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *((k.encode(), v.encode()) for k, v in exc.headers),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return exc.status


def _stream_start(hub: RouteWatchHub) -> Message:
    # No content-length: the body is chunked (and so is the framing h11
    # announces in answer to HEAD).
    return {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", STREAM_CONTENT_TYPE.encode()),
            (b"cache-control", b"no-store"),
            (b"x-mesh-index", str(hub.agent.core.routes.index).encode()),
        ],
    }


def _query(scope: Scope) -> dict[str, str]:
    parsed = parse_qs(
        scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
    )
    refuse_repeated(parsed, ("index", "prefix"))
    return {k: v[-1] for k, v in parsed.items()}


async def _stream(
    hub: RouteWatchHub, index: int | None, prefix: str, receive: Receive, send: Send
) -> None:
    agent = hub.agent
    config = agent.config

    async def write(lines: list[bytes]) -> bool:
        # A piece at a time, each with the whole timeout: a client is dropped
        # when it takes in nothing (no piece) for watch_send_timeout, not when
        # it takes longer than that over a big batch while reading all along.
        for piece in _pieces(lines, SEND_PIECE_BYTES):
            with trio.move_on_after(config.watch_send_timeout):
                await send(
                    {"type": "http.response.body", "body": piece, "more_body": True}
                )
                continue
            agent.metrics.route_watch_dropped.labels("slow").inc()
            agent.log.info("route watcher dropped: not reading", reason="slow")
            return False
        return True

    async with trio.open_nursery() as nursery:

        async def until_leaving() -> None:
            await agent.shutdown_requested.wait()
            nursery.cancel_scope.cancel()

        async def pump() -> None:
            watcher = hub.watcher(index, prefix)
            while True:
                batch: WatchBatch | None = None
                # Only the wait is under the heartbeat timer, never a write.
                with trio.move_on_after(config.watch_heartbeat_interval):
                    batch = await watcher.next()
                if batch is None:
                    lines = [_line({"event": "heartbeat", "index": hub.index})]
                elif batch.snapshot:
                    lines = [await snapshot_line(batch.index, batch.routes)]
                else:
                    lines = [_line(e.to_json()) for e in batch.events]
                if not await write(lines):
                    break
            nursery.cancel_scope.cancel()

        async def until_gone() -> None:
            await until_disconnected(receive)
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_leaving)
        nursery.start_soon(until_gone)
        nursery.start_soon(pump)
    with trio.move_on_after(config.watch_send_timeout) as cleanup:
        cleanup.shield = True
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

"""A minimal raw-ASGI toolkit shared by the peer and the client API apps.

Why not a framework: two small apps with a handful of routes each, where every
byte read from a stranger must be bounded; a route table, a bounded body reader
and a JSON error shape are all we need, and they cost nothing per request.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qs, unquote

import attrs
import msgspec
import trio

from ..core.route_types import MAX_U64

__all__ = [
    "CLIENT_GONE",
    "ASGIApp",
    "HttpError",
    "Request",
    "Response",
    "Route",
    "Router",
    "json_response",
    "parse_json",
    "normalize_method",
    "read_body",
    "until_disconnected",
    "wait_unless_disconnected",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: methods we label metrics with; anything else is "OTHER" so a client cannot
#: grow the label set without bound
_KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


def normalize_method(method: str) -> str:
    """The method as a bounded metric label."""
    return method if method in _KNOWN_METHODS else "OTHER"


class HttpError(Exception):
    """Shell-internal control flow: a handler answers with an error status.

    Never escapes an app: :class:`Router` turns it into ``{"error": message}``.
    """

    def __init__(
        self, status: int, message: str, *, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = tuple(headers)


class _MethodNotAllowedError(HttpError):
    """405 on a path a route matches: metrics label it with that route's
    pattern (``unmatched`` is for paths nothing serves)."""

    def __init__(
        self, pattern: str, message: str, *, headers: Iterable[tuple[str, str]]
    ) -> None:
        super().__init__(405, message, headers=headers)
        self.pattern = pattern


JSON_CONTENT_TYPE = "application/json"


@attrs.frozen
class Response:
    """What a handler returns; ``body`` is sent as is, then ``after`` runs (so a
    handler can act once its answer is on the wire, e.g. leave and exit)."""

    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    after: Callable[[], None] | None = attrs.field(default=None, eq=False)


#: what json.dumps(..., separators=(",", ":")) would build on every call,
#: without the check for cycles: every document is built fresh here from
#: dicts and lists (a cycle would still end in RecursionError), and the
#: check costs ~10 % of encoding a batch call's 1,000 results
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_encode_json = msgspec.json.Encoder().encode


def json_response(
    status: int,
    document: Any,
    *,
    headers: Iterable[tuple[str, str]] = (),
    after: Callable[[], None] | None = None,
) -> Response:
    """A compact JSON response, in UTF-8 (RFC 8259).

    msgspec builds it in C: a batch call answers 1,000 results, and the
    standard encoder took ~2.8 us per result to msgspec's ~0.3. A document
    msgspec refuses (a lone surrogate echoed from a request's field name,
    a key that is not a string) goes through the standard encoder, which
    escapes what it cannot carry."""
    try:
        body = _encode_json(document)
    except (TypeError, ValueError):  # (UnicodeEncodeError is a ValueError)
        body = _COMPACT_JSON.encode(document).encode()
    return Response(status, body, headers=tuple(headers), after=after)


@attrs.define
class Request:
    """One HTTP request, body not yet read (read it with a limit)."""

    method: str
    path: str
    query: dict[str, list[str]]
    params: dict[str, str]
    #: the ASGI scope's (name, value) pairs, as bytes
    raw_headers: Iterable[tuple[bytes, bytes]]
    receive: Receive
    client: tuple[str, int] | None
    #: the whole body must arrive within this many seconds (None: no bound)
    body_timeout: float | None = None

    @functools.cached_property
    def headers(self) -> dict[str, str]:
        """Lower-case names to values, decoded on first use (most handlers
        never look)."""
        return {
            k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in self.raw_headers
        }

    def query_one(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    async def body(self, limit: int) -> bytes:
        """The whole body, or :class:`HttpError` 413 past ``limit`` bytes, 408
        when it takes longer than ``body_timeout`` (a per-read bound alone
        lets a client trickle a byte at a time and hold its connection for
        good: audit 10 blocked the API with 50 such)."""
        declared = self.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise HttpError(400, "content-length must be an integer") from None
            if size > limit:
                raise _too_large(limit)
        if self.body_timeout is None:
            return await read_body(self.receive, limit)
        with trio.move_on_after(self.body_timeout):
            return await read_body(self.receive, limit)
        raise HttpError(408, "request body too slow", headers=[("connection", "close")])

    async def json(self, limit: int) -> Any:
        """The body parsed as JSON, or :class:`HttpError` 400/413."""
        return parse_json(await self.body(limit))


def parse_json(data: bytes) -> Any:
    """A request body parsed as JSON, or :class:`HttpError` 400."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise HttpError(400, "malformed JSON: nested too deep") from None


#: the query's decimal numbers (``timeout``, ``wait``): ASCII digits with an
#: optional point, no sign, exponent or space (``float()`` would take those,
#: and digits of any script), of any length: the request head bounds it
DECIMAL = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"


def query_u64(text: str, name: str) -> int:
    """A query integer in 0..2**64-1 (ASCII digits, leading zeros allowed),
    or HttpError 400 naming the range. Never ``int()`` of a long string:
    CPython refuses over 4,300 digits with its own error, and past 20
    significant digits the value is out of range anyway."""
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdigit()) or (
        len(digits) > 20 or int(digits or "0") > MAX_U64
    ):
        raise HttpError(400, f"{name} must be an integer in 0..2**64-1, got {text!r}")
    return int(digits or "0")


def refuse_repeated(query: Mapping[str, list[str]], names: Iterable[str]) -> None:
    """HttpError 400 when one of ``names`` is given twice in a query: which of
    two values counts would be a guess (reads and writes alike)."""
    repeated = sorted(name for name in names if len(query.get(name, ())) > 1)
    if repeated:
        raise HttpError(400, f"query parameters given twice: {', '.join(repeated)}")


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"request body must be at most {limit} bytes")


async def read_body(
    receive: Receive, limit: int, on_chunk: Callable[[int], None] | None = None
) -> bytes:
    """Read an ASGI request body, refusing more than ``limit`` bytes.

    Checked chunk by chunk, so a chunked upload without a content-length cannot
    make us buffer more than ``limit`` plus one chunk. ``on_chunk(size)`` sees
    each chunk first: a budget shared across requests (the peer port's) charges
    it there and raises its own HttpError past the budget.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if on_chunk is not None:
            on_chunk(len(chunk))
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


#: the status of a request whose client went away while its handler waited
#: (nginx's "client closed request"): never sent, only counted
CLIENT_GONE = 499


async def until_disconnected(receive: Receive) -> None:
    """Return once the client has gone (``http.disconnect``); blocks for as
    long as it stays. Body the handler left unread is read and dropped."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def wait_unless_disconnected(
    receive: Receive, wait: Callable[[], Awaitable[object]]
) -> bool:
    """Run ``wait`` until it returns or the client disconnects, whichever comes
    first; True when the client went away. The caller's cancel scope (its
    timeout) bounds both. Costs a task, and a scheduling round when that task
    is cancelled: for long waits only."""
    gone = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal gone
            await until_disconnected(receive)
            gone = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await wait()
        nursery.cancel_scope.cancel()
    return gone


Handler = Callable[[Request], Awaitable[Response]]


@attrs.frozen
class Route:
    """``pattern`` is a path template: ``/v1/routes/{key}`` matches one segment.

    Matching is by segment on the *raw* (still percent-encoded) path, each
    segment decoded on its own: ``/v1/routes/a%2Fb`` is the key ``a/b`` (which
    the handler then refuses as invalid), not the path ``/v1/routes/a/b``.
    """

    method: str
    pattern: str
    handler: Handler
    #: literal segments, None where a parameter goes
    segments: tuple[str | None, ...] = attrs.field(init=False)
    #: parameter names, in segment order
    names: tuple[str, ...] = attrs.field(init=False)
    #: (index, literal) of the literal segments, and (index, name) of the
    #: parameters: what match() compares, precomputed
    _literals: tuple[tuple[int, str], ...] = attrs.field(
        init=False, repr=False, eq=False
    )
    _params: tuple[tuple[int, str], ...] = attrs.field(init=False, repr=False, eq=False)

    @segments.default
    def _split(self) -> tuple[str | None, ...]:
        return tuple(
            None if _PARAM_RE.fullmatch(part) else part
            for part in self.pattern.split("/")
        )

    @names.default
    def _names(self) -> tuple[str, ...]:
        return tuple(
            m.group(1)
            for part in self.pattern.split("/")
            if (m := _PARAM_RE.fullmatch(part))
        )

    @_literals.default
    def _literal_positions(self) -> tuple[tuple[int, str], ...]:
        return tuple(
            (i, want) for i, want in enumerate(self.segments) if want is not None
        )

    @_params.default
    def _param_positions(self) -> tuple[tuple[int, str], ...]:
        positions = (i for i, want in enumerate(self.segments) if want is None)
        return tuple(zip(positions, self.names, strict=True))

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The parameters when the decoded ``segments`` fit the template."""
        if len(segments) != len(self.segments):
            return None
        for i, want in self._literals:
            if segments[i] != want:
                return None
        params: dict[str, str] = {}
        for i, name in self._params:
            got = segments[i]
            if not got:
                return None
            params[name] = got
        return params


_PARAM_RE = re.compile(r"\{(\w+)\}")


def _segments(scope: Scope) -> list[str]:
    """The request path split on ``/``, each segment percent-decoded."""
    raw = scope.get("raw_path")
    if not raw:
        return str(scope["path"]).split("/")
    text = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    if "%" not in text:
        return text.split("/")
    return [unquote(part) for part in text.split("/")]


#: called after each response with (method label, route pattern or "unmatched",
#: status), for the request metric
Observer = Callable[[str, str, int], None]
#: called when a handler raised something unexpected (a bug), for the log
ErrorHook = Callable[[Request, BaseException], None]


class Router:
    """An ASGI app dispatching on a (method, path template) table.

    Unknown path: 404; known path, other method: 405 with ``Allow``; every error
    is ``{"error": message}``. A handler bug answers 500 instead of dropping the
    connection, and is reported through ``on_error``. ``HEAD`` runs the ``GET``
    handler (``request.method`` stays ``"HEAD"``, so a handler that would wait
    can answer at once instead); the server drops the body (RFC 9110 9.3.2).
    """

    def __init__(
        self,
        routes: Iterable[Route] = (),
        *,
        observe: Observer | None = None,
        on_error: ErrorHook | None = None,
        body_timeout: float | None = None,
        not_found_hint: str = "",
    ) -> None:
        #: the table, in match order; callers may append to it
        self.routes: list[Route] = list(routes)
        #: added to a 404's message: what this server is, when a caller
        #: may have meant another one
        self.not_found_hint = not_found_hint
        self._body_timeout = body_timeout
        self._observe = observe
        self._on_error = on_error
        # self.routes grouped by segment count (only those can match a path),
        # rebuilt when the table is no longer the one indexed
        self._indexed: tuple[Route, ...] = ()
        self._by_count: dict[int, list[Route]] = {}

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append(Route(method, pattern, handler))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await _lifespan(receive, send)
            return  # websockets: not ours; the server closes the connection
        method: str = scope["method"]
        path: str = scope["path"]
        label = "unmatched"
        query = scope.get("query_string", b"")
        request = Request(
            method=method,
            path=path,
            # Blank values kept: "?revision=" is a bad revision, not none.
            query=(
                parse_qs(query.decode("latin-1"), keep_blank_values=True)
                if query
                else {}
            ),
            params={},
            raw_headers=scope.get("headers", ()),
            receive=receive,
            client=scope.get("client"),
            body_timeout=self._body_timeout,
        )
        try:
            route, request.params = self._match(method, path, _segments(scope))
            label = route.pattern
            response = await route.handler(request)
        except _MethodNotAllowedError as exc:  # a known path: labelled with it
            label = exc.pattern
            response = json_response(
                exc.status, {"error": exc.message}, headers=exc.headers
            )
        except HttpError as exc:
            response = json_response(
                exc.status, {"error": exc.message}, headers=exc.headers
            )
        except Exception as exc:  # a handler bug must not kill the connection
            if self._on_error is not None:
                self._on_error(request, exc)
            response = json_response(500, {"error": "internal error"})
        try:
            await _send(send, response)
        finally:  # counted even when the client is gone (the send failed)
            if self._observe is not None:
                self._observe(normalize_method(method), label, response.status)
        if response.after is not None:
            response.after()

    def pattern_of(self, scope: Scope) -> str:
        """The label a request is counted under, as :meth:`__call__` would
        count it: the pattern of the route its path matches (a 405 too),
        else ``unmatched``. For a request refused before the router."""
        method, path = str(scope.get("method", "")), str(scope.get("path", ""))
        try:
            route, _ = self._match(method, path, _segments(scope))
        except _MethodNotAllowedError as exc:
            return exc.pattern
        except HttpError:
            return "unmatched"
        return route.pattern

    def _match(
        self, method: str, path: str, segments: list[str]
    ) -> tuple[Route, dict[str, str]]:
        routes = tuple(self.routes)
        if routes != self._indexed:
            self._by_count = {}
            for route in routes:
                self._by_count.setdefault(len(route.segments), []).append(route)
            self._indexed = routes
        # HEAD is served by the GET handler (the server sends no body).
        wanted = "GET" if method == "HEAD" else method
        allowed: list[str] = []
        pattern = ""
        for route in self._by_count.get(len(segments), ()):
            params = route.match(segments)
            if params is None:
                continue
            if route.method == wanted:
                return route, params
            allowed.append(route.method)
            pattern = route.pattern
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            raise _MethodNotAllowedError(
                pattern,
                f"method {method} not allowed on {path}",
                headers=[("allow", ", ".join(sorted(set(allowed))))],
            )
        raise HttpError(404, f"no such path: {path}{self.not_found_hint}")


_JSON_TYPE_BYTES = JSON_CONTENT_TYPE.encode()


async def _send(send: Send, response: Response) -> None:
    content_type = response.content_type
    headers = [
        (
            b"content-type",
            _JSON_TYPE_BYTES
            if content_type == JSON_CONTENT_TYPE
            else content_type.encode(),
        ),
        (b"content-length", str(len(response.body)).encode()),
        *((k.encode(), v.encode()) for k, v in response.headers),
    ]
    await send(
        {"type": "http.response.start", "status": response.status, "headers": headers}
    )
    await send({"type": "http.response.body", "body": response.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    # Answer the lifespan protocol, which any ASGI server may speak.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

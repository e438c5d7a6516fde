"""TCP side of the mesh port: HTTP between peers.

Server: a raw ASGI app (served by :mod:`mesh.shell.http_server` on the
pre-bound TCP socket, see :mod:`mesh.shell.net`) with

* ``POST /mesh/v1/exchange``: a msgpack :class:`~mesh.messages.PushPull` in, our
  own table out (memberlist's push-pull over TCP);
* ``GET /mesh/v1/ping?name=NAME``: the TCP fallback probe; 200 only if we are
  NAME, so a process that took over a dead member's port does not vouch for it;
* ``POST /mesh/v1/routes``: a batch of route deltas (``codec_routes.encode_routes``)
  pushed by a peer; the answer is a small msgpack ack with counts per outcome
  (:func:`mesh.codec_routes.encode_routes_ack`). One request per batch: a request
  costs CPU on both ends whatever its size (field notes), so deltas never
  travel one by one.

Client: :class:`PeerClient` runs the core's ``Exchange`` and ``ProbeTcp`` effects
over one shared ``httpx.AsyncClient`` and maps every httpx/OS error to a result
value at this boundary (``replies == []``, ``TcpProbeResult.FAILED``), so nothing
a peer does can raise into the agent.
"""

from __future__ import annotations

import errno
import json
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager

import httpx
import msgpack
import structlog
import trio
from prometheus_client import Counter

from ..codec import MAX_PUSH_PULL_SIZE, decode_push_pull, encode_push_pull
from ..codec_routes import (
    MAX_ROUTES_BODY,
    decode_routes,
    decode_routes_ack,
    encode_routes_ack,
)
from ..config import Config, parse_address
from ..core.effects import TcpProbeResult
from ..core.routes import Route as RouteEntry
from ..errors import ConfigError, DecodeError
from ..messages import Address, PushPull
from ..security import AuthError
from .asgi import HttpError, Request, Response, Route, Router, json_response
from .auth import client_ssl_context, peer_scheme
from .http_client import H11Transport, PeerHttpClient
from .metrics import Metrics
from .net import format_address
from .sealing import PEER_REFUSALS, Sealer

__all__ = [
    "ACK_LIMIT",
    "EXCHANGE_PATH",
    "KEYRING_PATH",
    "MSGPACK",
    "PING_PATH",
    "ROUTES_PATH",
    "BodyTooLargeError",
    "PeerClient",
    "decode_routes_ack",
    "encode_routes_ack",
    "make_peer_app",
    "open_peer_client",
    "refuse_body",
    "read_limited",
]

EXCHANGE_PATH = "/mesh/v1/exchange"
PING_PATH = "/mesh/v1/ping"
ROUTES_PATH = "/mesh/v1/routes"
#: a keyring operation distributed by the member that was asked (keyring_api)
KEYRING_PATH = "/mesh/v1/keyring"
MSGPACK = "application/msgpack"
#: most rows accepted in one pushed batch whatever our own ``push_batch_max``:
#: peers with a larger setting (a rolling config change) are still served
MIN_ROUTES_PER_BATCH = 10_000
#: largest ack body a pusher reads; a real one is a few dozen bytes
ACK_LIMIT = 4096

_MSGPACK_ERRORS = (
    msgpack.ExtraData,
    msgpack.FormatError,
    msgpack.StackError,
    msgpack.OutOfData,
    UnicodeDecodeError,
    ValueError,
)

HandleExchange = Callable[[PushPull], PushPull]
#: applies pushed deltas; returns counts by outcome (applied, stale, ...)
HandleRoutes = Callable[[list[RouteEntry], str], Mapping[str, int]]


# --- server ---


def make_peer_app(
    *,
    name: str,
    handle_exchange: HandleExchange,
    metrics: Metrics,
    log: structlog.typing.FilteringBoundLogger,
    max_members: int,
    handle_routes: HandleRoutes | None = None,
    max_routes: int = MIN_ROUTES_PER_BATCH,
) -> Router:
    """The peer ASGI app.

    Args:
        name: our member name (the ping answers only to it).
        handle_exchange: feeds a decoded request to the core, returns our reply.
        metrics: where bad bodies are counted.
        log: the agent's logger.
        max_members: most rows accepted in a request body.
        handle_routes: applies pushed route deltas (None: no routes endpoint).
        max_routes: most deltas accepted in one batch (at least
            :data:`MIN_ROUTES_PER_BATCH`).
    """
    batch_rows = max(max_routes, MIN_ROUTES_PER_BATCH)

    async def exchange(request: Request) -> Response:
        body = await request.body(MAX_PUSH_PULL_SIZE)
        try:
            push_pull = decode_push_pull(body, max_members=max_members)
        except DecodeError as exc:
            counter = metrics.exchange_errors.labels("server", exc.reason)
            raise refuse_body(request, exc, "exchange body", counter, log) from None
        reply = handle_exchange(push_pull)
        return Response(200, encode_push_pull(reply), content_type=MSGPACK)

    async def ping(request: Request) -> Response:
        if request.query_one("name") != name:
            raise HttpError(404, "no such member here")
        return json_response(200, {"name": name})

    async def routes(request: Request) -> Response:
        assert handle_routes is not None
        body = await request.body(MAX_ROUTES_BODY)
        try:
            sender, deltas = decode_routes(body, max_routes=batch_rows)
        except DecodeError as exc:
            # Refused whole: a permanent 4xx, so the sender does not retry it
            # and repairs us by anti-entropy instead.
            counter = metrics.route_batches_refused.labels(exc.reason)
            raise refuse_body(request, exc, "route batch", counter, log) from None
        counts = handle_routes(deltas, sender)
        log.debug("route batch applied", sender=sender, received=len(deltas))
        ack = encode_routes_ack(len(deltas), counts)
        return Response(200, ack, content_type=MSGPACK)

    def on_error(request: Request, exc: BaseException) -> None:
        log.error("peer request failed", path=request.path, exc_info=exc)

    def observe(method: str, pattern: str, status: int) -> None:
        # Refusals no handler counts itself (audit 15: unseen by operators);
        # a ping for another name is an answer, not a refusal.
        reason = PEER_REFUSALS.get(status)
        if reason is not None and not (status == 404 and pattern == PING_PATH):
            metrics.exchange_errors.labels("server", reason).inc()

    table = [Route("POST", EXCHANGE_PATH, exchange), Route("GET", PING_PATH, ping)]
    if handle_routes is not None:
        table.append(Route("POST", ROUTES_PATH, routes))
    return Router(
        table,
        on_error=on_error,
        observe=observe,
        # the CLI pointed at the mesh port got a bare 404 (audit, session 14)
        not_found_hint=" (this is a member's mesh port: the client API is on "
        "its --http address)",
    )


def _client(request: Request) -> str:
    return format_address(request.client) if request.client else "?"


def refuse_body(
    request: Request,
    exc: DecodeError,
    what: str,
    counter: Counter,
    log: structlog.typing.FilteringBoundLogger,
) -> HttpError:
    """A peer body that did not decode: counted (``counter``, the metric's
    child for the reason), logged at debug, and the 400 to raise."""
    counter.inc()
    log.debug(f"bad {what}", peer=_client(request), reason=exc.reason, error=str(exc))
    return HttpError(400, str(exc))


# --- client ---


@asynccontextmanager
async def open_peer_client(
    config: Config,
    *,
    metrics: Metrics,
    log: structlog.typing.FilteringBoundLogger,
    sealer: Sealer | None = None,
) -> AsyncIterator[PeerClient]:
    """A :class:`PeerClient` with one pooled ``httpx.AsyncClient``.

    The pool is bounded (``max_pending_probes`` connections) so a burst of
    exchanges cannot open sockets without limit; ``trust_env=False`` because a
    ``HTTP_PROXY`` meant for the operator's tools must not reroute peer traffic.
    The transport is the pushes' :class:`H11Transport` (a third of the CPU of
    httpx's default one per request): exchanges, anti-entropy rounds and TCP
    probes, of a hung member too, all run on the agent's one loop.
    """
    transport = H11Transport(
        max_connections=config.max_pending_probes,
        # below the servers' http_keepalive_timeout (Config checks it), so we
        # never pick a connection the server is closing at that moment
        keepalive_expiry=config.push_keepalive_expiry,
        ssl_context=client_ssl_context(config),
    )
    timeout = httpx.Timeout(config.tcp_timeout)
    async with (
        PeerHttpClient(
            transport=transport,
            timeout=timeout,
            trust_env=False,
            follow_redirects=False,
        ) as http,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(transport.sweep_forever)
        # Peers need none of httpx's default headers (user agent, accepted
        # types and encodings, keep-alive is HTTP/1.1's default): an idle
        # anti-entropy round is then ~200 bytes on the wire, headers included.
        for name in ("user-agent", "accept", "accept-encoding", "connection"):
            http.headers.pop(name, None)
        try:
            yield PeerClient(
                http,
                metrics=metrics,
                log=log,
                tcp_timeout=config.tcp_timeout,
                max_members=config.max_members,
                sealer=sealer,
                scheme=peer_scheme(config),
            )
        finally:
            nursery.cancel_scope.cancel()


#: what a peer's refusal means, for the log line of a failed join (audit 7:
#: "status_4xx" alone did not say the gossip keys differ)
_STATUS_MEANING = {
    400: "the peer could not decode the request: sealed while it has no "
    "gossip key, or another protocol version",
    401: "the peer refused our seal: it holds none of our gossip keys, or it "
    "has a key and we have none",
    413: "the request is over the peer's body limit",
    503: "the peer is busy (peer_http_concurrency)",
}


class PeerClient:
    """Runs exchanges and TCP probes; never raises for a peer's failure.

    With an enabled ``sealer`` every request body is sealed (bound to its method
    and path) and every answer must be sealed and bound to that request, or it
    counts as a failure: a process that is not a key holder cannot answer an
    exchange nor vouch for a member in a TCP probe.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        metrics: Metrics,
        log: structlog.typing.FilteringBoundLogger,
        tcp_timeout: float,
        max_members: int,
        sealer: Sealer | None = None,
        scheme: str = "http",
    ) -> None:
        self._http = http
        self._sealer = sealer
        #: https when the mesh port speaks TLS (tls_cert set)
        self._scheme = scheme
        self._metrics = metrics
        self._log = log
        self._tcp_timeout = tcp_timeout
        self._max_members = max_members

    async def exchange(
        self,
        target: Address | str,
        request: PushPull,
        *,
        errors: list[str] | None = None,
    ) -> list[PushPull]:
        """Exchange tables with ``target``: an address, or a seed ``HOST:PORT``
        whose host resolves to any number of A/AAAA records, all tried at once
        (a Kubernetes headless Service as the seed list).

        Args:
            errors: when given, why each address failed is appended to it
                (``"HOST:PORT: reason: ExceptionClass: message"``), for the
                join failure log: a TLS verification error shows there.

        Returns:
            The decoded replies of those that answered within ``tcp_timeout``.
        """
        replies: list[PushPull] = []
        body = encode_push_pull(request)
        with trio.move_on_after(self._tcp_timeout) as scope:
            addrs = await self._resolve(target, errors)
            async with trio.open_nursery() as nursery:
                for addr in addrs:
                    nursery.start_soon(self._exchange_one, addr, body, replies, errors)
        if scope.cancelled_caught and errors is not None and not replies:
            errors.append(f"no answer within tcp_timeout ({self._tcp_timeout:g} s)")
        return replies

    async def resolve(self, seed: str) -> list[Address]:
        """Every address a seed ``HOST:PORT`` resolves to now ([] if none)."""
        return await self._resolve(seed)

    async def _resolve(
        self, target: Address | str, errors: list[str] | None = None
    ) -> list[Address]:
        if not isinstance(target, str):
            return [target]
        try:
            host, port = parse_address(target)
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (ConfigError, OSError) as exc:
            self._metrics.exchange_errors.labels("client", "resolve").inc()
            self._log.debug("cannot resolve seed", seed=target, error=str(exc))
            if errors is not None:
                errors.append(f"{target}: cannot resolve: {exc}")
            return []
        addrs: dict[Address, None] = {}
        for *_, sockaddr in infos:
            addrs[(str(sockaddr[0]), int(sockaddr[1]))] = None
        return list(addrs)

    async def _exchange_one(
        self,
        addr: Address,
        body: bytes,
        replies: list[PushPull],
        errors: list[str] | None = None,
    ) -> None:
        data = await self.call(
            addr, EXCHANGE_PATH, body, limit=MAX_PUSH_PULL_SIZE, errors=errors
        )
        if data is None:
            return  # the failure is counted
        try:
            reply = decode_push_pull(data, max_members=self._max_members)
        except DecodeError as exc:
            self._failed(addr, exc.reason, exc, errors)
            return
        replies.append(reply)

    def _failed(
        self,
        addr: Address,
        reason: str,
        exc: Exception | None = None,
        errors: list[str] | None = None,
        detail: str | None = None,
    ) -> None:
        self._metrics.exchange_errors.labels("client", reason).inc()
        error = _describe(exc) if exc is not None else detail
        self._log.debug(
            "exchange failed", peer=format_address(addr), reason=reason, error=error
        )
        if errors is not None:
            text = f"{format_address(addr)}: {reason}"
            errors.append(f"{text}: {error}" if error else text)

    async def probe(self, addr: Address, name: str, deadline: float) -> TcpProbeResult:
        """TCP fallback ping of ``name`` at ``addr``, giving up at ``deadline``.

        200: ACK. A connect refused (RST: host up, nothing listening, so the
        process is gone): REFUSED. Anything else, timeout included: FAILED, which
        tells the core nothing.
        """
        result = TcpProbeResult.FAILED
        url = f"{self._scheme}://{format_address(addr)}{PING_PATH}"
        body, nonce = self.seal("GET", PING_PATH, b"")
        with trio.move_on_at(deadline):
            try:
                response = await self._http.request(
                    "GET", url, params={"name": name}, content=body or None
                )
            except httpx.ConnectError as exc:
                if _is_refused(exc):
                    result = TcpProbeResult.REFUSED
            except httpx.HTTPError:
                pass
            else:
                if response.status_code == 200 and self._answer_ok(response, nonce):
                    result = TcpProbeResult.ACK
        self._metrics.tcp_probes.labels(result.value).inc()
        return result

    async def keyring_op(self, addr: Address, op: str, key: bytes) -> str:
        """Ask the member at ``addr`` to apply a keyring operation: ``"ok"`` or
        why not (its error message, or how the request failed)."""
        url = f"{self._scheme}://{format_address(addr)}{KEYRING_PATH}"
        plain = msgpack.packb({"op": op, "key": key}, use_bin_type=True)
        body, nonce = self.seal("POST", KEYRING_PATH, plain)
        try:
            with trio.fail_after(self._tcp_timeout):
                response = await self._http.post(
                    url, content=body, headers={"content-type": MSGPACK}
                )
        except trio.TooSlowError:
            return "timeout"
        except httpx.HTTPError as exc:
            return f"unreachable: {_error_reason(exc)}"
        if response.status_code == 401:
            return "unauthorized: the member holds none of our keys"
        try:
            data = self.open(response.content, nonce)
        except DecodeError:
            return "unauthenticated answer"
        if response.status_code == 200:
            return "ok"
        try:
            message = str(json.loads(data)["error"])[:200]
        except (ValueError, TypeError, KeyError):
            message = data[:200].decode("utf-8", "replace")
        return f"error {response.status_code}: {message}"

    async def call(
        self,
        addr: Address,
        path: str,
        body: bytes,
        *,
        limit: int,
        errors: list[str] | None = None,
    ) -> bytes | None:
        """POST ``body`` to ``path`` at ``addr`` (sealed when we hold keys):
        the opened answer of a 200, else None (the failure counted by reason,
        as exchanges are). The caller bounds the time with a cancel scope."""
        url = f"{self._scheme}://{format_address(addr)}{path}"
        sealed, nonce = self.seal("POST", path, body)
        try:
            async with self._http.stream(
                "POST", url, content=sealed, headers={"content-type": MSGPACK}
            ) as response:
                if response.status_code != 200:
                    status = response.status_code
                    reason = f"status_{status // 100}xx"
                    detail = f"{status} {_STATUS_MEANING.get(status, '')}".strip()
                    self._failed(addr, reason, errors=errors, detail=detail)
                    return None
                data = await read_limited(response, limit)
            return self.open(data, nonce)
        except httpx.HTTPError as exc:
            self._failed(addr, _error_reason(exc), exc, errors)
        except BodyTooLargeError:
            self._failed(addr, "too_large", errors=errors)
        except DecodeError as exc:
            self._failed(addr, exc.reason, exc, errors)
        return None

    def seal(self, method: str, path: str, body: bytes) -> tuple[bytes, bytes]:
        """The request body to send, sealed when we hold keys, and its nonce."""
        if self._sealer is None:
            return body, b""
        return self._sealer.seal_request(method, path, body)

    def open(self, data: bytes, nonce: bytes) -> bytes:
        """A peer's answer opened (when we hold keys).

        Raises:
            AuthError: not sealed for this request by a key we hold.
        """
        if self._sealer is None:
            return data
        return self._sealer.open_response(data, nonce)

    def _answer_ok(self, response: httpx.Response, nonce: bytes) -> bool:
        try:
            self.open(response.content, nonce)
        except AuthError:
            return False
        return True


class BodyTooLargeError(Exception):
    """A peer's response body is over the limit (shell-internal control flow)."""


async def read_limited(response: httpx.Response, limit: int) -> bytes:
    """A streamed response's body, or :class:`BodyTooLargeError` past ``limit``:
    a peer's answer is a stranger's bytes too.

    Read off the response's stream, not through ``aiter_bytes`` (a decoder, a
    chunker and two more async generators per chunk, on every push). Peers are
    sent no ``accept-encoding``: an answer is not content-encoded, and an
    encoded one fails to decode, as garbage would.
    """
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    chunks: list[bytes] = []
    size = 0
    iterator = aiter(stream)
    async for chunk in iterator:
        size += len(chunk)
        if size > limit:
            if isinstance(iterator, AsyncGenerator):
                # httpx's wrapper is a generator: finalized now, not by GC
                await iterator.aclose()
            raise BodyTooLargeError
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _describe(exc: BaseException) -> str:
    """``Class: message`` of the innermost cause that says something (httpx
    wraps httpcore's error, which wraps the ``ssl.SSLCertVerificationError``
    or ``OSError`` that tells the operator what went wrong)."""
    causes = list(_chain(exc))
    tls = [c for c in causes if isinstance(c, ssl.SSLError)]
    best = tls[0] if tls else next((c for c in causes if str(c)), exc)
    text = str(best)
    return f"{type(best).__name__}: {text}" if text else type(best).__name__


def _error_reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "refused" if _is_refused(exc) else "connect"
    return "http"


def _is_refused(exc: BaseException) -> bool:
    """True when a connect error was caused by ECONNREFUSED.

    httpx wraps httpcore's error, which wraps trio's ``OSError("all attempts to
    connect ... failed")``, whose cause is an ExceptionGroup of the per-address
    errors; walk causes, contexts and group members.
    """
    return any(
        isinstance(e, ConnectionRefusedError)
        or (isinstance(e, OSError) and e.errno == errno.ECONNREFUSED)
        for e in _chain(exc)
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        if current.__cause__ is not None:
            stack.append(current.__cause__)
        if current.__context__ is not None:
            stack.append(current.__context__)

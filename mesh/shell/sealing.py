"""The shell side of gossip encryption: one :class:`Sealer` per agent.

It owns the agent's :class:`~mesh.security.Keyring` (shared by UDP, the peer
HTTP server and client, and the keyring API, so a rotation applies everywhere at
once) and the :class:`~mesh.security.ReplayGuard`, and reads the wall clock the
pure module refuses to read. Every refusal is counted in
``mesh_auth_failures_total{channel, reason}`` and logged at debug; nothing a
stranger sends gets past it into a decoder.

Without a key the sealer is *disabled*: datagrams and bodies pass through as
they are, and :meth:`Sealer.wrap_peer_app` still bounds the peer port (requests
at once, body size, time to send the body).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import structlog
import trio

from ..config import Config
from ..security import (
    AuthError,
    Envelope,
    Keyring,
    Kind,
    ReplayGuard,
    decode_key,
    overhead,
    parse_header,
)
from .asgi import ASGIApp, HttpError, Message, Receive, Scope, Send, read_body
from .metrics import Metrics

__all__ = ["PEER_BODY_LIMIT", "PEER_REFUSALS", "Sealer"]

#: largest peer request body read before authentication: the largest plaintext
#: body (16 MiB, a push-pull or a route batch) plus room for the envelope
PEER_BODY_LIMIT = 16 * 1024 * 1024 + 1024


#: peer-port statuses answered before (or instead of) a handler's own checks,
#: by this wrapper or the peer app, -> their reason in
#: ``mesh_exchange_errors_total{side="server"}``
PEER_REFUSALS = {
    404: "not_found",
    405: "bad_method",
    408: "body_timeout",
    413: "too_large",
}


class Sealer:
    """Seals what we send and opens what we receive, or passes it through.

    Args:
        name: our member name (the authenticated sender of what we seal).
        keyring: the keys; None disables sealing.
        replay: the replay window for datagrams and peer requests.
        metrics: where refusals are counted.
        log: the agent's logger.
        clock: wall-clock seconds (tests inject a fake one).
    """

    def __init__(
        self,
        *,
        name: str,
        keyring: Keyring | None,
        replay: ReplayGuard,
        metrics: Metrics,
        log: structlog.typing.FilteringBoundLogger,
        peer_concurrency: int = 64,
        read_timeout: float = 10.0,
        buffer_max: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.keyring = keyring
        self.replay = replay
        self._metrics = metrics
        self._log = log
        self._clock = clock
        self._limiter = trio.CapacityLimiter(peer_concurrency)
        self._read_timeout = read_timeout
        #: request body bytes held by the peer app right now, over all requests
        self._buffered = 0
        self._buffer_max = buffer_max

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        metrics: Metrics,
        log: structlog.typing.FilteringBoundLogger,
    ) -> Sealer:
        keyring = None
        if config.encrypt is not None:
            keyring = Keyring([decode_key(config.encrypt)], max_keys=config.keyring_max)
        return cls(
            name=config.name,
            keyring=keyring,
            replay=ReplayGuard(config.replay_window, config.replay_cache_max),
            metrics=metrics,
            log=log,
            peer_concurrency=config.peer_http_concurrency,
            read_timeout=config.tcp_timeout,
            buffer_max=config.peer_http_buffer_max,
        )

    @property
    def enabled(self) -> bool:
        return self.keyring is not None

    def overhead(self) -> int:
        """Bytes sealing adds to each of our datagrams (0 when disabled)."""
        return overhead(self.name) if self.enabled else 0

    def refused(self, channel: str, exc: AuthError, peer: object = None) -> None:
        """Count and log one refusal."""
        self._metrics.auth_failures.labels(channel, exc.reason).inc()
        self._log.debug(
            "refused unauthenticated input",
            channel=channel,
            reason=exc.reason,
            peer=peer,
            error=str(exc),
        )

    # --- datagrams ---

    def seal_datagram(self, data: bytes) -> bytes:
        if self.keyring is None:
            return data
        return self.keyring.seal(
            data, sender=self.name, kind=Kind.DATAGRAM, now=self._clock()
        )

    def open_datagram(self, data: bytes) -> Envelope:
        """Open and replay-check a datagram.

        Raises:
            AuthError: refused (the caller counts it with :meth:`refused`).
        """
        assert self.keyring is not None
        envelope = self.keyring.open(data, kind=Kind.DATAGRAM)
        self.replay.check(envelope.timestamp_ms, envelope.nonce, self._clock())
        return envelope

    # --- peer HTTP, client side ---

    def seal_request(self, method: str, path: str, body: bytes) -> tuple[bytes, bytes]:
        """The sealed body and its nonce (to open the response with); when
        disabled, the body as is and an empty nonce."""
        if self.keyring is None:
            return body, b""
        sealed = self.keyring.seal(
            body,
            sender=self.name,
            kind=Kind.REQUEST,
            now=self._clock(),
            bind=_request_bind(method, path),
        )
        return sealed, _nonce_of(sealed)

    def open_response(self, data: bytes, request_nonce: bytes) -> bytes:
        """The plaintext of a peer's answer to our request with ``request_nonce``.

        Raises:
            AuthError: not sealed, not by a key we hold, or not the answer to
                that request (counted here, channel ``peer_response``).
        """
        if self.keyring is None:
            return data
        try:
            envelope = self.keyring.open(data, kind=Kind.RESPONSE, bind=request_nonce)
        except AuthError as exc:
            self.refused("peer_response", exc)
            raise
        return envelope.payload

    # --- peer HTTP, server side ---

    def wrap_peer_app(self, app: ASGIApp) -> ASGIApp:
        """The peer ASGI app behind authentication and bounds.

        Every request (whatever the endpoint, so one registered later is covered
        too) is refused with 503 past ``peer_http_concurrency`` requests at once,
        408 if its body takes longer than ``tcp_timeout``, 413 past
        :data:`PEER_BODY_LIMIT`; with a key, a body that is not sealed by a key
        we hold for this method and path, or is replayed, is refused with 401
        before anything parses it, and the answer's body is sealed and bound to
        the request.
        """

        async def sealed_app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            token = _Token()
            try:
                self._limiter.acquire_on_behalf_of_nowait(token)
            except trio.WouldBlock:
                self._metrics.auth_failures.labels("peer_http", "busy").inc()
                await _send_error(send, 503, "too many peer requests at once")
                return
            try:
                await self._serve(app, scope, receive, send)
            finally:
                self._limiter.release_on_behalf_of(token)

        return sealed_app

    def _refused(self, status: int) -> None:
        # the peer app's own refusals count here too (peer_http.make_peer_app)
        self._metrics.exchange_errors.labels("server", PEER_REFUSALS[status]).inc()

    async def _serve(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send
    ) -> None:
        charged = [0]
        try:
            await self._serve_charged(app, scope, receive, send, charged)
        finally:
            self._buffered -= charged[0]

    async def _read(self, receive: Receive, charged: list[int]) -> bytes:
        """The body, each chunk charged to the shared buffer budget.

        Raises:
            HttpError: 413 past the body limit, 503 past the budget, 400 on a
                disconnect.
        """

        def charge(size: int) -> None:
            charged[0] += size
            self._buffered += size
            if self._buffered > self._buffer_max:
                self._metrics.auth_failures.labels("peer_http", "busy").inc()
                raise HttpError(503, "too many peer request bytes at once")

        return await read_body(receive, PEER_BODY_LIMIT, charge)

    async def _serve_charged(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        charged: list[int],
    ) -> None:
        declared = _content_length(scope)
        if declared is not None and declared > PEER_BODY_LIMIT:
            self._refused(413)
            await _send_error(
                send, 413, f"request body must be at most {PEER_BODY_LIMIT} bytes"
            )
            return
        body = b""
        with trio.move_on_after(self._read_timeout) as cancel:
            try:
                body = await self._read(receive, charged)
            except HttpError as exc:
                if exc.status == 413:
                    self._refused(413)
                await _send_error(send, exc.status, exc.message)
                return
        if cancel.cancelled_caught:
            self._refused(408)
            await _send_error(send, 408, "request body too slow")
            return
        nonce = b""
        if self.keyring is not None:
            method: str = scope["method"]
            path: str = scope["path"]
            try:
                envelope = self.keyring.open(
                    body, kind=Kind.REQUEST, bind=_request_bind(method, path)
                )
                self.replay.check(envelope.timestamp_ms, envelope.nonce, self._clock())
            except AuthError as exc:
                self.refused("peer_http", exc, peer=scope.get("client"))
                await _send_error(
                    send, 401, f"unauthenticated peer request: {exc}", close=False
                )
                return
            body, nonce = envelope.payload, envelope.nonce
        inner_scope = dict(scope)
        inner_scope["headers"] = [
            (k, v)
            for k, v in scope.get("headers", ())
            if k.lower() != b"content-length"
        ] + [(b"content-length", str(len(body)).encode())]
        delivered = False

        async def inner_receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if self.keyring is None:
            await app(inner_scope, inner_receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._send_sealed(send, start, b"".join(chunks), nonce)
            else:
                await send(message)

        await app(inner_scope, inner_receive, capture)

    async def _send_sealed(
        self, send: Send, start: Message | None, payload: bytes, request_nonce: bytes
    ) -> None:
        assert self.keyring is not None
        assert start is not None
        sealed = self.keyring.seal(
            payload,
            sender=self.name,
            kind=Kind.RESPONSE,
            now=self._clock(),
            bind=request_nonce,
        )
        headers = [
            (k, v)
            for k, v in start.get("headers", ())
            if k.lower() != b"content-length"
        ]
        headers.append((b"content-length", str(len(sealed)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": sealed})


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _Token:
    """A limiter borrower per request (trio needs a distinct object each)."""


def _request_bind(method: str, path: str) -> bytes:
    # A sealed body is good for one method and path: a captured push cannot be
    # redirected to another endpoint.
    return f"{method} {path}".encode()


def _nonce_of(sealed: bytes) -> bytes:
    return parse_header(sealed).nonce


async def _send_error(
    send: Send, status: int, message: str, *, close: bool = True
) -> None:
    """An error answer; ``close`` (the default) when the body was not read:
    a keep-alive connection would otherwise wait out ``http_io_timeout`` for
    the rest of a body it does not want (audit 10: a 408 held its connection
    30 s more)."""
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

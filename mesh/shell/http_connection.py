"""One connection of :mod:`mesh.shell.http_server`: read requests, run the
app inline, write responses.

Split from the server module, which owns what spans connections (the
listener, the ``max_connections`` slots and their eviction, shutdown); its
docstring has the whole design. Here is HTTP/1.1 on one socket: h11 for the
framing, direct reads and writes on the plain TCP socket when the kernel is
ready (``mesh/shell/net.py``: trio's cancel scope and scheduler trip per
operation cost more than h11's parsing), one yield per pipelined request so a
pipelining client cannot starve the others, and the ASGI messages our apps use.

Disconnects. Once the request body is read, ``receive`` blocks until the client
closes or breaks the connection, then returns ``http.disconnect`` (ASGI): a long
wait (a blocking query, the change stream) races it in a task of
its own and ends early. Only such waits pay for it; a plain request never calls
``receive`` again, so it costs no task and no syscall. A next request pipelined
meanwhile is not a disconnect: its bytes are kept, and watching stops.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import h11
import trio

from .asgi import Message
from .net import peek_now, receive_now, receive_when_ready, send_now

if TYPE_CHECKING:
    from .http_server import ServerLimits, _Server

__all__ = ["NEVER", "Connection", "close_stream"]

_log = logging.getLogger("mesh.http_server")

_RECEIVE_SIZE = 65536
NEVER = float("inf")
_ASGI = {"version": "3.0", "spec_version": "2.3"}
#: the versions we serve, as the ASGI scope spells them
_HTTP_VERSIONS = {b"1.0": "1.0", b"1.1": "1.1"}
_REASONS = {431: "request head too large", 505: "HTTP version not supported"}
#: the server's drop reason (a metric label) for each refused request head
_DROP_REASONS = {431: "head_too_large", 505: "bad_version"}

#: the status line's reason phrase (``HTTP/1.1 404 Not Found``): optional in
#: HTTP/1.1, but what people reading ``curl -i`` or a proxy's log expect
_PHRASES = {status.value: status.phrase.encode() for status in HTTPStatus}


class _ClientGoneError(OSError):
    """The client closed or broke the connection, or a write to it timed out.

    What ``send`` raises once the client is gone (ASGI: a server-specific
    ``OSError``); it ends the connection quietly."""


class Connection:
    """One client connection: read requests, run the app, write responses."""

    def __init__(
        self,
        server: _Server,
        stream: trio.abc.Stream,
        raw: socket.socket | None,
        client: tuple[str, int] | None,
        local: tuple[str, int] | None,
        *,
        accepted: float,
        sock: socket.socket | None,
        handshake: trio.SSLStream[trio.SocketStream] | None,
    ) -> None:
        self.server = server
        self.stream = stream
        #: trio time of the accept: the first request's head is due by
        #: accepted + header_timeout
        self.accepted = accepted
        #: the TCP socket, only to peek whether bytes wait (under TLS too)
        self.sock = sock
        #: the TLS stream while its handshake is still to do (the first wait
        #: for a request does it)
        self.handshake = handshake
        # The plain TCP socket under ``stream`` (None under TLS): a read or a
        # write the kernel can do at once goes to it directly, skipping the
        # cancel scope and scheduler round trip trio spends on each operation
        # (together most of the server's own cost per request).
        self.raw = raw
        self.client = client
        self.local = local
        self.h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=server.limits.max_header_bytes
        )
        #: the scope of the current wait for a request: shutdown and eviction
        #: cancel it
        self.cancel_scope = trio.CancelScope()
        #: closed to make room for a new connection
        self.evicted = False
        # per request
        self._response_started = False
        self._head_sent = False
        self._response_done = False
        self._no_body = False
        self._big_body = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body_done = False
        #: body bytes still to come, when the request declared its length
        self._body_left: int | None = None
        self._gone = False

    # --- reading ---

    def _try_receive(self) -> bytes | None:
        """The next chunk if the kernel has one now (b"" when the client is
        gone), else None; never waits."""
        if self.raw is None:
            return None
        try:
            return receive_now(self.raw, _RECEIVE_SIZE)
        except OSError:
            return b""

    async def _wait_receive(self) -> bytes:
        """Wait for the next chunk (b"" when the client is gone); the caller
        bounds the wait with a cancel scope."""
        raw = self.raw
        try:
            if raw is None:
                return bytes(await self.stream.receive_some(_RECEIVE_SIZE))
            return await receive_when_ready(raw, _RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return b""

    async def _receive_data(self, wait: float | None, deadline: float = NEVER) -> None:
        """Feed h11 the next chunk from the socket, within ``wait`` seconds
        (None: no bound of its own) and by ``deadline`` (trio time)."""
        data = self._try_receive()
        if data is None:
            if wait is not None:
                deadline = min(deadline, trio.current_time() + wait)
            with trio.move_on_at(deadline):
                data = await self._wait_receive()
            if data is None:  # the wait was cut short
                raise _ClientGoneError("timed out")
        else:
            # Yield all the same (as trio's own read would): a body streamed
            # faster than we read it must not starve the other connections.
            # Not on the common path: a small request arrives in one read.
            await trio.lowlevel.checkpoint()
        self.h11.receive_data(data)

    async def _next_event(self, wait: float) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._receive_data(wait)

    # --- writing ---

    async def _write(self, data: bytes) -> None:
        if self._gone:
            raise _ClientGoneError("gone")
        rest: bytes | memoryview = data
        if self.raw is not None:
            # Most responses fit the socket buffer: sent at once, no scope.
            try:
                sent = send_now(self.raw, data)
            except OSError:
                self._gone = True
                raise _ClientGoneError("broken") from None
            if sent == len(data):
                return
            if sent:
                rest = memoryview(data)[sent:]
        # Gone until the write completes: a write cut short (our timeout, or
        # the app's own cancel scope) leaves a partial message on the wire, so
        # the connection must not carry anything else.
        self._gone = True
        with trio.move_on_after(self.server.limits.io_timeout) as scope:
            try:
                await self.stream.send_all(rest)
                self._gone = False
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        raise _ClientGoneError("timed out" if scope.cancelled_caught else "broken")

    async def _send_error(self, status: int, reason: str) -> None:
        """A plain error answer outside the app (bad request, 431, 500), then
        the connection closes."""
        body = f'{{"error":"{reason}"}}'.encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            data = self.h11.send(
                h11.Response(
                    status_code=status,
                    headers=headers,
                    reason=_PHRASES.get(status, b""),
                )
            )
            data = (data or b"") + (self.h11.send(h11.Data(data=body)) or b"")
            data += self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            # h11 is in an error state (the request was malformed): write raw.
            head = f"HTTP/1.1 {status} Error\r\n".encode() + b"".join(
                k + b": " + v + b"\r\n" for k, v in headers
            )
            data = head + b"\r\n" + body
        await self._write(data)

    # --- the loop ---

    async def run(self) -> None:
        limits = self.server.limits
        first = True
        try:
            while True:
                if self.server.stopping:
                    return
                try:
                    head = await self._next_request(limits, first)
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint
                    reason = _REASONS.get(status, "bad request")
                    # counted: no app sees it, and a broken client or a
                    # header flood must show somewhere (audit 11)
                    self.server.dropped(_DROP_REASONS.get(status, "bad_request"))
                    await self._send_error(status, reason)
                    return
                if head is None:
                    return
                first = False
                try:
                    await self._handle(*head)
                finally:
                    self.server.reading.pop(self, None)
                if not await self._finish_cycle():
                    return
        except _ClientGoneError:
            return
        finally:
            await close_stream(self.stream)

    async def _next_request(
        self, limits: ServerLimits, first: bool
    ) -> tuple[h11.Request, list[tuple[bytes, bytes]]] | None:
        """The next request and its headers, or None when the client is
        done."""
        event = self.h11.next_event()
        if event is h11.NEED_DATA:
            data = await self._wait_for_request(limits, first)
            if not data:  # gone, silent or idle too long, evicted, shutdown
                return None
            self.h11.receive_data(data)
            # The whole head within header_timeout: of the accept for the
            # first request, of its first byte for a later one, however it
            # trickles in (a per-read bound lets a byte a second go on).
            deadline = (
                self.accepted if first else trio.current_time()
            ) + limits.header_timeout
            try:
                while (event := self.h11.next_event()) is h11.NEED_DATA:
                    await self._receive_data(None, deadline)
            except _ClientGoneError:
                if trio.current_time() >= deadline:
                    self.server.dropped("header_timeout")
                raise
        else:
            # Pipelined, already read: yield all the same, so a client that
            # keeps its socket full cannot starve the other connections (and
            # shutdown's cancellation gets through).
            await trio.lowlevel.checkpoint()
        if isinstance(event, h11.Request):
            # h11 bounds a head still incomplete; one that arrived whole in a
            # single read is checked here.
            headers = list(event.headers)
            size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in headers)
            if size > limits.max_header_bytes:
                raise h11.RemoteProtocolError(
                    "request head too large", error_status_hint=431
                )
            if event.http_version not in _HTTP_VERSIONS:
                raise h11.RemoteProtocolError(
                    "HTTP version not supported", error_status_hint=505
                )
            return event, headers
        # ConnectionClosed, or bytes after a "connection: close" request
        return None

    async def _wait_for_request(
        self, limits: ServerLimits, first: bool
    ) -> bytes | None:
        """The first bytes of the next request (b"" or None when the
        connection should end instead).

        The connection is idle meanwhile: registered with the server as
        evictable, in the scope that the deadline, shutdown and eviction cancel
        (each ends the connection, so one scope serves all three). A new
        connection's wait (its TLS handshake included) ends at ``accepted +
        header_timeout``; a keep-alive connection's after
        ``keep_alive_timeout``.
        """
        server = self.server
        if first:
            # A client sends its request as soon as it is connected: usually
            # there by now, so try a read first (not under TLS: handshake).
            data = self._try_receive()
            if data is not None:
                return data
            deadline = self.accepted + limits.header_timeout
            waiting = server.fresh
        else:
            # No read is tried first: a client that waits for each answer has
            # not sent its next request yet.
            deadline = trio.current_time() + limits.keep_alive_timeout
            waiting = server.idle
        scope = self.cancel_scope = trio.CancelScope(deadline=deadline)
        server.went_idle(self, waiting)
        data = None
        try:
            with scope:
                if self.handshake is not None:
                    try:
                        await self.handshake.do_handshake()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return None
                    self.handshake = None
                data = await self._wait_receive()
        finally:
            waiting.pop(self, None)
        if data is None and first and not (self.evicted or server.stopping):
            server.dropped("header_timeout")
        return data

    def has_input(self) -> bool:
        """True when bytes (or the end of the stream) are waiting to be read:
        the connection is about to be busy (or to close by itself)."""
        # (b"": closed or broken, it is ending by itself)
        return self.sock is not None and peek_now(self.sock) is not None

    async def _finish_cycle(self) -> bool:
        """After a response: drain what the app left unread, then True when
        the connection can take the next request."""
        conn = self.h11
        if self._gone or conn.our_state is not h11.DONE:
            return False
        drained = 0
        limits = self.server.limits
        while conn.their_state is h11.SEND_BODY:
            try:
                event = await self._next_event(limits.io_timeout)
            except h11.RemoteProtocolError:
                return False
            if isinstance(event, h11.Data):
                drained += len(event.data)
                if drained > limits.max_drain_bytes:
                    return False
            elif not isinstance(event, h11.EndOfMessage):
                return False
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            if self.server.stopping:
                return False
            conn.start_next_cycle()
            return True
        return False

    async def _handle(
        self, request: h11.Request, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self._response_started = False
        self._head_sent = False
        self._response_done = False
        self._body_done = False
        self._no_body = request.method == b"HEAD"
        # A large body the app will not read is not drained after the
        # response: the response must then say the connection closes, or a
        # keep-alive client sends its next request into a closing socket. A
        # request with neither header has no body at all (RFC 9112 6.3): a
        # GET must not cost its client a new connection.
        self._big_body = False
        self._body_left = None
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                self._body_left = int(value)
                self._big_body = self._body_left > self.server.limits.max_drain_bytes
            elif name == b"transfer-encoding":
                self._big_body = chunked = True  # the size is unknown unread
        if chunked:
            if self._body_left is not None:
                # Framed two ways: refused, and the connection closes (RFC
                # 9112 6.3: a server must close after such a request; the
                # ambiguity is how requests are smuggled past a proxy).
                self.server.dropped("bad_request")
                await self._send_error(400, "both content-length and transfer-encoding")
                raise _ClientGoneError("ambiguous framing")
            self._body_left = None
        target = request.target
        raw_path, _, query = target.partition(b"?")
        path = raw_path.decode("ascii", "replace")
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": _HTTP_VERSIONS[request.http_version],
            "method": request.method.decode("ascii", "replace"),
            "scheme": self.server.scheme,
            "path": unquote(path) if "%" in path else path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": self.client,
            "server": self.local,
        }
        try:
            await self.server.app(scope, self._receive, self._send)
        except Exception:
            if self._gone:
                # the app stopped because its client went away: not a bug
                raise _ClientGoneError("gone") from None
            _log.exception("ASGI app failed")
            if not self._response_started:
                await self._send_error(500, "internal error")
            raise _ClientGoneError("app failed") from None
        if not self._response_done:
            if not self._response_started:
                _log.error("ASGI app returned without a response")
                await self._send_error(500, "internal error")
            # A half-sent response cannot be completed: close.
            raise _ClientGoneError("incomplete response")

    async def _receive(self) -> Message:
        if self.evicted:
            self._gone = True  # closed for a new connection (slow body)
        if self._body_done or self._gone or self._response_done:
            # Nothing more to read. An app that keeps receiving after the body
            # waits for the client to go (ASGI): only long waits do, from a
            # task of their own, so only they pay for watching the socket.
            if not (self._gone or self._response_done):
                await self._until_gone()
            return {"type": "http.disconnect"}
        conn = self.h11
        if conn.they_are_waiting_for_100_continue:
            await self._write(
                conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            )
        server = self.server
        # when its body began to be read, oldest first (popped once read whole)
        server.reading.setdefault(self, trio.current_time())
        # The eviction of a slow body cancels this wait (see http_server).
        scope = self.cancel_scope = trio.CancelScope()
        try:
            with scope:
                event = await self._next_event(server.limits.io_timeout)
            if scope.cancelled_caught:
                self._gone = True
                return {"type": "http.disconnect"}
        except h11.RemoteProtocolError:
            # A malformed body (a bad chunk header): answer 400 before closing,
            # as for a malformed head, unless the app already began its answer.
            self.server.dropped("bad_body")
            if not self._response_started:
                self._response_started = True
                with contextlib.suppress(_ClientGoneError):
                    await self._send_error(400, "malformed request body")
            self._gone = True
            return {"type": "http.disconnect"}
        except _ClientGoneError:
            self._gone = True
            return {"type": "http.disconnect"}
        if isinstance(event, h11.Data):
            body = bytes(event.data)
            if self._body_left is not None:
                self._body_left -= len(body)
                if self._body_left == 0:
                    # A content-length body ends with its last byte: say so
                    # with the data, sparing the app a receive.
                    if isinstance(conn.next_event(), h11.EndOfMessage):
                        self._body_done = True
                        server.reading.pop(self, None)
                        return {
                            "type": "http.request",
                            "body": body,
                            "more_body": False,
                        }
                    self._gone = True  # h11 disagrees: end with this request
            return {"type": "http.request", "body": body, "more_body": True}
        if isinstance(event, h11.EndOfMessage):
            self._body_done = True
            server.reading.pop(self, None)
            return {"type": "http.request", "body": b"", "more_body": False}
        self._gone = True  # ConnectionClosed mid-body
        return {"type": "http.disconnect"}

    async def _until_gone(self) -> None:
        """Return once the client closed or broke the connection (the app is
        still running: its request is read, its response not finished).

        Readable is not gone: it may be the next, pipelined request. Those
        bytes are left for it (peeked on a plain socket; under TLS, where only
        decrypting tells, handed to h11's buffer), and then we stop watching:
        a disconnect behind a pipelined request is noticed by the next write,
        and a readable socket cannot keep us spinning.
        """
        buffered, closed = self.h11.trailing_data
        if closed:
            self._gone = True
            return
        if not buffered:
            raw = self.raw
            if raw is not None:
                while (peeked := peek_now(raw)) is None:
                    await trio.lowlevel.wait_readable(raw)
                if not peeked:
                    self._gone = True
                    return
            else:
                try:
                    data = await self.stream.receive_some(_RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    data = b""
                if not data:
                    self._gone = True
                    return
                self.h11.receive_data(bytes(data))
        await trio.sleep_forever()  # until the app, done waiting, cancels us

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        conn = self.h11
        if kind == "http.response.start":
            if self._response_started:
                raise RuntimeError("response already started")
            self._response_started = True
            self._status = int(message["status"])
            if self._status in (204, 304) or 100 <= self._status < 200:
                self._no_body = True
            self._headers = [
                (bytes(k), bytes(v)) for k, v in message.get("headers", ())
            ]
            if self.server.stopping or (
                conn.their_state is h11.SEND_BODY and self._big_body
            ):
                self._headers.append((b"connection", b"close"))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self._response_started or self._response_done:
            raise RuntimeError("response body outside a response")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        out = b""
        try:
            if not self._head_sent:
                self._head_sent = True
                head = h11.Response(
                    status_code=self._status,
                    headers=self._headers,
                    reason=_PHRASES.get(self._status, b""),
                )
                out = conn.send(head) or b""
            if body and not self._no_body:
                out += conn.send(h11.Data(data=body)) or b""
            if not more:
                out += conn.send(h11.EndOfMessage()) or b""
                self._response_done = True
        except h11.LocalProtocolError as exc:
            # e.g. a body longer than the content-length the app declared
            _log.error("ASGI app sent a bad response: %s", exc)
            self._gone = True
            raise _ClientGoneError("bad response") from None
        if out:
            await self._write(out)


async def close_stream(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(0.5) as scope:
        scope.shield = True
        with contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, OSError
        ):
            await stream.aclose()

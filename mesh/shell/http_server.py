"""A small HTTP/1.1 server for ASGI apps: h11 on trio, one task per connection.

Why not hypercorn: measured on the benchmark machine, hypercorn's trio worker
spent ~1.1 ms of CPU on a ``GET /v1/health`` (two socket writes per response,
several tasks and context switches per request), while the same app behind this
server costs ~0.3 ms; route writes are CPU-bound on a shared 2-core machine, so
the server was the largest single cost of a write (docs/architecture.md).

What it does, and nothing more:

* HTTP/1.1 (and 1.0) via h11, keep-alive with an idle timeout, pipelined
  requests answered in order; the app runs inline in the connection's task, one
  request at a time per connection (no task per request);
* limits: the request line plus headers (``max_header_bytes``: 431 past it), the
  time a client may take to send them (``header_timeout``, see below: a slow or
  silent client is dropped), the idle time between keep-alive requests
  (``keep_alive_timeout``), the wait for each body chunk and for each write to
  the client (``io_timeout``); body limits are the app's (it reads with a
  bound; a body the app left unread is drained up to ``max_drain_bytes`` or the
  connection is closed);
* at most ``max_connections`` connections at once, and idle ones make room for
  new ones (see below); past it, with none idle, new connections wait in the
  kernel's listen backlog instead of being accepted;
* graceful shutdown: when ``shutdown_trigger`` returns, stop accepting, close
  idle connections, let requests in progress finish (their responses carry
  ``connection: close``) for at most ``graceful_timeout``, then cancel the rest;
* an optional ``ssl.SSLContext``: each connection is wrapped in a
  ``trio.SSLStream`` (handshake within ``header_timeout``); ``scheme`` is then
  ``https``.

The ASGI surface is what our apps use (``asgi.py``): ``http`` scopes with
``raw_path`` and ``client``; ``http.request`` / ``http.disconnect`` from
``receive``; ``http.response.start`` / ``http.response.body`` to ``send``. A
response whose whole body comes in one ``send`` goes out in one socket write. No
lifespan protocol (our apps need none) and no websockets (404-free: the
connection is closed). ``HEAD``: the app answers as for ``GET``; the server
sends the head only (h11 frames it as GET's, no body).

Connection slots. Every connection holds one of ``max_connections`` slots
until it closes, so whatever holds a slot without working must be bounded, or
anyone who can reach the port fills them all with idle sockets and the port is
shut for new connections (peer pushes, anti-entropy rounds, joins, health
checks). Two bounds see to it:

* a new connection must send its first request's whole head (after the TLS
  handshake, if any) within ``header_timeout`` of being accepted: a socket that
  sends nothing is closed then, not after the keep-alive timeout. A later
  request's head must complete within ``header_timeout`` of its first byte (the
  wait before that byte is the keep-alive idle time);
* when all slots are taken and a client waits in the backlog, the connection
  idle longest is closed to admit it, as nginx reuses its keep-alive
  connections when out of ``worker_connections``. Idle means waiting for a
  request: connections that have not sent a byte yet go first, oldest first
  (a real client sends its request right after connecting: one silent since
  is most likely part of a flood, and closing it rarely costs anyone a
  request), then keep-alive connections between requests, longest idle first
  (a client may be about to reuse one: it sees the connection closed, which
  our peers' push client retries, see ``mesh/shell/pusher.py``). A
  connection whose next bytes have already arrived is not idle. A connection
  in the middle of a request or response (head partly read, the app running,
  the response being written) is never closed to make room: only when every
  slot is busy do new connections wait in the backlog, each busy one bounded
  by ``header_timeout``, ``io_timeout`` and the app's own limits (a client
  trickling heads in still holds a slot up to ``header_timeout``).

``on_drop`` (a callback of :func:`serve`) is told of each eviction
(``"evicted"``) and each connection closed for not sending its head in time
(``"header_timeout"``); the first eviction in a minute is also logged as a
warning.

The keep-alive timeout must exceed how long the clients keep an idle connection
pooled (ours: ``push_keepalive_expiry``, checked in ``mesh/config.py``): a client
reusing a connection at the moment the server closes it sees its request fail.

Disconnects. Once the request body is read, ``receive`` blocks until the client
closes or breaks the connection, then returns ``http.disconnect`` (ASGI): a long
wait (a blocking query, the change stream, ``sync=all``) races it in a task of
its own and ends early. Only such waits pay for it; a plain request never calls
``receive`` again, so it costs no task and no syscall. A next request pipelined
meanwhile is not a disconnect: its bytes are kept, and watching stops.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import attrs
import h11
import trio

from .asgi import ASGIApp, Message
from .net import own_socket, receive_now, receive_when_ready, send_now

__all__ = ["ServerLimits", "serve"]

_log = logging.getLogger("mesh.http_server")

_RECEIVE_SIZE = 65536
_NEVER = float("inf")
#: at most one "connection limit reached" warning this often, per server
_FULL_WARNING_INTERVAL = 60.0
_ASGI = {"version": "3.0", "spec_version": "2.3"}
#: the versions we serve, as the ASGI scope spells them
_HTTP_VERSIONS = {b"1.0": "1.0", b"1.1": "1.1"}
_REASONS = {431: "request head too large", 505: "HTTP version not supported"}


@attrs.frozen
class ServerLimits:
    """Bounds of one server; the defaults suit the client API."""

    #: close a keep-alive connection idle this long between requests; above
    #: the clients' own idle expiry (Config.http_keepalive_timeout)
    keep_alive_timeout: float = 75.0
    #: a new connection must send its first request's line and headers within
    #: this of its accept (TLS handshake included); a later request's, within
    #: this of its first byte
    header_timeout: float = 10.0
    #: the longest wait for one body chunk from, or one write to, the client
    io_timeout: float = 30.0
    #: request line plus headers, in bytes (431 past it)
    max_header_bytes: int = 16 * 1024
    #: connections served at once; past it the longest idle one is closed to
    #: admit a new one, and with none idle new ones wait in the listen backlog
    max_connections: int = 1000
    #: listen backlog
    backlog: int = 1024
    #: on shutdown, requests in progress get this long to finish
    graceful_timeout: float = 1.0
    #: body bytes the app left unread that are discarded to keep the connection
    max_drain_bytes: int = 64 * 1024


ShutdownTrigger = Callable[[], Awaitable[object]]


class _ClientGoneError(OSError):
    """The client closed or broke the connection, or a write to it timed out.

    What ``send`` raises once the client is gone (ASGI: a server-specific
    ``OSError``); it ends the connection quietly."""


class _Connection:
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

    async def _receive_data(self, wait: float | None, deadline: float = _NEVER) -> None:
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
            data = self.h11.send(h11.Response(status_code=status, headers=headers))
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
                    await self._send_error(status, reason)
                    return
                if head is None:
                    return
                first = False
                await self._handle(*head)
                if not await self._finish_cycle():
                    return
        except _ClientGoneError:
            return
        finally:
            await _close(self.stream)

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
        if self.sock is None:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True  # broken: it is ending by itself
        return True

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
        try:
            event = await self._next_event(self.server.limits.io_timeout)
        except (h11.RemoteProtocolError, _ClientGoneError):
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
                        return {
                            "type": "http.request",
                            "body": body,
                            "more_body": False,
                        }
                    self._gone = True  # h11 disagrees: end with this request
            return {"type": "http.request", "body": body, "more_body": True}
        if isinstance(event, h11.EndOfMessage):
            self._body_done = True
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
                while True:
                    await trio.lowlevel.wait_readable(raw)
                    try:
                        peeked = raw.recv(1, socket.MSG_PEEK)
                    except BlockingIOError:
                        continue  # spurious wakeup
                    except OSError:
                        peeked = b""
                    if not peeked:
                        self._gone = True
                        return
                    break
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
                head = h11.Response(status_code=self._status, headers=self._headers)
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


class _Server:
    def __init__(
        self,
        app: ASGIApp,
        limits: ServerLimits,
        ssl_context: ssl.SSLContext | None,
        on_drop: Callable[[str], object] | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context is not None else "http"
        self.on_drop = on_drop
        self.stopping = False
        #: connections holding a slot (the accept in progress included)
        self.open = 0
        # Idle connections, evictable, in the order they became idle (a dict
        # keeps insertion order; a connection is removed when it gets busy):
        #: new connections that have not sent a byte yet
        self.fresh: dict[_Connection, None] = {}
        #: keep-alive connections waiting for their next request
        self.idle: dict[_Connection, None] = {}
        #: set when a slot frees or a connection goes idle, while the accept
        #: loop waits for room
        self._room: trio.Event | None = None
        self._next_full_warning = -_NEVER

    def went_idle(self, conn: _Connection, waiting: dict[_Connection, None]) -> None:
        waiting[conn] = None
        if self._room is not None:
            self._room.set()

    def dropped(self, reason: str) -> None:
        if self.on_drop is not None:
            self.on_drop(reason)

    async def accept_loop(
        self, listener: trio.SocketListener, nursery: trio.Nursery
    ) -> None:
        while True:
            if self.open >= self.limits.max_connections:
                await self._make_room(listener.socket)
            # A slot first: taken while the accept waits for a client.
            self.open += 1
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and the like: back off, go on
                self._release()
                _log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            except BaseException:
                self._release()
                raise
            nursery.start_soon(self._connection, stream, trio.current_time())

    async def _make_room(self, listening: trio.socket.SocketType) -> None:
        """Return once a connection can be accepted within max_connections.

        Nothing is closed until a client waits in the listen backlog; then the
        idle connection chosen by :meth:`_evict_one` is closed, and its slot
        taken once its task has ended. With none idle, wait until one goes
        idle or closes.
        """
        await trio.lowlevel.wait_readable(listening)
        try:
            while self.open >= self.limits.max_connections:
                room = self._room = trio.Event()
                if self._evict_one():
                    self.dropped("evicted")
                    now = trio.current_time()
                    if now >= self._next_full_warning:
                        self._next_full_warning = now + _FULL_WARNING_INTERVAL
                        _log.warning(
                            "%d HTTP connections open on %s (http_max_connections):"
                            " closing the longest idle ones to admit new ones",
                            self.open,
                            _addr(listening.getsockname()),
                        )
                await room.wait()
        finally:
            self._room = None

    def _evict_one(self) -> bool:
        """Close the connection idle longest, silent new ones first (module
        docstring); False when every connection is busy."""
        for waiting in (self.fresh, self.idle):
            for conn in waiting:  # oldest first
                # Bytes already there: its task is about to read them (or
                # it is closing by itself). Closing it would lose a request.
                if not conn.has_input():
                    del waiting[conn]
                    conn.evicted = True
                    conn.cancel_scope.cancel()
                    return True
        return False

    def _release(self) -> None:
        self.open -= 1
        if self._room is not None:
            self._room.set()

    async def _connection(self, stream: trio.SocketStream, accepted: float) -> None:
        try:
            await self._serve_connection(stream, accepted)
        except Exception:  # a bug here must not stop the whole server
            _log.exception("HTTP connection failed")
            await _close(stream)
        finally:
            self._release()

    async def _serve_connection(
        self, stream: trio.SocketStream, accepted: float
    ) -> None:
        try:
            client = _addr(stream.socket.getpeername())
            local = _addr(stream.socket.getsockname())
            # The stdlib socket: direct reads and writes of _Connection (plain
            # TCP), and peeking for waiting bytes before an eviction (both).
            stream, sock = own_socket(stream)
        except OSError:
            await _close(stream)
            return
        served: trio.abc.Stream = stream
        raw: socket.socket | None = sock
        tls: trio.SSLStream[trio.SocketStream] | None = None
        if self.ssl_context is not None:
            # The handshake is done by the first wait for a request, under
            # its deadline (header_timeout from the accept), evictable.
            served = tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
            raw = None
        conn = _Connection(
            self,
            served,
            raw,
            client,
            local,
            accepted=accepted,
            sock=sock,
            handshake=tls,
        )
        await conn.run()

    def begin_shutdown(self) -> None:
        self.stopping = True
        for waiting in (self.fresh, self.idle):
            for conn in list(waiting):
                conn.cancel_scope.cancel()


def _addr(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


async def _close(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(0.5) as scope:
        scope.shield = True
        with contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, OSError
        ):
            await stream.aclose()


async def serve(
    app: ASGIApp,
    sock: socket.socket,
    *,
    shutdown_trigger: ShutdownTrigger,
    limits: ServerLimits = ServerLimits(),
    ssl_context: ssl.SSLContext | None = None,
    on_drop: Callable[[str], object] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the bound TCP socket ``sock`` until ``shutdown_trigger``
    returns, then shut down gracefully (see the module docstring).

    ``sock`` is put in listening state here; the caller keeps owning it (closing
    it after we return is harmless). ``task_status.started()`` is called once
    connections are accepted. ``on_drop``, if given, is called with
    ``"evicted"`` for each idle connection closed to make room for a new one
    and ``"header_timeout"`` for each connection closed for not sending a
    request's head in time (a metric's counter, say).
    """
    sock.listen(limits.backlog)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    server = _Server(app, limits, ssl_context, on_drop)
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as acceptor:
            acceptor.start_soon(server.accept_loop, listener, connections)
            task_status.started()
            await shutdown_trigger()
            acceptor.cancel_scope.cancel()
        await listener.aclose()
        server.begin_shutdown()
        connections.cancel_scope.deadline = trio.current_time() + (
            limits.graceful_timeout
        )

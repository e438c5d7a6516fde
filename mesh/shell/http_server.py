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
  time a client may take to send them (``header_timeout``: a slow client is
  dropped), the wait for each body chunk and for each write to the client
  (``io_timeout``); body limits are the app's (it reads with a bound; a body the
  app left unread is drained up to ``max_drain_bytes`` or the connection is
  closed);
* at most ``max_connections`` connections at once: past it, new connections wait
  in the kernel's listen backlog instead of being accepted;
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
_ASGI = {"version": "3.0", "spec_version": "2.3"}
#: the versions we serve, as the ASGI scope spells them
_HTTP_VERSIONS = {b"1.0": "1.0", b"1.1": "1.1"}
_REASONS = {431: "request head too large", 505: "HTTP version not supported"}


@attrs.frozen
class ServerLimits:
    """Bounds of one server; the defaults suit the client API."""

    #: close a keep-alive connection idle this long between requests
    keep_alive_timeout: float = 75.0
    #: a client must send a request's line and headers within this
    header_timeout: float = 10.0
    #: the longest wait for one body chunk from, or one write to, the client
    io_timeout: float = 30.0
    #: request line plus headers, in bytes (431 past it)
    max_header_bytes: int = 16 * 1024
    #: connections served at once; more wait in the listen backlog
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
    ) -> None:
        self.server = server
        self.stream = stream
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
        self.idle = True
        self.cancel_scope = trio.CancelScope()
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

    async def _receive_data(self, wait: float) -> None:
        """Feed h11 the next chunk from the socket, within ``wait`` seconds."""
        data = self._try_receive()
        if data is None:
            with trio.move_on_after(wait):
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
        try:
            while True:
                if self.server.stopping:
                    return
                self.idle = True
                # Idle until the request starts, then the head must complete
                # within header_timeout: measured from the first byte.
                try:
                    head = await self._next_request(limits)
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint
                    reason = _REASONS.get(status, "bad request")
                    await self._send_error(status, reason)
                    return
                if head is None:
                    return
                self.idle = False
                await self._handle(*head)
                if not await self._finish_cycle():
                    return
        except _ClientGoneError:
            return
        finally:
            await _close(self.stream)

    async def _next_request(
        self, limits: ServerLimits
    ) -> tuple[h11.Request, list[tuple[bytes, bytes]]] | None:
        """The next request and its headers, or None when the client is
        done."""
        event = self.h11.next_event()
        if event is h11.NEED_DATA:
            # Between requests: wait for the first byte under the idle timeout,
            # in the scope shutdown cancels (either ends the connection, so one
            # scope serves both). No read is tried first: a client that waits
            # for each answer has not sent its next request yet.
            self.cancel_scope = trio.CancelScope(
                deadline=trio.current_time() + limits.keep_alive_timeout
            )
            data: bytes | None = None
            with self.cancel_scope:
                data = await self._wait_receive()
            if data is None:  # idle too long, or shutting down
                return None
            self.h11.receive_data(data)
            # The whole head within header_timeout of its first byte, however
            # it trickles in (a per-read bound lets a byte a second go on).
            deadline = trio.current_time() + limits.header_timeout
            while (event := self.h11.next_event()) is h11.NEED_DATA:
                await self._receive_data(deadline - trio.current_time())
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
    ) -> None:
        self.app = app
        self.limits = limits
        self.ssl_context = ssl_context
        self.scheme = "https" if ssl_context is not None else "http"
        self.stopping = False
        self.connections: set[_Connection] = set()
        self.limiter = trio.CapacityLimiter(limits.max_connections)

    async def accept_loop(
        self, listener: trio.SocketListener, nursery: trio.Nursery
    ) -> None:
        while True:
            token = object()
            # A slot first: past max_connections, clients wait in the backlog.
            await self.limiter.acquire_on_behalf_of(token)
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and the like: back off, go on
                self.limiter.release_on_behalf_of(token)
                _log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            except BaseException:
                self.limiter.release_on_behalf_of(token)
                raise
            nursery.start_soon(self._connection, stream, token)

    async def _connection(self, stream: trio.SocketStream, token: object) -> None:
        try:
            await self._serve_connection(stream)
        except Exception:  # a bug here must not stop the whole server
            _log.exception("HTTP connection failed")
            await _close(stream)
        finally:
            self.limiter.release_on_behalf_of(token)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            client = _addr(stream.socket.getpeername())
            local = _addr(stream.socket.getsockname())
        except OSError:
            await _close(stream)
            return
        served: trio.abc.Stream = stream
        raw: socket.socket | None = None
        if self.ssl_context is None:
            # the direct reads and writes of _Connection
            try:
                served, raw = own_socket(stream)
            except OSError:
                return
        else:
            tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
            handshaken = False
            with trio.move_on_after(self.limits.header_timeout):
                try:
                    await tls.do_handshake()
                    handshaken = True
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if not handshaken:
                await _close(stream)
                return
            served = tls
        conn = _Connection(self, served, raw, client, local)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)

    def begin_shutdown(self) -> None:
        self.stopping = True
        for conn in list(self.connections):
            if conn.idle:
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
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the bound TCP socket ``sock`` until ``shutdown_trigger``
    returns, then shut down gracefully (see the module docstring).

    ``sock`` is put in listening state here; the caller keeps owning it (closing
    it after we return is harmless). ``task_status.started()`` is called once
    connections are accepted.
    """
    sock.listen(limits.backlog)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    server = _Server(app, limits, ssl_context)
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

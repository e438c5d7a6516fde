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
  connection whose next bytes have already arrived is not idle. With none
  idle, a request whose body is still arriving more than ``header_timeout``
  after it began is closed, the oldest body first: the app's body timeout
  bounds each such connection, but a client reopening them could otherwise
  hold every slot for good (slowloris with bodies; a real client sends its
  body right after its head). Any other connection in the middle of a request
  or response (head partly read, the app running, the response being
  written) is never closed to make room: only when every slot is busy do new
  connections wait in the backlog, each busy one bounded by
  ``header_timeout``, ``io_timeout`` and the app's own limits (a client
  trickling heads in still holds a slot up to ``header_timeout``).

``on_drop`` (a callback of :func:`serve`) is told of each eviction
(``"evicted"``, or ``"slow_body"``), each connection closed for not sending
its head in time (``"header_timeout"``), and each closed after refusing a
request no app saw (``"bad_request"``, ``"head_too_large"``,
``"bad_version"``, ``"bad_body"``); the first eviction in a minute is also
logged as a warning.

The keep-alive timeout must exceed how long the clients keep an idle connection
pooled (ours: ``push_keepalive_expiry``, checked in ``mesh/config.py``): a client
reusing a connection at the moment the server closes it sees its request fail.

The per-connection protocol (reading requests, running the app, writing
responses, noticing disconnects) is :mod:`mesh.shell.http_connection`.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .asgi import ASGIApp
from .http_connection import NEVER, Connection, close_stream
from .net import own_socket

__all__ = ["ServerLimits", "serve"]

_log = logging.getLogger("mesh.http_server")

#: at most one "connection limit reached" warning this often, per server
_FULL_WARNING_INTERVAL = 60.0


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
        self.fresh: dict[Connection, None] = {}
        #: keep-alive connections waiting for their next request
        self.idle: dict[Connection, None] = {}
        #: connections whose request body is being read -> when it began,
        #: oldest body first
        self.reading: dict[Connection, float] = {}
        #: set when a slot frees or a connection goes idle, while the accept
        #: loop waits for room
        self._room: trio.Event | None = None
        self._next_full_warning = -NEVER

    def went_idle(self, conn: Connection, waiting: dict[Connection, None]) -> None:
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
                reason = self._evict_one()
                if reason is not None:
                    self.dropped(reason)
                    now = trio.current_time()
                    if now >= self._next_full_warning:
                        self._next_full_warning = now + _FULL_WARNING_INTERVAL
                        _log.warning(
                            "%d HTTP connections open on %s (http_max_connections):"
                            " closing the longest idle ones, then the slowest"
                            " bodies, to admit new ones",
                            self.open,
                            _addr(listening.getsockname()),
                        )
                    await room.wait()  # the evicted one's slot frees
                    continue
                # (a body becomes slow with time alone: no event says so)
                with trio.move_on_at(self._next_slow_body()):
                    await room.wait()
        finally:
            self._room = None

    def _evict_one(self) -> str | None:
        """Close the connection idle longest, silent new ones first, else the
        one whose body has been arriving longest, once that is longer than
        ``header_timeout`` (module docstring); the drop reason, or None when
        every connection is busy."""
        for waiting in (self.fresh, self.idle):
            for conn in waiting:  # oldest first
                # Bytes already there: its task is about to read them (or
                # it is closing by itself). Closing it would lose a request.
                if not conn.has_input():
                    del waiting[conn]
                    conn.evicted = True
                    conn.cancel_scope.cancel()
                    return "evicted"
        for conn, since in self.reading.items():  # oldest body first
            if trio.current_time() < since + self.limits.header_timeout:
                break
            del self.reading[conn]
            conn.evicted = True
            conn.cancel_scope.cancel()
            return "slow_body"
        return None

    def _next_slow_body(self) -> float:
        """When the oldest body being read becomes evictable (inf: none)."""
        oldest = next(iter(self.reading.values()), None)
        return math.inf if oldest is None else oldest + self.limits.header_timeout

    def _release(self) -> None:
        self.open -= 1
        if self._room is not None:
            self._room.set()

    async def _connection(self, stream: trio.SocketStream, accepted: float) -> None:
        try:
            await self._serve_connection(stream, accepted)
        except Exception:  # a bug here must not stop the whole server
            _log.exception("HTTP connection failed")
            await close_stream(stream)
        finally:
            self._release()

    async def _serve_connection(
        self, stream: trio.SocketStream, accepted: float
    ) -> None:
        try:
            client = _addr(stream.socket.getpeername())
            local = _addr(stream.socket.getsockname())
            # The stdlib socket: direct reads and writes of Connection (plain
            # TCP), and peeking for waiting bytes before an eviction (both).
            stream, sock = own_socket(stream)
        except OSError:
            await close_stream(stream)
            return
        served: trio.abc.Stream = stream
        raw: socket.socket | None = sock
        tls: trio.SSLStream[trio.SocketStream] | None = None
        if self.ssl_context is not None:
            # The handshake is done by the first wait for a request, under
            # its deadline (header_timeout from the accept), evictable.
            served = tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
            raw = None
        conn = Connection(
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

"""A pooled HTTP/1.1 transport for ``httpx.AsyncClient``: h11 over trio streams.

Why: measured on the benchmark machine, a request through httpx's default
transport (httpcore + anyio) costs ~1.5 ms of client CPU; httpx itself (request
and response models) ~0.3 ms; h11 over a trio stream ~0.3 ms. Every route write
is pushed to every peer, so this transport is most of a write's CPU at a low
write rate (docs/architecture.md). The push client stays one shared
``httpx.AsyncClient`` (same API, exceptions and timeouts); only the transport
under it changes.

What it does:

* keep-alive connections pooled per origin, reused most recent first, closed
  after ``keepalive_expiry`` seconds idle, every origin's (swept on requests
  and by :meth:`H11Transport.sweep_forever`, which the owner runs: a peer that
  restarted on another address or died is never asked again, and its
  connections, closed by the peer, would otherwise hold their sockets in
  CLOSE-WAIT until the pool filled); at most ``max_connections`` open in
  total (an idle connection to another origin is closed to make room, else the
  request waits for one, under the pool timeout);
* the request head and body in one write; the response body streamed to the
  caller (who bounds it), the connection returned to the pool as soon as the
  body was read to its end, else closed when the caller closes the response;
* plain TCP connections read and written on the stdlib socket directly, as the
  server does (mesh/shell/http_server.py): a write that fits the socket buffer
  and a read the kernel already holds go through no cancel scope and no trip
  through trio's scheduler; only a real wait is bounded by the timeout, with
  ``trio.lowlevel.wait_readable``. Every route push pays this path per peer
  on the writer's loop, so its CPU adds up in a ``?sync=all`` write's latency;
* httpx's timeouts per phase (connect, write, read, pool) and httpx's exception
  types (``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``...), so
  callers map failures as they would with the default transport;
* ``https`` URLs over ``trio.SSLStream`` when given an ``ssl.SSLContext``.

Not supported (we never send them): HTTP proxies, HTTP/2, ``Expect:
100-continue``, request bodies streamed from async iterators (read first).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpx
import trio

from .net import own_socket, receive_now, receive_when_ready, send_now

__all__ = ["H11Transport", "PeerHttpClient"]

_RECEIVE_SIZE = 65536
_NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)

Origin = tuple[str, str, int]


class _Conn:
    __slots__ = ("closed", "h11", "idle_since", "origin", "raw", "stream")

    def __init__(
        self, origin: Origin, stream: trio.abc.Stream, raw: socket.socket | None
    ) -> None:
        self.origin = origin
        self.stream = stream
        #: the stdlib socket under ``stream`` (plain TCP only), for direct I/O
        self.raw = raw
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self.closed = False


def _timeout(request: httpx.Request, phase: str) -> float:
    value = request.extensions.get("timeout", {}).get(phase)
    return float("inf") if value is None else float(value)


class _Body(httpx.AsyncByteStream):
    """A response body read from the connection as the caller iterates."""

    def __init__(
        self, transport: H11Transport, conn: _Conn, request: httpx.Request
    ) -> None:
        self._transport = transport
        self._conn = conn
        self._request = request
        self._done = False
        self._pooled = False
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        # A plain iterator, not an async generator: a caller that stops
        # early (a body limit) leaves nothing to finalize but aclose().
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        while not self._done:
            event = await self._transport._next_event(conn, self._request)
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                self._done = True
                # Reusable at once: the caller's close has nothing left to do.
                self._pooled = self._transport._pool(conn)
                break
            await self._transport._discard(conn)
            raise httpx.RemoteProtocolError(
                "connection closed mid-response", request=self._request
            )
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._pooled:
            await self._transport._discard(self._conn)


class H11Transport(httpx.AsyncBaseTransport):
    """See the module docstring."""

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._slots = trio.Semaphore(max_connections)
        #: origin -> idle connections, most recently used last (no empty lists)
        self._idle: dict[Origin, list[_Conn]] = {}
        self._closed = False
        self._next_sweep = 0.0

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or busy."""
        return self._max - self._slots.value

    @property
    def idle_connections(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("transport closed")
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"unsupported scheme {scheme!r}", request=request
            )
        port = url.port or (443 if scheme == "https" else 80)
        origin: Origin = (scheme, url.host, port)
        body = await request.aread()
        conn = await self._get(origin, request)
        try:
            h = conn.h11
            head = h11.Request(
                method=request.method,
                target=url.raw_path,
                headers=request.headers.raw,
            )
            data = h.send(head) or b""
            if body:
                data += h.send(h11.Data(data=body)) or b""
            data += h.send(h11.EndOfMessage()) or b""
            await self._send_all(conn, data, request)
            # Yield between the request and its answer: a fan-out (a write
            # pushed to every peer) then gets every request on the wire before
            # any answer is read, and the peers work in parallel. Without it a
            # task whose answer is already there (the peer ran on our core
            # while we sent) never yields, and the pushes go out one by one.
            await trio.lowlevel.checkpoint()
            while True:
                event = await self._next_event(conn, request)
                if isinstance(event, h11.Response):
                    break
                if not isinstance(event, h11.InformationalResponse):
                    raise httpx.RemoteProtocolError(
                        "connection closed before the response", request=request
                    )
        except BaseException:
            await self._discard(conn)
            raise
        return httpx.Response(
            status_code=event.status_code,
            headers=list(event.headers),
            stream=_Body(self, conn, request),
            extensions={"http_version": b"HTTP/" + event.http_version},
        )

    async def aclose(self) -> None:
        self._closed = True
        idle = [c for conns in self._idle.values() for c in conns]
        self._idle.clear()
        for conn in idle:
            await self._discard(conn)

    # --- connections ---

    async def _get(self, origin: Origin, request: httpx.Request) -> _Conn:
        now = trio.current_time()
        if now >= self._next_sweep:
            await self._sweep(now)
        conns = self._idle.get(origin)
        while conns:
            conn = conns.pop()
            if not conns:
                del self._idle[origin]
            if now - conn.idle_since < self._expiry:
                return conn
            await self._discard(conn)  # expired (older ones too, next time)
            conns = self._idle.get(origin)
        if self._slots.value == 0:
            await self._evict_one()
        with trio.move_on_after(_timeout(request, "pool")) as scope:
            await self._slots.acquire()
        if scope.cancelled_caught:
            raise httpx.PoolTimeout("no connection slot", request=request)
        try:
            stream = await self._connect(origin, request)
        except BaseException:
            self._slots.release()
            raise
        raw: socket.socket | None = None
        if isinstance(stream, trio.SocketStream):
            try:
                stream, raw = own_socket(stream)  # for direct I/O
            except OSError as exc:
                self._slots.release()
                raise httpx.ConnectError(str(exc), request=request) from exc
        return _Conn(origin, stream, raw)

    async def _connect(self, origin: Origin, request: httpx.Request) -> trio.abc.Stream:
        scheme, host, port = origin
        if scheme == "https" and self._ssl is None:
            raise httpx.ConnectError("https needs an ssl_context", request=request)
        tcp: trio.SocketStream | None = None
        with trio.move_on_after(_timeout(request, "connect")):
            try:
                tcp = await trio.open_tcp_stream(host, port)
                if self._ssl is None or scheme != "https":
                    return tcp
                tls = trio.SSLStream(tcp, self._ssl, server_hostname=host)
                await tls.do_handshake()
                return tls
            except _NETWORK_ERRORS as exc:
                if tcp is not None:
                    await _close(tcp)
                raise httpx.ConnectError(str(exc), request=request) from exc
        if tcp is not None:  # timed out during the TLS handshake
            await _close(tcp)
        raise httpx.ConnectTimeout("connect timed out", request=request)

    async def _send_all(self, conn: _Conn, data: bytes, request: httpx.Request) -> None:
        raw = conn.raw
        if raw is not None:
            try:
                sent = send_now(raw, data)
            except OSError as exc:
                raise httpx.WriteError(str(exc), request=request) from exc
            if sent == len(data):
                return
            data = data[sent:]
        with trio.move_on_after(_timeout(request, "write")) as scope:
            try:
                await conn.stream.send_all(data)
            except _NETWORK_ERRORS as exc:
                raise httpx.WriteError(str(exc), request=request) from exc
        if scope.cancelled_caught:
            raise httpx.WriteTimeout("write timed out", request=request)

    async def _receive(self, conn: _Conn, request: httpx.Request) -> bytes:
        """The next chunk from the server (b"" at EOF), within the read
        timeout; what the kernel already holds is taken without a wait."""
        raw = conn.raw
        if raw is not None:
            try:
                data = receive_now(raw, _RECEIVE_SIZE)
            except OSError as exc:
                raise httpx.ReadError(str(exc), request=request) from exc
            if data is not None:
                return data
        with trio.move_on_after(_timeout(request, "read")):  # else ReadTimeout
            try:
                if raw is None:
                    return bytes(await conn.stream.receive_some(_RECEIVE_SIZE))
                return await receive_when_ready(raw, _RECEIVE_SIZE)
            except _NETWORK_ERRORS as exc:
                raise httpx.ReadError(str(exc), request=request) from exc
        raise httpx.ReadTimeout("read timed out", request=request)

    async def _next_event(self, conn: _Conn, request: httpx.Request) -> Any:
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc), request=request) from exc
            if event is not h11.NEED_DATA:
                return event
            data = await self._receive(conn, request)
            if not data and conn.h11.their_state is h11.SEND_RESPONSE:
                # A pooled connection the server closed: what a stale
                # keep-alive connection looks like.
                raise httpx.RemoteProtocolError(
                    "server closed the connection", request=request
                )
            conn.h11.receive_data(data)

    def _pool(self, conn: _Conn) -> bool:
        """Put ``conn`` back among the idle connections if it can carry another
        request (synchronous: nothing to await when it can)."""
        h = conn.h11
        if self._closed or h.our_state is not h11.DONE or h.their_state is not h11.DONE:
            return False
        h.start_next_cycle()
        conn.idle_since = trio.current_time()
        self._idle.setdefault(conn.origin, []).append(conn)
        return True

    async def _sweep(self, now: float) -> None:
        """Close every connection idle for ``keepalive_expiry``, whatever its
        origin; at most twice per expiry, so a request pays for a pass over
        the pool rarely."""
        self._next_sweep = now + self._expiry / 2
        expired: list[_Conn] = []
        for origin, conns in list(self._idle.items()):
            fresh = [c for c in conns if now - c.idle_since < self._expiry]
            if len(fresh) < len(conns):
                expired += [c for c in conns if now - c.idle_since >= self._expiry]
                if fresh:
                    self._idle[origin] = fresh
                else:
                    del self._idle[origin]
        for conn in expired:  # the pool is consistent before the first await
            await self._discard(conn)

    async def sweep_forever(self) -> None:
        """Sweep expired idle connections every half ``keepalive_expiry``,
        requests or not (a quiet pusher makes none); run it in the owner's
        nursery for as long as the transport is open."""
        while not self._closed:
            await trio.sleep(self._expiry / 2)
            now = trio.current_time()
            if now >= self._next_sweep:
                await self._sweep(now)

    async def _evict_one(self) -> None:
        """Close the longest-idle connection, to make room for another origin."""
        oldest: _Conn | None = None
        for conns in self._idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is not None:
            conns = self._idle[oldest.origin]
            conns.remove(oldest)
            if not conns:
                del self._idle[oldest.origin]
            await self._discard(oldest)

    async def _discard(self, conn: _Conn) -> None:
        """Close ``conn`` and free its slot (once)."""
        if conn.closed:
            return
        conn.closed = True
        self._slots.release()
        await _close(conn.stream)


async def _close(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(0.5) as scope:
        scope.shield = True
        with contextlib.suppress(*_NETWORK_ERRORS):
            await stream.aclose()


class _NoCookies(httpx.Cookies):
    """A cookie jar that takes none. Peers set no cookies, and httpx reads
    every response for them: an urllib request re-parsing the URL and an email
    message of the headers, a fifth of the writer's client CPU per push."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return


class PeerHttpClient(httpx.AsyncClient):
    """The client between members (pushes, exchanges, probes, anti-entropy):
    a plain ``httpx.AsyncClient`` (same API, pool, timeouts, exceptions) whose
    cookies are a :class:`_NoCookies`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        """Ignored: there is nothing to keep."""

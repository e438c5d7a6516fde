"""UDP side of the mesh port: datagrams in, decoded messages to the core; Send
effects out (the shape of hypercorn's trio/udp_server.py).

Receiving is a plain ``recvfrom`` loop. Sending is synchronous on a non-blocking
socket: the agent executes a core call's effects in one go without yielding, so
a full kernel buffer drops the datagram (counted) instead of stalling the loop.
SWIM tolerates loss by design; a stalled event loop would instead delay every
probe and ack and get *us* suspected.

Receiving drains the socket in batches of at most ``udp_recv_batch`` datagrams
with plain non-blocking ``recvfrom`` calls (a trio ``recvfrom`` per datagram
costs several times more), then yields: a flood from one source is read as fast
as we can, so the kernel buffer keeps room for everyone else's packets, yet the
timer loop still runs between batches and probes go out on time. A source
whose datagrams keep being refused runs out of budget
(:class:`~mesh.security.SourceThrottle`) and is then dropped unread, counted as
``throttled``: its flood costs us a dict lookup per datagram.

With a key (:class:`~mesh.shell.sealing.Sealer` enabled) every datagram is
opened and replay-checked before the codec sees a byte, and every datagram we
send is sealed.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Sequence

import structlog
import trio

from ..codec import decode_packet, encode_packet
from ..errors import DecodeError, LocalProtocolError
from ..messages import Address, Message
from ..security import AuthError, SourceThrottle
from .metrics import Metrics
from .net import format_address, is_ip_literal
from .sealing import Sealer

__all__ = ["UdpEndpoint"]

#: largest datagram we read; anything bigger is truncated by the kernel and then
#: refused by the codec
_RECV_SIZE = 65535

OnDatagram = Callable[[Address, list[Message]], None]


class UdpEndpoint:
    """A bound UDP socket used both ways.

    Args:
        sock: a bound stdlib UDP socket (made non-blocking here).
        metrics: where drops are counted.
        log: the agent's bound logger.
        max_messages: most messages accepted in one datagram.
        sealer: seals and opens datagrams (None or disabled: plaintext).
        recv_batch: most datagrams read before yielding to other tasks.
        recv_buffer: SO_RCVBUF to ask for (None: the system default).
        throttle: per-source budget of refused datagrams (None: unlimited).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        metrics: Metrics,
        log: structlog.typing.FilteringBoundLogger,
        max_messages: int,
        sealer: Sealer | None = None,
        recv_batch: int = 64,
        recv_buffer: int | None = None,
        throttle: SourceThrottle | None = None,
    ) -> None:
        sock.setblocking(False)
        if recv_buffer is not None:
            with contextlib.suppress(OSError):  # a smaller buffer still works
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        self._sealer = sealer if sealer is not None and sealer.enabled else None
        self._recv_batch = recv_batch
        self._throttle = throttle
        self._throttled = metrics.dropped_packets.labels("throttled")
        self._sock = sock
        self._trio_sock = trio.socket.from_stdlib_socket(sock)
        self._metrics = metrics
        self._log = log
        self._max_messages = max_messages

    @property
    def address(self) -> Address:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def close(self) -> None:
        self._trio_sock.close()

    async def serve(self, on_datagram: OnDatagram) -> None:
        """Receive forever, handing each decoded datagram to ``on_datagram``.

        Bad datagrams are counted by reason and logged at debug, never raised:
        remote input must not end the loop.
        """
        throttle = self._throttle
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            now = trio.current_time()
            for _ in range(self._recv_batch):
                try:
                    data, src = self._sock.recvfrom(_RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError as exc:
                    # Linux reports an earlier ICMP error on the next recv.
                    self._metrics.drop("recv_error")
                    self._log.debug("udp recv error", error=str(exc))
                    continue
                addr: Address = (src[0], src[1])
                if throttle is not None and throttle.blocked(addr, now):
                    self._throttled.inc()
                    continue
                refused = not self._receive_one(data, addr, on_datagram)
                if refused and throttle is not None:
                    throttle.refused(addr, now)

    def _receive_one(self, data: bytes, addr: Address, on_datagram: OnDatagram) -> bool:
        """Handle one datagram; False when it was refused."""
        if self._sealer is not None:
            try:
                data = self._sealer.open_datagram(data).payload
            except AuthError as exc:
                self._sealer.refused("udp", exc, peer=format_address(addr))
                return False
        try:
            messages, skipped = decode_packet(data, max_messages=self._max_messages)
        except DecodeError as exc:
            self._metrics.drop(exc.reason)
            self._log.debug(
                "dropped datagram",
                peer=format_address(addr),
                reason=exc.reason,
                error=str(exc),
                size=len(data),
            )
            return False
        if skipped:
            self._metrics.drop("unknown_type", skipped)
        if messages:
            self._log.debug("datagram", peer=addr, messages=len(messages))
            on_datagram(addr, messages)
        return True

    def send(self, addr: Address, messages: Sequence[Message]) -> None:
        """Send one datagram now or drop it; never blocks, never raises OSError."""
        host, port = addr
        if not is_ip_literal(host):
            # A peer advertised a name: sendto would resolve it synchronously
            # and block the event loop, so refuse it.
            self._metrics.drop("send_bad_address")
            return
        try:
            data = encode_packet(messages)
        except LocalProtocolError as exc:
            # A bug in the core's packing; losing one datagram is survivable.
            self._metrics.drop("send_encode_error")
            self._log.error("cannot encode datagram", error=str(exc))
            return
        if self._sealer is not None:
            data = self._sealer.seal_datagram(data)
        try:
            self._sock.sendto(data, (host, port))
        except BlockingIOError:
            self._metrics.drop("send_buffer_full")
        except OSError as exc:
            reason = _SEND_ERRORS.get(exc.errno or 0, "send_error")
            self._metrics.drop(reason)
            self._log.debug("udp send error", peer=format_address(addr), error=str(exc))


_SEND_ERRORS = {
    errno.ECONNREFUSED: "send_refused",
    errno.EAGAIN: "send_buffer_full",
    errno.ENETUNREACH: "send_unreachable",
    errno.EHOSTUNREACH: "send_unreachable",
    errno.EAFNOSUPPORT: "send_bad_address",
    errno.EINVAL: "send_bad_address",
}

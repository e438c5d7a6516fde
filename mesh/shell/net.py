"""Sockets and addresses: binding the mesh port (TCP and UDP on one number),
choosing the advertised address, formatting ``HOST:PORT``.

Why bind ourselves instead of letting the HTTP server do it: the mesh port is
one number for two protocols, and with port 0 only the kernel knows it until
TCP is bound; we then bind UDP to the same number, and hand the bound TCP
socket to :mod:`mesh.shell.http_server`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

import trio

from ..messages import Address, format_address, is_ip_literal

__all__ = [
    "advertise_address",
    "bind_mesh_sockets",
    "bind_tcp",
    "format_address",
    "is_loopback_fallback",
    "is_ip_literal",
    "own_socket",
    "peek_now",
    "receive_now",
    "receive_when_ready",
    "resolve_bind",
    "send_now",
]

_ANY_HOSTS = frozenset(("0.0.0.0", "::", ""))


async def resolve_bind(host: str, port: int) -> tuple[socket.AddressFamily, Address]:
    """The family and literal address to bind ``host`` to (first record)."""
    if host == "":
        host = "0.0.0.0"
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve bind address {host!r}")
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def bind_tcp(family: socket.AddressFamily, addr: Address) -> socket.socket:
    """A bound (not yet listening) TCP socket; SO_REUSEADDR so a restart does not
    wait out TIME_WAIT."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_mesh_sockets(
    family: socket.AddressFamily, addr: Address, *, attempts: int = 8
) -> tuple[socket.socket, socket.socket]:
    """Bind TCP then UDP on the same port number.

    With port 0 the kernel picks the TCP port, which may be taken for UDP by
    someone else: then both are closed and we try again with a fresh port, up to
    ``attempts`` times. A fixed port is tried once.

    Raises:
        OSError: the port (or every picked port) is in use.
    """
    host, port = addr
    tries = attempts if port == 0 else 1
    for attempt in range(tries):
        tcp = bind_tcp(family, addr)
        bound_port = tcp.getsockname()[1]
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            udp.bind((host, bound_port))
        except OSError as exc:
            udp.close()
            tcp.close()
            if exc.errno != errno.EADDRINUSE or attempt == tries - 1:
                raise
            continue
        return tcp, udp
    raise AssertionError("unreachable")  # pragma: no cover


def advertise_address(
    configured: Address | None, bound: Address, *, family: socket.AddressFamily
) -> Address:
    """The mesh address peers should use.

    ``configured`` wins (NAT, containers); else the bound address; else, when
    bound to the wildcard, the first non-loopback address of this host (see
    :func:`_first_non_loopback`), falling back to loopback (a single-machine
    mesh still works; the runner warns, for peers elsewhere cannot use it).
    """
    if configured is not None:
        host, port = configured
        return host, port or bound[1]
    host, port = bound
    if host not in _ANY_HOSTS:
        return host, port
    return _first_non_loopback(family), port


def is_loopback_fallback(bound: Address, advertised: Address) -> bool:
    """Bound to every address, yet advertising loopback: no other address was
    found, and members on other hosts cannot reach us (worth a warning)."""
    host = advertised[0].split("%")[0]
    return bound[0] in _ANY_HOSTS and ipaddress.ip_address(host).is_loopback


def _first_non_loopback(family: socket.AddressFamily) -> str:
    loopback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    candidates: list[str] = []
    try:
        # Containers and most hosts resolve their own name to the primary address.
        infos = socket.getaddrinfo(
            socket.gethostname(), None, family, socket.SOCK_DGRAM
        )
        candidates.extend(str(info[4][0]) for info in infos)
    except OSError:
        pass
    # The source address the kernel would pick for an outside route; connect()
    # on UDP sends nothing.
    probe_target = "2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1"
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((probe_target, 9))
            candidates.append(str(probe.getsockname()[0]))
    except OSError:
        pass
    # Neither: a host without a default route (a private network). Audit 7
    # found such a member advertising 127.0.0.1 to every peer.
    candidates.extend(_interface_addresses(family))
    for candidate in candidates:
        ip = ipaddress.ip_address(candidate.split("%")[0])
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
            return candidate
    return loopback


#: ioctl that reads an interface's IPv4 address (linux/sockios.h)
_SIOCGIFADDR = 0x8915


def _interface_addresses(family: socket.AddressFamily) -> list[str]:
    """This host's interface addresses in interface order (Linux: an ioctl per
    interface for IPv4, /proc/net/if_inet6 for IPv6); empty where neither
    exists. The standard library has no portable call for it."""
    out: list[str] = []
    if family == socket.AF_INET6:
        try:
            with open("/proc/net/if_inet6") as table:
                rows = [line.split() for line in table]
        except OSError:
            return out
        for row in sorted(rows, key=lambda r: int(r[1], 16) if len(r) > 1 else 0):
            if len(row) >= 6 and len(row[0]) == 32:
                groups = [row[0][i : i + 4] for i in range(0, 32, 4)]
                out.append(str(ipaddress.IPv6Address(":".join(groups))))
        return out
    try:
        import fcntl
    except ImportError:  # not Linux
        return out
    try:
        interfaces = socket.if_nameindex()
    except OSError:
        return out
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in interfaces:
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on it
                continue
            out.append(socket.inet_ntoa(answer[20:24]))
    return out


# --- direct I/O on a stream's socket (the HTTP server and client) ---
#
# A read or write the kernel can do at once costs less through the stdlib
# socket than through trio's, which wraps each in a cancel scope and a trip
# through the scheduler: together more than h11's parsing per request. Only a
# real wait goes through trio.


def own_socket(stream: trio.SocketStream) -> tuple[trio.SocketStream, socket.socket]:
    """A stream over the same connection and the stdlib socket under it (trio's
    socket does not expose it); closing the stream still closes the socket.

    Raises:
        OSError: the descriptor could not be wrapped (it is closed).
    """
    fd = stream.socket.detach()
    try:
        raw = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(raw)), raw


def send_now(raw: socket.socket, data: bytes) -> int:
    """Bytes of ``data`` the kernel took without waiting (0 when its buffer is
    full). Raises OSError for a broken connection."""
    try:
        return raw.send(data)
    except BlockingIOError:
        return 0


def receive_now(raw: socket.socket, size: int) -> bytes | None:
    """The next chunk if the kernel holds one (b"" at end of stream), else
    None; never waits. Raises OSError for a broken connection."""
    try:
        return raw.recv(size)
    except BlockingIOError:
        return None


def peek_now(raw: socket.socket) -> bytes | None:
    """What waits to be read, without taking it: a byte, b"" when the
    connection ended (closed or broken), None when nothing waits; never
    waits itself."""
    try:
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return b""  # broken: it ends as a close does


async def receive_when_ready(raw: socket.socket, size: int) -> bytes:
    """Wait until ``raw`` is readable, then read (b"" at end of stream); the
    caller bounds the wait. Raises OSError for a broken connection."""
    while True:
        await trio.lowlevel.wait_readable(raw)
        data = receive_now(raw, size)
        if data is not None:
            return data  # else a spurious wakeup: wait again

"""Binding the mesh port and choosing the advertised address."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

import pytest

from mesh.shell import net
from mesh.shell.net import (
    advertise_address,
    bind_mesh_sockets,
    format_address,
    is_ip_literal,
    resolve_bind,
)


@pytest.mark.parametrize(
    ("addr", "text"),
    [(("10.0.0.1", 7946), "10.0.0.1:7946"), (("::1", 80), "[::1]:80")],
)
def test_format_address(addr: tuple[str, int], text: str) -> None:
    assert format_address(addr) == text


@pytest.mark.parametrize(
    ("host", "literal"),
    [("127.0.0.1", True), ("fe80::1", True), ("localhost", False), ("", False)],
)
def test_is_ip_literal(host: str, literal: bool) -> None:
    assert is_ip_literal(host) is literal


async def test_port_0_binds_tcp_and_udp_on_one_number() -> None:
    family, addr = await resolve_bind("127.0.0.1", 0)
    tcp, udp = bind_mesh_sockets(family, addr)
    with tcp, udp:
        port = tcp.getsockname()[1]
        assert port != 0
        assert udp.getsockname() == ("127.0.0.1", port)
        assert udp.type == socket.SOCK_DGRAM


async def test_fixed_port_in_use_for_udp_fails_once() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        family, addr = await resolve_bind("127.0.0.1", port)
        with pytest.raises(OSError, match="in use"):
            bind_mesh_sockets(family, addr)


def test_advertise_configured_wins_and_inherits_the_bound_port() -> None:
    bound = ("0.0.0.0", 7001)
    family = socket.AF_INET
    assert advertise_address(("1.2.3.4", 9), bound, family=family) == ("1.2.3.4", 9)
    assert advertise_address(("1.2.3.4", 0), bound, family=family) == ("1.2.3.4", 7001)


def test_advertise_specific_bound_address_as_is() -> None:
    bound = ("127.0.0.1", 7001)
    assert advertise_address(None, bound, family=socket.AF_INET) == bound


def test_advertise_wildcard_picks_a_real_address() -> None:
    host, port = advertise_address(None, ("0.0.0.0", 7001), family=socket.AF_INET)
    assert port == 7001
    ip = ipaddress.ip_address(host)
    # a non-loopback address of this host, or loopback when it has none
    assert ip.version == 4
    assert not ip.is_unspecified


def test_interface_addresses_are_read_from_the_host() -> None:
    # every Linux host has its loopback interface; order is interface order
    assert "127.0.0.1" in net._interface_addresses(socket.AF_INET)


def test_a_host_without_a_default_route_advertises_an_interface_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Audit 7: in a network with no default route, the UDP route probe fails
    and the host name may resolve to loopback only; the member advertised
    127.0.0.1 to its peers. An interface's address is taken instead."""

    def loopback_only(*args: object, **kwargs: object) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_DGRAM, 0, "", ("127.0.1.1", 0))]

    class NoRoute(socket.socket):
        def connect(self, address: object) -> None:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    monkeypatch.setattr(socket, "socket", NoRoute)
    monkeypatch.setattr(
        net, "_interface_addresses", lambda family: ["127.0.0.1", "10.99.0.5"]
    )
    assert advertise_address(None, ("0.0.0.0", 7001), family=socket.AF_INET) == (
        "10.99.0.5",
        7001,
    )
    monkeypatch.setattr(net, "_interface_addresses", lambda family: ["127.0.0.1"])
    advertised = advertise_address(None, ("0.0.0.0", 7001), family=socket.AF_INET)
    assert advertised == ("127.0.0.1", 7001)
    assert net.is_loopback_fallback(("0.0.0.0", 7001), advertised)
    assert not net.is_loopback_fallback(("127.0.0.1", 7001), ("127.0.0.1", 7001))

"""The UDP endpoint on real sockets (127.0.0.1, port 0): garbage is counted by
reason and never ends the loop; a ping is answered with an ack."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import msgpack
import pytest
import trio

from mesh.codec import PROTOCOL_VERSION, decode_packet, encode_packet
from mesh.messages import Ack, Message, Ping
from mesh.shell.agent import Agent
from mesh.shell.udp import UdpEndpoint

from .conftest import local_config


class Peer:
    """A bare UDP socket standing in for a remote member."""

    def __init__(self, sock: trio.socket.SocketType, target: tuple[str, int]) -> None:
        self.sock = sock
        self.target = target

    async def send_raw(self, data: bytes) -> None:
        await self.sock.sendto(data, self.target)

    async def send(self, *messages: Message) -> None:
        await self.send_raw(encode_packet(messages))

    async def recv(self) -> list[Message]:
        with trio.fail_after(5):
            data, _ = await self.sock.recvfrom(65535)
        messages, _ = decode_packet(data)
        return messages


@pytest.fixture
async def wired() -> AsyncIterator[tuple[Agent, UdpEndpoint, Peer]]:
    """An agent whose UDP endpoint serves on 127.0.0.1:0, and a peer socket."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    addr = raw.getsockname()
    agent = Agent(local_config("udp-node"), addr=addr, now=trio.current_time())
    udp = UdpEndpoint(raw, metrics=agent.metrics, log=agent.log, max_messages=128)
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer_sock:
        await peer_sock.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            agent.attach(nursery=nursery, udp=udp, peers=None)
            nursery.start_soon(udp.serve, agent.receive)
            yield agent, udp, Peer(peer_sock, addr)
            nursery.cancel_scope.cancel()
    udp.close()


def dropped(agent: Agent, reason: str) -> float:
    value = agent.metrics.registry.get_sample_value(
        "mesh_dropped_packets_total", {"reason": reason}
    )
    return value or 0.0


async def test_ping_gets_ack(wired: tuple[Agent, UdpEndpoint, Peer]) -> None:
    _, _, peer = wired
    await peer.send(Ping(41, "udp-node", "prober"))
    messages = await peer.recv()
    assert messages[0] == Ack(41)


async def test_ping_for_another_name_gets_no_ack(
    wired: tuple[Agent, UdpEndpoint, Peer],
) -> None:
    """The second ping proves the first was processed (in order) and ignored."""
    _, _, peer = wired
    await peer.send(Ping(1, "someone-else", "prober"))
    await peer.send(Ping(2, "udp-node", "prober"))
    assert (await peer.recv())[0] == Ack(2)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc1", "malformed"),
        (b"", "malformed"),
        (msgpack.packb([99, []]), "bad_version"),
        (msgpack.packb({"a": 1}), "bad_version"),
        (msgpack.packb([PROTOCOL_VERSION, "x"]), "schema"),
        (msgpack.packb([PROTOCOL_VERSION, [[1, "x"]]]), "schema"),
        (msgpack.packb([PROTOCOL_VERSION, [[4, 1]] * 129]), "limit"),
    ],
)
async def test_garbage_is_counted_by_reason_and_loop_survives(
    wired: tuple[Agent, UdpEndpoint, Peer], data: bytes, reason: str
) -> None:
    agent, _, peer = wired
    await peer.send_raw(data)
    await peer.send_raw(data)
    # Datagrams on loopback arrive in order: once the ping is answered, the
    # garbage before it has been counted.
    await peer.send(Ping(7, "udp-node", "prober"))
    assert (await peer.recv())[0] == Ack(7)
    assert dropped(agent, reason) == 2


async def test_unknown_message_types_are_skipped_and_counted(
    wired: tuple[Agent, UdpEndpoint, Peer],
) -> None:
    agent, _, peer = wired
    ping = [1, 9, "udp-node", "prober"]
    data = msgpack.packb([PROTOCOL_VERSION, [[200, "from the future"], ping, [201]]])
    await peer.send_raw(data)
    assert (await peer.recv())[0] == Ack(9)
    assert dropped(agent, "unknown_type") == 2


async def test_send_to_a_host_name_is_refused_not_resolved(
    wired: tuple[Agent, UdpEndpoint, Peer],
) -> None:
    """A name would make sendto resolve synchronously and block the loop."""
    agent, udp, _ = wired
    udp.send(("peer.example.invalid", 7946), [Ack(1)])
    assert dropped(agent, "send_bad_address") == 1


async def test_send_errors_are_counted_not_raised(
    wired: tuple[Agent, UdpEndpoint, Peer],
) -> None:
    agent, udp, peer = wired
    udp.send(("::1", 7946), [Ack(1)])  # IPv6 on an IPv4 socket
    udp.send(("127.0.0.1", 0), [Ack(1)])  # port 0: EINVAL
    assert dropped(agent, "send_error") + dropped(agent, "send_bad_address") == 2
    udp.send(peer.target, [Ack(1)])  # still works

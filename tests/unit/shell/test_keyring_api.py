"""The keyring client API (mesh.shell.keyring_api) on an agent without sockets:
who is asked, and what ``results`` reports for each member."""

from __future__ import annotations

import httpx

from mesh.messages import Alive, Dead, MemberStatus, Suspect
from mesh.security import encode_key, fingerprint
from mesh.shell.agent import Agent
from mesh.shell.api import make_api_app
from mesh.shell.keyring_api import keyring_endpoints

from .conftest import MakeAgent

K1 = encode_key(bytes(range(32)))
K2 = encode_key(bytes(range(64, 96)))


class FakePeers:
    """Answers keyring operations per address; records who was asked."""

    def __init__(self, answers: dict[tuple[str, int], str]) -> None:
        self.answers = answers
        self.asked: list[tuple[tuple[str, int], str]] = []

    async def keyring_op(self, addr: tuple[str, int], op: str, key: bytes) -> str:
        self.asked.append((addr, op))
        return self.answers.get(addr, "ok")


def client(agent: Agent) -> httpx.AsyncClient:
    app = make_api_app(agent, routes=keyring_endpoints(agent))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mesh.test"
    )


def mesh_with_every_status(agent: Agent) -> None:
    """b alive, c suspect, d dead, e left."""
    agent.receive(
        ("127.0.0.9", 7946),
        [
            Alive(1, "b", ("127.0.0.2", 7946)),
            Alive(1, "c", ("127.0.0.3", 7946)),
            Alive(1, "d", ("127.0.0.4", 7946)),
            Alive(1, "e", ("127.0.0.5", 7946)),
            Suspect(1, "c", "b"),
            Dead(1, "d", "b"),
            Dead(1, "e", "e"),  # sent by itself: a leave
        ],
    )
    statuses = {m.name: m.status for m in agent.core.members()}
    assert statuses == {
        "a": MemberStatus.ALIVE,
        "b": MemberStatus.ALIVE,
        "c": MemberStatus.SUSPECT,
        "d": MemberStatus.DEAD,
        "e": MemberStatus.LEFT,
    }


async def test_results_name_every_member_that_has_not_left(
    make_agent: MakeAgent,
) -> None:
    agent = make_agent("a", encrypt=K1)
    mesh_with_every_status(agent)
    peers = FakePeers({("127.0.0.4", 7946): "timeout"})
    agent.peers = peers  # type: ignore[assignment]
    async with client(agent) as http:
        response = await http.post("/v1/keyring/install", json={"key": K2})
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["fingerprint"] == fingerprint(bytes(range(64, 96)))
    # The dead member is asked too, and its failure reported, never left out;
    # the member that left is neither asked nor reported.
    assert document["results"] == {
        "a": "ok",
        "b": "ok",
        "c": "ok",
        "d": "member is dead: timeout",
    }
    assert sorted(addr for addr, _ in peers.asked) == [
        ("127.0.0.2", 7946),
        ("127.0.0.3", 7946),
        ("127.0.0.4", 7946),
    ]


async def test_a_dead_member_that_answers_is_ok(make_agent: MakeAgent) -> None:
    agent = make_agent("a", encrypt=K1)
    mesh_with_every_status(agent)
    agent.peers = FakePeers({})  # type: ignore[assignment]
    async with client(agent) as http:
        response = await http.post("/v1/keyring/install", json={"key": K2})
    assert response.json()["results"] == dict.fromkeys("abcd", "ok")


async def test_without_peer_client_every_member_is_reported(
    make_agent: MakeAgent,
) -> None:
    agent = make_agent("a", encrypt=K1)
    mesh_with_every_status(agent)
    async with client(agent) as http:
        response = await http.post("/v1/keyring/install", json={"key": K2})
    assert response.json()["results"] == {
        "a": "ok",
        "b": "no peer client",
        "c": "no peer client",
        "d": "no peer client",
    }


async def test_every_keyring_call_is_409_without_encryption(
    make_agent: MakeAgent,
) -> None:
    agent = make_agent("a")
    error = {"error": "gossip encryption is off on this node; start it with --encrypt"}
    async with client(agent) as http:
        listed = await http.get("/v1/keyring")
        assert (listed.status_code, listed.json()) == (409, error)
        for op in ("install", "use", "remove"):
            response = await http.post(f"/v1/keyring/{op}", json={"key": K2})
            assert (response.status_code, response.json()) == (409, error), op


async def test_list_with_encryption(make_agent: MakeAgent) -> None:
    agent = make_agent("a", encrypt=K1)
    async with client(agent) as http:
        response = await http.get("/v1/keyring")
    assert response.status_code == 200
    assert response.json() == {
        "keys": [{"fingerprint": fingerprint(bytes(range(32))), "primary": True}]
    }

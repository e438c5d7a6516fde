"""The client commands (``mesh members``, ``mesh routes ...``, ``mesh leave``,
``mesh keyring ...``) against real ``mesh agent`` processes on 127.0.0.1.

``main()`` runs in-process (output captured); the agent is a child process
started on port 0, readiness from its ready line."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from mesh.cli import main
from mesh.client import Client, ClientError
from mesh.testing.agents import AgentProcess, wait_until

DEADLINE = 15.0
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    proc = AgentProcess("cli-a").start()
    try:
        yield proc
    finally:
        proc.close()


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[AgentProcess, str]]:
    key = base64.b64encode(bytes(range(32))).decode()
    proc = AgentProcess(
        "cli-s", env={"MESH_API_TOKEN": TOKEN, "MESH_ENCRYPT": key}
    ).start()
    try:
        yield proc, key
    finally:
        proc.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_members_table_and_json(
    agent: AgentProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "members", "--http", agent.http_addr)
    assert (code, err) == (0, "")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "ADDRESS", "STATUS", "INCARNATION", "TAGS"]
    assert row.split()[:3] == ["cli-a", agent.mesh_addr, "alive"]
    code, out, _ = run(capsys, "members", "--http", agent.http_addr, "--json")
    assert code == 0
    assert [m["name"] for m in json.loads(out)] == ["cli-a"]


def test_http_from_environment(
    agent: AgentProcess,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MESH_HTTP_ADDR", agent.http_addr)
    code, out, _ = run(capsys, "members", "--json")
    assert code == 0
    assert json.loads(out)[0]["name"] == "cli-a"


def test_routes_put_get_list_delete(
    agent: AgentProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    http = ("--http", agent.http_addr)
    code, out, err = run(
        capsys,
        "routes",
        "put",
        "svc.cli",
        "http://10.0.0.1:80",
        "--meta",
        "az=a",
        *http,
    )
    assert (code, err) == (0, "")
    assert out.startswith("put svc.cli (version ")
    code, out, _ = run(capsys, "routes", "get", "svc.cli", *http, "--json")
    route = json.loads(out)
    assert (route["target"], route["meta"]) == ("http://10.0.0.1:80", {"az": "a"})
    code, out, _ = run(capsys, "routes", "list", "--prefix", "svc.", *http)
    assert code == 0
    assert out.splitlines()[1].split()[:2] == ["svc.cli", "http://10.0.0.1:80"]
    code, out, _ = run(capsys, "routes", "delete", "svc.cli", *http)
    assert code == 0
    assert out.startswith("deleted svc.cli")
    code, out, err = run(capsys, "routes", "get", "svc.cli", *http)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("mesh: error: GET /v1/routes/svc.cli: 404 ")


def test_put_conflict_and_sync(
    agent: AgentProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    http = ("--http", agent.http_addr)
    assert run(capsys, "routes", "put", "k.rev", "t", "--revision", "5", *http)[0] == 0
    code, _, err = run(capsys, "routes", "put", "k.rev", "t", "--revision", "4", *http)
    assert code == 1
    assert " 409 " in err
    code, out, _ = run(
        capsys, "routes", "put", "k.sync", "t", "--sync-timeout", "1", *http, "--json"
    )
    assert code == 0
    assert json.loads(out)["pending"] == []  # alone: nobody to wait for


def test_unreachable_agent_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "members", "--http", "127.0.0.1:1")
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "cannot reach the agent at http://127.0.0.1:1" in err


def test_api_token(
    secured: tuple[AgentProcess, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proc, _ = secured
    monkeypatch.delenv("MESH_API_TOKEN", raising=False)
    code, _, err = run(capsys, "members", "--http", proc.http_addr)
    assert code == 1
    assert " 401 " in err
    assert "--api-token" in err
    code, out, _ = run(
        capsys, "members", "--http", proc.http_addr, "--api-token", TOKEN, "--json"
    )
    assert code == 0
    assert json.loads(out)[0]["name"] == "cli-s"
    monkeypatch.setenv("MESH_API_TOKEN", TOKEN)
    assert run(capsys, "members", "--http", proc.http_addr)[0] == 0


def test_keyring_list(
    secured: tuple[AgentProcess, str], capsys: pytest.CaptureFixture[str]
) -> None:
    proc, _ = secured
    http = ("--http", proc.http_addr, "--api-token", TOKEN)
    code, out, err = run(capsys, "keyring", "list", *http, "--json")
    assert (code, err) == (0, "")
    keys = json.loads(out)["keys"]
    assert len(keys) == 1
    assert keys[0]["primary"] is True
    code, out, _ = run(capsys, "keyring", "list", *http)
    assert out.splitlines()[1].split() == [keys[0]["fingerprint"], "yes"]
    code, _, err = run(capsys, "keyring", "install", "not-base64!", *http)
    assert code == 1
    assert err.startswith("mesh: error: POST /v1/keyring/install: 400 ")


def test_watch_prints_changes(agent: AgentProcess) -> None:
    watch = subprocess.Popen(
        [sys.executable, "-m", "mesh", "routes", "watch", "--json",
         "--prefix", "w.", "--http", agent.http_addr],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert watch.stdout is not None
        snapshot = json.loads(watch.stdout.readline())
        assert snapshot["event"] == "snapshot"
        with Client(agent.http_addr) as client:
            client.put_route("w.one", "t1")
        event = json.loads(watch.stdout.readline())
        while event["event"] == "heartbeat":
            event = json.loads(watch.stdout.readline())
        assert event["event"] == "put"
        assert event["route"]["key"] == "w.one"
        assert event["index"] > snapshot["index"]
    finally:
        watch.kill()
        watch.communicate(timeout=DEADLINE)


def test_blocking_query_via_client(agent: AgentProcess) -> None:
    with Client(agent.http_addr) as client:
        index = client.routes()["index"]
        client.put_route("bq.one", "t")
        answer = client.routes(index=index, wait=5)
    assert answer["index"] > index


def test_leave_stops_the_agent(capsys: pytest.CaptureFixture[str]) -> None:
    proc = AgentProcess("cli-leave").start()
    try:
        code, out, _ = run(capsys, "leave", "--http", proc.http_addr)
        assert code == 0
        assert "is leaving the mesh" in out
        wait_until(lambda: not proc.alive(), DEADLINE, what="agent exit")
        assert proc.proc is not None
        assert proc.proc.returncode == 0
    finally:
        proc.close()


def test_client_error_carries_status(agent: AgentProcess) -> None:
    with Client(agent.http_addr) as client, pytest.raises(ClientError) as info:
        client.get_route("no.such.key")
    assert info.value.status == 404

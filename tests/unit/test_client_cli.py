"""The client commands (``mesh members``, ``mesh routes ...``, ``mesh leave``,
``mesh keyring ...``) against real ``mesh agent`` processes on 127.0.0.1.

``main()`` runs in-process (output captured); the agent is a child process
started on port 0, readiness from its ready line. Input errors need no agent:
they point at a port nothing listens on, so a call that is sent anyway shows as
"cannot reach" instead of the expected error."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.cli import build_parser, main
from mesh.cli_client import _client
from mesh.client import Client, ClientError
from mesh.core.route_checks import KEY_RE
from mesh.testing.agents import AgentProcess, wait_until

ROOT = Path(__file__).resolve().parents[2]

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


def free_port() -> int:
    """A port nothing listens on (bound by the kernel, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def nowhere() -> tuple[str, str]:
    """``--http`` at a port nothing listens on."""
    return ("--http", f"127.0.0.1:{free_port()}")


def one_error_line(
    capsys: pytest.CaptureFixture[str], *argv: str, code: int = 1
) -> str:
    """Run ``mesh *argv``, expecting exit ``code``, nothing on stdout and one
    ``mesh: error: ...`` line on stderr; that line's message."""
    got, out, err = run(capsys, *argv)
    assert (got, out) == (code, ""), err
    assert err.startswith("mesh: error: ")
    assert err.endswith("\n")
    assert err.count("\n") == 1
    return err.removeprefix("mesh: error: ").rstrip("\n")


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
    assert [m["name"] for m in json.loads(out)["members"]] == ["cli-a"]


def test_http_from_environment(
    agent: AgentProcess,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MESH_HTTP_ADDR", agent.http_addr)
    code, out, _ = run(capsys, "members", "--json")
    assert code == 0
    assert json.loads(out)["members"][0]["name"] == "cli-a"


@pytest.mark.parametrize("wildcard", [False, True])
def test_http_from_the_agents_own_setting(
    agent: AgentProcess,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    wildcard: bool,
) -> None:
    # audit 14: `. /etc/mesh/mesh.env; mesh members` asked the default port
    # while the agent listened where MESH_HTTP said
    port = agent.http_addr.rpartition(":")[2]
    monkeypatch.delenv("MESH_HTTP_ADDR", raising=False)
    monkeypatch.setenv("MESH_HTTP", f"0.0.0.0:{port}" if wildcard else agent.http_addr)
    code, out, _ = run(capsys, "members", "--json")
    assert code == 0
    assert json.loads(out)["members"][0]["name"] == "cli-a"
    monkeypatch.setenv("MESH_HTTP_ADDR", " ")  # blank counts as unset (audit 16)
    assert run(capsys, "members", "--json")[0] == 0
    monkeypatch.setenv("MESH_HTTP_ADDR", "garbage::")  # the client's own wins
    assert one_error_line(capsys, "members").startswith("MESH_HTTP_ADDR: ")


def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """docs/deploy/Dockerfile's HEALTHCHECK, run as the container would."""
    dockerfile = (ROOT / "docs" / "deploy" / "Dockerfile").read_text()
    line = next(x for x in dockerfile.splitlines() if x.startswith("HEALTHCHECK"))
    argv = json.loads(line[line.index("[") :])
    assert argv[:2] == ["python", "-c"]
    return subprocess.run(
        [sys.executable, "-c", argv[2]],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_container_healthcheck_finds_the_agent(agent: AgentProcess) -> None:
    port = agent.http_addr.rpartition(":")[2]
    for http in (agent.http_addr, f"0.0.0.0:{port}"):
        assert _healthcheck({"MESH_HTTP": http}).returncode == 0
    # empty counts as unset, as for the agent (audit 14: a ValueError)
    assert "ValueError" not in _healthcheck({"MESH_HTTP": ""}).stderr
    # the agent strips the value (audit 16: a leading space failed the check)
    assert _healthcheck({"MESH_HTTP": f" {agent.http_addr} "}).returncode == 0


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
    # --json: the error document on stdout too, for scripts (audit 14)
    code, out, err = run(
        capsys, "routes", "put", "k.rev", "t", "--revision", "4", *http, "--json"
    )
    assert code == 1
    assert " 409 " in err
    assert json.loads(out)["current"]["revision"] == 5
    code, out, _ = run(
        capsys, "routes", "put", "k.sync", "t", "--sync-timeout", "1", *http, "--json"
    )
    assert code == 0
    assert json.loads(out)["pending"] == []  # alone: nobody to wait for


def test_unreachable_agent_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    message = one_error_line(capsys, "members", "--http", f"127.0.0.1:{port}")
    assert message.startswith(f"cannot reach the agent at http://127.0.0.1:{port} (")


@pytest.mark.parametrize(
    "http",
    [
        "garbage::",
        "http://[::1",
        "\udcff",  # an argument that is not UTF-8
        "ftp://agent.example",
        "http://",
        "",
        "127.0.0.1:99999",
        "127.0.0.1:0",
        "agent.example?x=1",
    ],
)
def test_bad_http_is_one_line(capsys: pytest.CaptureFixture[str], http: str) -> None:
    message = one_error_line(capsys, "members", "--http", http)
    assert message.startswith((f"--http: {http!r}", "--http: empty address"))


def test_bad_http_from_environment_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_HTTP_ADDR", "garbage::")
    message = one_error_line(capsys, "members")
    assert message.startswith("MESH_HTTP_ADDR: 'garbage::' is not HOST:PORT or a URL")


@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "-inf", "1e10"])
def test_bad_timeout_is_one_line(
    capsys: pytest.CaptureFixture[str], nowhere: tuple[str, str], seconds: str
) -> None:
    message = one_error_line(capsys, "members", f"--timeout={seconds}", *nowhere)
    assert message == (
        f"--timeout: must be a number of seconds in (0, 86400], got {float(seconds):g}"
    )


@pytest.mark.parametrize("seconds", ["0", "-20", "nan", "inf", "-inf"])
def test_bad_sync_timeout_is_one_line(
    capsys: pytest.CaptureFixture[str], nowhere: tuple[str, str], seconds: str
) -> None:
    for argv in (("put", "k", "t"), ("delete", "k")):
        message = one_error_line(
            capsys, "routes", *argv, f"--sync-timeout={seconds}", *nowhere
        )
        assert message.startswith("--sync-timeout: must be a number of seconds")


@pytest.mark.parametrize("key", ["..", ".", "a/b", "_a", "é", "a b", "k" * 254])
def test_invalid_key_is_refused_before_sending(
    capsys: pytest.CaptureFixture[str], nowhere: tuple[str, str], key: str
) -> None:
    expected = f"invalid key {key!r}: must match ^{KEY_RE.pattern}$"
    for argv in (("get", key), ("put", key, "t"), ("delete", key)):
        assert one_error_line(capsys, "routes", *argv, *nowhere) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ("routes", "list", "--prefix", "\udcff"),
        ("routes", "watch", "--prefix", "\udcff"),
        ("routes", "put", "k", "\udcff"),
        ("routes", "put", "k", "t", "--meta", "az=\udcff"),
        ("keyring", "install", "\udcff"),
        ("members", "--api-token", "é"),
        ("members", "--api-token", "a\nb"),
    ],
)
def test_text_that_cannot_be_sent_is_one_line(
    capsys: pytest.CaptureFixture[str], nowhere: tuple[str, str], argv: tuple[str]
) -> None:
    message = one_error_line(capsys, *argv, *nowhere)
    assert "not valid UTF-8" in message or "printable ASCII" in message


def test_bad_meta_is_a_client_error(
    capsys: pytest.CaptureFixture[str], nowhere: tuple[str, str]
) -> None:
    message = one_error_line(capsys, "routes", "put", "k", "t", "--meta", "x", *nowhere)
    assert message == "--meta must be KEY=VALUE, got 'x'"
    # an empty KEY is a slip (audit 14 saw "=v" stored as meta key "")
    message = one_error_line(
        capsys, "routes", "put", "k", "t", "--meta", "=v", *nowhere
    )
    assert message == "--meta must be KEY=VALUE with a KEY, got '=v'"


@pytest.mark.parametrize(
    "argv",
    [
        ("routes", "get"),
        ("routes", "put", "k"),
        ("routes", "put", "k", "t", "--revision", "abc"),
        ("routes", "delete", "k", "--revision", "1.5"),
        ("routes", "watch", "--index", "x"),
        ("members", "--timeout", "abc"),
        ("members", "--no-such-flag"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], nowhere: tuple[str, str], argv: tuple[str]
) -> None:
    one_error_line(capsys, *argv, *nowhere, code=2)


def test_odd_prefix_reaches_the_network(
    capsys: pytest.CaptureFixture[str], nowhere: tuple[str, str]
) -> None:
    # any prefix is fine: it is a query parameter, not part of the path
    for verb in ("list", "watch"):
        message = one_error_line(
            capsys, "routes", verb, "--prefix", "../a b&c#", *nowhere
        )
        assert message.startswith("cannot reach the agent at ")


def test_odd_keys_and_prefixes_round_trip(
    agent: AgentProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    http = ("--http", agent.http_addr)
    key = "odd:key@host-1_x.y"
    assert run(capsys, "routes", "put", key, "t-odd", *http)[0] == 0
    code, out, err = run(capsys, "routes", "get", key, *http, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["target"] == "t-odd"
    code, out, _ = run(
        capsys, "routes", "list", "--prefix", "odd:key@", *http, "--json"
    )
    assert [r["key"] for r in json.loads(out)["routes"]] == [key]
    for prefix in ("odd:key@host-1_x.y&prefix=", "../odd", "odd key#", "é"):
        code, out, _ = run(
            capsys, "routes", "list", "--prefix", prefix, *http, "--json"
        )
        assert code == 0
        assert json.loads(out)["routes"] == []


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
    assert json.loads(out)["members"][0]["name"] == "cli-s"
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


def test_watch_says_why_it_ended_when_the_agent_leaves() -> None:
    """A graceful leave ends the stream cleanly: exit 0, with a line on
    stderr saying so (it used to stop in silence; audit, session 13)."""
    proc = AgentProcess("cli-watch-leave").start()
    try:
        watch = subprocess.Popen(
            [sys.executable, "-m", "mesh", "routes", "watch", "--json",
             "--http", proc.http_addr],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            assert watch.stdout is not None
            assert json.loads(watch.stdout.readline())["event"] == "snapshot"
            with Client(proc.http_addr) as client:
                client.leave()
            _, err = watch.communicate(timeout=DEADLINE)
        finally:
            watch.kill()
        assert watch.returncode == 0
        assert "the agent ended the stream: it is leaving" in err
    finally:
        proc.close()


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


def test_tls_ca_option_and_environment_reach_the_client(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import certifi

    import mesh.client

    seen: list[object] = []

    class Spy(Client):
        def __init__(self, http: str, **kw: object) -> None:
            seen.append(kw["verify"])
            raise ClientError("stop here")

    monkeypatch.setattr(mesh.client, "Client", Spy)
    monkeypatch.delenv("MESH_TLS_CA", raising=False)
    url = "https://127.0.0.1:1"
    assert run(capsys, "members", "--http", url)[0] == 1
    assert run(capsys, "members", "--http", url, "--tls-ca", certifi.where())[0] == 1
    monkeypatch.setenv("MESH_TLS_CA", certifi.where())
    assert run(capsys, "keyring", "list", "--http", url)[0] == 1
    assert seen == [True, certifi.where(), certifi.where()]
    code, _, err = run(capsys, "members", "--http", url, "--tls-ca", "/nonexistent")
    assert code == 1
    assert err == "mesh: error: --tls-ca: no such file: '/nonexistent'\n"
    monkeypatch.setenv("MESH_TLS_CA", "/nonexistent")
    _, _, err = run(capsys, "members", "--http", url)
    assert err == "mesh: error: MESH_TLS_CA: no such file: '/nonexistent'\n"


def test_keyring_list_without_encryption_is_one_line(
    agent: AgentProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "keyring", "list", "--http", agent.http_addr)
    assert (code, out) == (1, "")
    assert err == (
        "mesh: error: GET /v1/keyring: 409 gossip encryption is off on this node; "
        "start it with --encrypt\n"
    )


def test_keyring_operations_wait_longer_than_one_members_tcp_timeout() -> None:
    # The agent waits up to tcp_timeout (10 s) per member; the CLI's usual
    # 10 s would cut the answer, and its per-member results, at that edge.
    parser = build_parser()

    def timeout(argv: list[str]) -> float:
        args = parser.parse_args(argv)
        client = _client(args)
        client.close()
        return float(args.timeout)

    for op in ("install", "use", "remove"):
        assert timeout(["keyring", op, "K"]) == 30.0
        assert timeout(["keyring", op, "K", "--timeout", "5"]) == 5.0
    assert timeout(["members"]) == 10.0
    assert timeout(["keyring", "list"]) == 10.0


def test_a_write_some_member_did_not_acknowledge_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--sync-timeout`` asks for every member's acknowledgement: a write one
    did not acknowledge in time is committed, yet exits 1 (as keyring does
    unless every member is ok), with and without ``--json`` (audit 7)."""
    a = AgentProcess("cli-sync-a").start()
    b = AgentProcess("cli-sync-b", join=[a.mesh_addr]).start()
    try:
        wait_until(
            lambda: a.statuses().get("cli-sync-b") == "alive", DEADLINE, what="b"
        )
        b.pause()
        http = ("--http", a.http_addr, "--sync-timeout", "0.5")
        code, out, err = run(capsys, "routes", "put", "k.synced", "t", *http)
        assert code == 1
        assert "pending: cli-sync-b" in out
        assert err.count("\n") == 1
        assert "not acknowledged within 0.5 s by 1 member(s): cli-sync-b" in err
        code, out, _ = run(capsys, "routes", "delete", "k.synced", *http, "--json")
        assert code == 1
        assert json.loads(out)["pending"] == ["cli-sync-b"]
        assert a.get("/v1/routes/k.synced").status_code == 404  # committed
    finally:
        b.resume()
        b.close()
        a.close()

"""The ``mesh`` command line: exit codes, one-line errors, help, and a real
agent process that leaves on SIGTERM with status 0."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import structlog
import trio

from mesh import __version__
from mesh.cli import build_parser, main, unknown_environment
from mesh.logs import configure_logging, get_logger

READY = re.compile(r"mesh agent ready name=(\S+) mesh=(\S+) http=(\S+)")


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mesh: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"mesh {__version__}\n"


def test_agent_help_documents_flags_and_precedence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["agent", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--bind",
        "--http",
        "--name",
        "--advertise",
        "--join",
        "--profile",
        "--tag",
        "--log-format",
        "--log-level",
        "--config",
    ):
        assert flag in out
    assert "flag > environment > TOML file > profile defaults" in out
    assert "MESH_JOIN" in out


def test_no_command_prints_usage_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 2
    assert "usage: mesh" in capsys.readouterr().err


def test_subcommands_are_registered() -> None:
    help_text = build_parser().format_help()
    assert "agent" in help_text
    assert "version" in help_text


@pytest.mark.parametrize(
    "argv",
    [
        ["agent", "--profile", "moon"],
        ["agent", "--log-format", "xml"],
        ["agent", "--no-such-flag"],
        ["agent", "--bind", "localhost"],
        ["agent", "--bind", "127.0.0.1:70000"],
        ["agent", "--tag", "novalue"],
        ["agent", "--name", "has space"],
        ["frobnicate"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err)
    assert captured.out == ""


def test_bad_env_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESH_PROBE_INTERVAL", "soon")
    assert main(["agent"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "MESH_PROBE_INTERVAL" in line


def test_bad_log_level_from_env_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESH_LOG_LEVEL", "chatty")
    assert main(["agent", "--name", "n"]) == 2
    assert "log_level" in one_error_line(capsys.readouterr().err)


def test_unknown_environment_variables_are_named() -> None:
    environ = {
        "MESH_PROBE_INTERVALL": "0.5",  # misspelt
        "MESH_TAGS": "a=b",  # the variable is MESH_TAG
        "MESH_PROBE_INTERVAL": "0.5",
        "MESH_TAG": "a=b",
        "MESH_CONFIG": "/etc/mesh.toml",
        "MESH_HTTP_ADDR": "127.0.0.1:8946",  # the client commands'
        # Kubernetes service links of the example manifest's Services
        "MESH_API_SERVICE_HOST": "10.0.0.1",
        "MESH_API_SERVICE_PORT": "8946",
        "MESH_API_PORT": "tcp://10.0.0.1:8946",
        "MESH_API_PORT_8946_TCP_ADDR": "10.0.0.1",
        "HOME": "/root",
    }
    assert unknown_environment(environ) == [
        "ignoring MESH_PROBE_INTERVALL: not a setting"
        " (did you mean MESH_PROBE_INTERVAL?)",
        "ignoring MESH_TAGS: not a setting (did you mean MESH_TAG?)",
    ]


def test_oversized_tags_refused_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["agent", "--name", "n"]
    for i in range(20):
        argv += ["--tag", f"key{i}={'v' * 40}"]
    assert main(argv) == 2
    assert "max_tags_bytes" in one_error_line(capsys.readouterr().err)


async def test_agent_process_leaves_on_sigterm_with_status_0() -> None:
    """The real entry point: ready line on stdout, API up, SIGTERM -> exit 0."""
    argv = [
        sys.executable,
        "-m",
        "mesh",
        "agent",
        "--profile",
        "local",
        "--bind",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--name",
        "proc",
    ]
    # a misspelt setting: warned about with the right name, not fatal (the
    # environment is shared; see test_unknown_environment_variables_are_named)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MESH_PROBE_INTERVALL": "0.5"}
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        try:
            assert process.stdout is not None
            buffer = b""
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some()
                assert chunk, "agent exited before it was ready"
                buffer += chunk
            match = READY.fullmatch(buffer.split(b"\n")[0].decode())
            assert match is not None, buffer
            assert match.group(1) == "proc"
            async with httpx.AsyncClient(trust_env=False) as client:
                health = await client.get(f"http://{match.group(3)}/v1/health")
            assert health.json()["name"] == "proc"
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            assert process.stderr is not None
            err = b""
            while chunk := await process.stderr.receive_some():
                err += chunk
            assert b"did you mean MESH_PROBE_INTERVAL?" in err, err
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_one_event_per_line_with_member() -> None:
    out = io.StringIO()
    configure_logging(log_format="json", log_level="info", stream=out)
    log = get_logger("node-1")
    log.debug("per packet detail", size=3)  # below the level: dropped
    log.info("member joined", peer="node-2")
    try:
        raise ValueError("boom")
    except ValueError:
        log.error("failed", exc_info=True)
    logging.getLogger("some.library").warning("from a library")
    lines = out.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["member joined", "failed", "from a library"]
    assert events[0]["member"] == "node-1"
    assert events[0]["peer"] == "node-2"
    assert events[0]["level"] == "info"
    assert "timestamp" in events[0]
    assert events[1]["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_text_logs_carry_member_and_debug_level() -> None:
    out = io.StringIO()
    configure_logging(log_format="text", log_level="debug", stream=out)
    get_logger("node-1").debug("dropped datagram", reason="malformed")
    line = out.getvalue()
    assert line.count("\n") == 1
    assert "dropped datagram" in line
    assert "member=node-1" in line
    assert "reason=malformed" in line

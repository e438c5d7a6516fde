"""Logs of real agents (``--log-format json``): one JSON event per line, each
naming the member that wrote it; state changes at info, including a healed
partition; route targets never at info."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mesh.client import Client
from mesh.testing.agents import AgentCluster, wait_until

DEADLINE = 20.0
SECRET_TARGET = "http://10.9.8.7:1234/?token=do-not-log"


def read_log(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    assert lines, f"{path} is empty"
    return [json.loads(line) for line in lines]  # fails on any non-JSON line


def test_json_logs_name_the_member_and_report_a_healed_partition(
    cluster: AgentCluster, tmp_path: Path
) -> None:
    flags = ["--log-format", "json", "--log-level", "debug"]
    a = cluster.add("a", extra=flags)
    b = cluster.add("b", extra=flags)
    wait_until(cluster.converged, DEADLINE, what="a and b alive")
    with Client(a.http_addr) as client:
        client.put_route("svc.logged", SECRET_TARGET, meta={"token": "meta-secret"})
    wait_until(
        lambda: b.get("/v1/routes/svc.logged").status_code == 200,
        DEADLINE,
        what="route replicated",
    )
    b.pause()  # a partition, as far as a can tell
    try:
        wait_until(lambda: a.statuses().get("b") == "dead", DEADLINE, what="b dead")
    finally:
        b.resume()
    wait_until(lambda: a.statuses().get("b") == "alive", DEADLINE, what="b back")

    def healed() -> list[dict[str, Any]]:
        return [
            e
            for e in read_log(tmp_path / "a.log")
            if e["event"] == "dead member is back"
        ]

    (line,) = wait_until(healed, DEADLINE, what="dead member is back logged")
    assert line["level"] == "info"
    assert line["member"] == "a"
    assert line["peer"] == "b"
    assert line["dead_for"] > 0

    events = read_log(tmp_path / "a.log") + read_log(tmp_path / "b.log")
    for event in events:
        assert {"event", "level", "timestamp"} <= event.keys(), event
        if "peer" in event:
            assert event["member"] in ("a", "b"), event
    by_event = {(e["member"], e["event"], e["level"]) for e in events}
    assert ("a", "member joined", "info") in by_event
    assert ("a", "member suspect", "info") in by_event
    assert ("a", "member dead", "info") in by_event
    assert ("b", "refuted suspicion of us", "info") in by_event
    # per-packet detail exists, at debug only
    assert any(e["event"] == "datagram" and e["level"] == "debug" for e in events)
    for event in events:
        text = json.dumps(event)
        assert "do-not-log" not in text, event
        assert "meta-secret" not in text, event

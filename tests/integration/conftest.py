"""Fixtures for real ``mesh agent`` processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.testing.agents import AgentCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[AgentCluster]:
    """An empty cluster of `local`-profile agents; logs under tmp_path, all
    processes killed at the end whatever the test did."""
    with AgentCluster(log_dir=str(tmp_path), profile="local") as c:
        yield c


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)

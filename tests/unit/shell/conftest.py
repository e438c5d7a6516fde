"""Shared pieces for shell tests: an agent without I/O, local configs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from mesh.config import Config
from mesh.shell.agent import Agent

MakeAgent = Callable[..., Agent]


def local_config(name: str, **overrides: Any) -> Config:
    """A `local`-profile config on 127.0.0.1 with kernel-chosen ports."""
    values: dict[str, Any] = {
        "name": name,
        "bind": ("127.0.0.1", 0),
        "http": ("127.0.0.1", 0),
        **overrides,
    }
    return Config.local(**values)


@pytest.fixture
def make_agent() -> MakeAgent:
    """Build an :class:`Agent` with no sockets (sends dropped, I/O fails)."""

    def make(name: str = "self", **overrides: Any) -> Agent:
        config = local_config(name, **overrides)
        return Agent(config, addr=("127.0.0.1", 7946), now=trio.current_time())

    return make

"""The thin trio shell around :mod:`mesh.core`.

Decode at the edge, feed the core, execute its effects: no protocol decision lives
here. :func:`~mesh.shell.runner.run_agent` is the entry point.
"""

from __future__ import annotations

from .runner import AgentAddresses, run_agent

__all__ = ["AgentAddresses", "run_agent"]

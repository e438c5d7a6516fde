"""Logging: structlog, one event per line on stderr, text or JSON.

Every agent logs through :func:`get_logger`, which binds ``member=<name>`` so the
lines of several agents (one machine, tests, ``mesh up``) can be told apart.
Member state changes are logged at info, per-packet detail at debug; the level
filter is compiled into the logger (``make_filtering_bound_logger``), so a debug
call on the per-packet path costs next to nothing when it is off. Standard
``logging`` records (httpx, other libraries) go through the same renderer.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog
from structlog.typing import FilteringBoundLogger, Processor

from .errors import ConfigError

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "configure_logging", "get_logger"]

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(
    *, log_format: str = "text", log_level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog (and stdlib logging) process-wide.

    Raises:
        ConfigError: unknown format or level.
    """
    if log_format not in LOG_FORMATS:
        raise ConfigError(
            f"log_format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}"
        )
    level_name = log_level.lower()
    if level_name not in LOG_LEVELS:
        raise ConfigError(
            f"log_level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}"
        )
    level = logging.getLevelName(level_name.upper())
    out = stream if stream is not None else sys.stderr
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if log_format == "json":
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    # Libraries log every request at info (httpx); only their warnings matter.
    root.setLevel(max(level, logging.WARNING))


def get_logger(member: str, **bound: Any) -> FilteringBoundLogger:
    """The logger of one agent, with ``member`` bound on every event."""
    return cast(
        FilteringBoundLogger, structlog.get_logger("mesh").bind(member=member, **bound)
    )

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

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "check_log_setting",
    "configure_logging",
    "get_logger",
]

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def check_log_setting(name: str, value: object) -> None:
    """ConfigError unless ``value`` is a ``log_format`` or ``log_level``
    (``name``) mesh knows; levels are case-blind. Shared by the config, which
    checks them when it is built, and :func:`configure_logging`."""
    choices = LOG_FORMATS if name == "log_format" else LOG_LEVELS
    text = value.lower() if name == "log_level" and isinstance(value, str) else value
    if text not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def configure_logging(
    *, log_format: str = "text", log_level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog (and stdlib logging) process-wide.

    Raises:
        ConfigError: unknown format or level.
    """
    check_log_setting("log_format", log_format)
    check_log_setting("log_level", log_level)
    level = logging.getLevelName(log_level.upper())
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

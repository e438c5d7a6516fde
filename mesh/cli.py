"""The ``mesh`` command: ``mesh agent``, ``mesh version``, ``mesh keygen``, the
client commands (``mesh members``, ``mesh routes``, ``mesh leave``, ``mesh
keyring``: :mod:`mesh.cli_client`) and ``mesh up`` when :mod:`mesh.tui` is
present.

Configuration precedence, highest first: command-line flag, ``MESH_*``
environment variable, TOML file (``--config FILE`` or ``MESH_CONFIG``), profile
defaults. Each layer sets whole values (a ``--tag`` list replaces the file's tags
rather than merging with them), as Consul and Serf agents do. Any mistake is a
:class:`~mesh.errors.ConfigError`: one ``mesh: error: ...`` line on stderr and
exit status 2, before a socket is opened.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import gc
import logging
import math
import os
import re
import socket
import sys
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import attrs

from . import __version__
from .cli_client import add_client_parsers
from .config import PROFILES, Config, parse_address, parse_pairs
from .errors import ConfigError
from .logs import LOG_FORMATS, LOG_LEVELS

__all__ = ["build_parser", "load_config", "main"]

_ENV_PREFIX = "MESH_"
_ADDRESS_FIELDS = frozenset(("bind", "http", "advertise"))
_SPLIT = re.compile(r"[\s,]+")
#: MESH_* variables that are not settings: the client commands' address, and
#: the TAG and CONFIG spellings of the agent's own
_ENV_OTHER = frozenset(("MESH_TAG", "MESH_CONFIG", "MESH_HTTP_ADDR"))
#: what Kubernetes injects for a Service named mesh-* (its "service links")
_K8S_SERVICE_LINK = re.compile(
    r"MESH_[A-Z0-9_]*_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
    r"|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)"
)
#: one setting spelt two ways: a layer that gives either overrides both from
#: the layers below it (an operator's exported MESH_API_TOKEN, meant for the
#: client commands, must not make --api-token-file a conflict); one layer
#: giving both is still refused
_ONE_SETTING = (("api_token", "api_token_file"),)
_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off"))

Command = Callable[[argparse.Namespace], int]

_AGENT_EPILOG = """\
configuration precedence: flag > environment > TOML file > profile defaults.

environment: every setting is also read from MESH_<SETTING> (MESH_BIND,
MESH_HTTP, MESH_NAME, MESH_ADVERTISE, MESH_PROFILE, MESH_LOG_FORMAT,
MESH_LOG_LEVEL, MESH_CONFIG); MESH_JOIN and MESH_TAG take several values
separated by whitespace or commas (MESH_TAG="zone=a role=web"); any tunable
too, e.g. MESH_PROBE_INTERVAL=2.

TOML file (--config): keys are the setting names, e.g.
    bind = "0.0.0.0:7946"
    join = ["seed-1:7946", "seed-2:7946"]
    tags = { zone = "a" }
    profile = "lan"
    probe_interval = 2.0      # any tunable of mesh.Config

SIGTERM or SIGINT leaves the mesh gracefully and exits 0.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one ``mesh: error: ...`` line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mesh: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full parser; subcommands register themselves via ``add_*_parser``."""
    parser = _Parser(prog="mesh", description="A gossip peer mesh node.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _subcommands():
        add(subparsers)
    return parser


def _subcommands() -> list[Callable[[Any], None]]:
    adders: list[Callable[[Any], None]] = [
        add_agent_parser,
        add_version_parser,
        add_keygen_parser,
        add_client_parsers,
    ]
    try:
        from .tui import add_up_parser  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != "mesh.tui":
            raise
    else:
        adders.append(add_up_parser)
    return adders


def add_agent_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "agent",
        help="run a mesh agent in the foreground",
        description="Run one mesh agent in the foreground until it leaves.",
        epilog=_AGENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s = argparse.SUPPRESS  # only flags actually given override lower layers
    p.add_argument(
        "--bind",
        metavar="HOST:PORT",
        default=s,
        help="mesh port: UDP gossip and TCP peer sync (default 0.0.0.0:7946)",
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=s,
        help="client API address (default 127.0.0.1:8946)",
    )
    p.add_argument(
        "--name", default=s, help="node name, unique in the mesh (default: hostname)"
    )
    p.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        default=s,
        help="mesh address peers should use (default: the bound address, or the "
        "first non-loopback address when bound to 0.0.0.0)",
    )
    p.add_argument(
        "--join",
        metavar="HOST:PORT",
        action="append",
        default=s,
        help="a seed; repeatable; a DNS name joins all its A/AAAA records",
    )
    p.add_argument(
        "--profile",
        choices=list(PROFILES),
        default=s,
        help="timer preset: lan (default), local (one machine, tests), wan",
    )
    p.add_argument(
        "--tag",
        metavar="KEY=VALUE",
        action="append",
        default=s,
        help="member metadata gossiped to all peers; repeatable",
    )
    p.add_argument("--log-format", choices=LOG_FORMATS, default=s, help="default: text")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=s, help="default: info")
    p.add_argument("--config", metavar="FILE", default=s, help="TOML file of settings")
    _add_security_flags(p)
    p.set_defaults(func=_cmd_agent)


def _add_security_flags(p: argparse.ArgumentParser) -> None:
    """The agent's security flags (docs/security.md)."""
    s = argparse.SUPPRESS
    p.add_argument(
        "--encrypt",
        metavar="KEY",
        default=s,
        help="gossip key, base64 of 16/24/32 bytes (see `mesh keygen`); prefer "
        "MESH_ENCRYPT or the config file: flags show in `ps`",
    )
    p.add_argument(
        "--api-token",
        metavar="TOKEN",
        default=s,
        help="require Authorization: Bearer TOKEN on the client API",
    )
    p.add_argument(
        "--api-token-file", metavar="FILE", default=s, help="read the API token here"
    )
    p.add_argument("--tls-cert", metavar="PEM", default=s, help="TLS certificate")
    p.add_argument("--tls-key", metavar="PEM", default=s, help="TLS private key")
    p.add_argument(
        "--tls-ca",
        metavar="PEM",
        default=s,
        help="CA bundle: peers must present a certificate it signed (mutual TLS)",
    )


def add_keygen_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keygen", help="print a new random gossip key (base64) for --encrypt"
    )
    p.add_argument(
        "--bytes", type=int, choices=(16, 24, 32), default=32, help="default: 32"
    )
    p.set_defaults(func=_cmd_keygen)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from .security import encode_key, generate_key

    print(encode_key(generate_key(args.bytes)))
    return 0


def add_version_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("version", help="print the version")
    p.set_defaults(func=_cmd_version)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mesh`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    func: Command | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return func(args)
    except ConfigError as exc:
        print(f"mesh: error: {exc}", file=sys.stderr)
        return 2


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"mesh {__version__}")
    return 0


def _cmd_agent(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    config = load_config(flags, os.environ)
    # Imported here: `mesh version` and `--help` need no event loop.
    import trio

    from .logs import configure_logging
    from .shell.runner import run_agent

    configure_logging(log_format=config.log_format, log_level=config.log_level)
    # No `*_created` series (each counter child's creation time): nothing
    # reads them, and they add a series per child. Process-wide, so only
    # here, in our own process; an embedding program keeps its own choice.
    import prometheus_client

    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    log = logging.getLogger("mesh.cli")
    for warning in unknown_environment(os.environ):
        log.warning("%s", warning)
    # Everything imported so far lives as long as the process: move it out of
    # the cyclic collector's reach, so a full collection scans what the agent
    # allocates, not the ~10^5 objects of its libraries (those scans were
    # tens-of-ms pauses in replication-lag tails).
    gc.freeze()
    # CPython's own thresholds otherwise: the route table's entries are
    # structs the collector never tracks (core.routes.Route), so a full
    # collection no longer grows with the table (it walked two objects per
    # route until session 13, ~0.35 s at 10^6 routes, and this process asked
    # for fewer full collections; docs/benchmarks.md, "Thirteenth round").
    try:
        trio.run(run_agent, config)
    except OSError as exc:  # a port could not be bound
        print(f"mesh: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130
    return 0


def load_config(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    default_name: Callable[[], str] = socket.gethostname,
) -> Config:
    """Build the Config from flags > environment > TOML file > profile defaults.

    Args:
        flags: the flags actually given (``dest`` names; ``config`` is the file).
        environ: the environment (``MESH_*`` variables are read).
        default_name: the name when no layer sets one.

    Raises:
        ConfigError: any invalid or unknown setting, naming where it came from.
    """
    env_values, env_file = _from_env(environ)
    path = flags.get("config", env_file)
    values: dict[str, Any] = {}
    layers = [_from_file(path)] if path is not None else []
    for layer in [*layers, env_values, _from_flags(flags)]:
        for spellings in _ONE_SETTING:
            if any(name in layer for name in spellings):
                for name in spellings:  # the lower layers' other spelling
                    values.pop(name, None)
        values.update(layer)
    profile = values.pop("profile", "lan")
    if "name" not in values:
        values["name"] = default_name()
    return Config.for_profile(profile, **values)


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``MESH_*`` variable that sets nothing (a misspelt
    setting, most likely), with the nearest real name.

    A warning, not a start-up error as in the TOML file: the environment is
    shared with everything else on the host, and Kubernetes alone injects
    ``MESH_API_SERVICE_HOST`` and friends for our own example Services
    (those are recognised and not reported).
    """
    known = {
        _ENV_PREFIX + name.upper() for name in _field_types() if name != "tags"
    } | _ENV_OTHER
    out = []
    for var in sorted(environ):
        if (
            not var.startswith(_ENV_PREFIX)
            or var in known
            or _K8S_SERVICE_LINK.fullmatch(var)
        ):
            continue
        # (on the part after MESH_: the shared prefix would make anything close)
        near = difflib.get_close_matches(
            var[len(_ENV_PREFIX) :], [k[len(_ENV_PREFIX) :] for k in known], n=1
        )
        hint = f" (did you mean {_ENV_PREFIX}{near[0]}?)" if near else ""
        out.append(f"ignoring {var}: not a setting{hint}")
    return out


def _from_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flags.items():
        if key == "config":
            continue
        if key == "tag":
            out["tags"] = parse_pairs(value, "--tag")
        elif key == "join":
            out["join"] = tuple(value)
        else:
            out[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
    return out


def _from_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], str | None]:
    out: dict[str, Any] = {}
    for name in _field_types():
        if name == "tags":
            continue
        value = environ.get(_ENV_PREFIX + name.upper(), "").strip()
        if not value:
            continue
        source = _ENV_PREFIX + name.upper()
        if name == "join":
            out["join"] = tuple(x for x in _SPLIT.split(value) if x)
        else:
            out[name] = _coerce(name, value, source)
    tags = environ.get(_ENV_PREFIX + "TAG", "").strip()
    if tags:
        out["tags"] = parse_pairs(_SPLIT.split(tags), _ENV_PREFIX + "TAG")
    file = environ.get(_ENV_PREFIX + "CONFIG", "").strip() or None
    return out, file


def _from_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    known = _field_types()
    out: dict[str, Any] = {}
    for key, value in document.items():
        source = f"{path}: {key}"
        if key not in known:
            near = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"config file {path}: unknown setting {key!r}{hint}")
        if key == "join":
            if isinstance(value, str):
                value = [value]
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{source} must be a list of HOST:PORT strings")
            out["join"] = tuple(value)
        elif key == "tags":
            if isinstance(value, list):
                out["tags"] = parse_pairs(value, source)
            elif isinstance(value, dict) and all(
                isinstance(v, str) for v in value.values()
            ):
                out["tags"] = dict(value)
            else:
                raise ConfigError(f"{source} must be a table of strings")
        else:
            out[key] = _coerce(key, value, source)
    return out


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in attrs.fields(Config)}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a flag/env string or a TOML value into the field's type."""
    kind = _field_types().get(name)
    if kind is None:
        raise ConfigError(f"{source}: unknown setting {name!r}")
    if name in _ADDRESS_FIELDS:
        if not isinstance(value, str):
            raise ConfigError(f"{source} must be a HOST:PORT string, got {value!r}")
        try:
            return parse_address(value)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{source} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source} must be an integer, got {value!r}")
    if kind is float:
        number: float | None = None
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        if number is None or not math.isfinite(number):
            raise ConfigError(f"{source} must be a number, got {value!r}")
        return number
    if kind is str or kind == str | None:
        if not isinstance(value, str):
            raise ConfigError(f"{source} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: setting {name!r} cannot be set here")

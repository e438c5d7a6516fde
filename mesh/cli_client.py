"""The client commands of ``mesh``: ``mesh members``, ``mesh routes
list|get|put|delete|watch``, ``mesh leave``, ``mesh keyring ...``: calls to a
running agent's API through :mod:`mesh.client`, printed as tables or JSON.

Separate from :mod:`mesh.cli` (the agent's own configuration: flags, ``MESH_*``
environment, TOML) because they share nothing but the ``mesh`` entry point.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .config import parse_pairs

__all__ = ["add_client_parsers"]

#: a subcommand's entry: parsed arguments in, exit status out
Command = Callable[[argparse.Namespace], int]


_CLIENT_EPILOG = """\
the agent is found at --http (else MESH_HTTP_ADDR, else MESH_HTTP as the agent
reads it, with a wildcard host on loopback, else 127.0.0.1:8946); an
https:// URL when it serves TLS, verified against --tls-ca (or MESH_TLS_CA)
when given, else the system's trust store. --api-token (or MESH_API_TOKEN) is
sent as Authorization: Bearer. Errors are one line on stderr; the exit status
is 2 for a usage error (a flag or argument the parser refuses) and 1 for any
other.
"""


def _add_sync_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sync-timeout",
        type=float,
        metavar="S",
        default=None,
        help="wait up to S seconds for every member to acknowledge",
    )


def add_client_parsers(subparsers: Any) -> None:
    """``mesh members``, ``mesh routes ...``, ``mesh leave``, ``mesh keyring ...``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--http",
        metavar="ADDR",
        default=None,
        help=(
            "agent API: HOST:PORT or URL (default: MESH_HTTP_ADDR, else the "
            "agent's MESH_HTTP, else 127.0.0.1:8946)"
        ),
    )
    common.add_argument(
        "--api-token",
        metavar="TOKEN",
        default=None,
        help="API token (default: MESH_API_TOKEN)",
    )
    common.add_argument(
        "--tls-ca",
        metavar="PEM",
        default=None,
        help="CA bundle to verify an https:// agent against (default: MESH_TLS_CA, "
        "the variable the agent reads for its own --tls-ca, so the CA the mesh "
        "trusts is trusted here too; else the system's trust store)",
    )
    common.add_argument(
        "--json", action="store_true", help="print JSON (for scripts), not a table"
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per call (default 10; 30 for keyring install, use, remove)",
    )

    def add(parent: Any, name: str, help: str, func: Command) -> Any:
        p = parent.add_parser(
            name,
            parents=[common],
            help=help,
            description=help[:1].upper() + help[1:] + ".",
            epilog=_CLIENT_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    add(subparsers, "members", "list the members this agent knows", _cmd_members)
    add(subparsers, "leave", "ask the agent to leave the mesh and exit", _cmd_leave)

    routes = subparsers.add_parser(
        "routes", help="read, write and watch the route table"
    )
    verbs = routes.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = add(verbs, "list", "list live routes", _cmd_routes_list)
    p.add_argument("--prefix", default="", help="only keys starting with this")
    p = add(verbs, "get", "show one route", _cmd_routes_get)
    p.add_argument("key")
    p = add(verbs, "put", "write a route (replicated to every member)", _cmd_routes_put)
    p.add_argument("key")
    p.add_argument("target")
    p.add_argument(
        "--meta", metavar="KEY=VALUE", action="append", default=[], help="repeatable"
    )
    p.add_argument("--revision", type=int, default=None, help="client revision")
    _add_sync_timeout(p)
    p = add(verbs, "delete", "delete a route", _cmd_routes_delete)
    p.add_argument("key")
    p.add_argument("--revision", type=int, default=None, help="client revision")
    _add_sync_timeout(p)
    p = add(verbs, "watch", "print route changes as they happen", _cmd_routes_watch)
    p.add_argument("--prefix", default="", help="only keys starting with this")
    p.add_argument(
        "--index", type=int, default=None, help="resume after this change index"
    )

    keyring = subparsers.add_parser("keyring", help="manage the mesh's gossip keys")
    ops = keyring.add_subparsers(dest="verb", metavar="VERB", required=True)
    add(ops, "list", "list installed keys (fingerprints)", _cmd_keyring_list)
    for op, text in (
        ("install", "install a key on every member"),
        ("use", "make an installed key the primary on every member"),
        ("remove", "remove a key from every member"),
    ):
        p = add(ops, op, text, _cmd_keyring_op)
        p.add_argument("key", help="base64 key (see `mesh keygen`)")
        # The agent gives each member up to its tcp_timeout (10 s with lan):
        # a shorter wait here would lose the per-member results exactly when
        # one does not answer.
        # (not set_defaults(timeout=...): the parent's --timeout action is
        # shared by every subcommand, so that would change them all)
        p.set_defaults(default_timeout=30.0)


def _client(args: argparse.Namespace) -> Any:
    """The client for ``args``; a bad ``--http``, ``--timeout`` or
    ``--sync-timeout`` is a ClientError naming it, before anything is sent."""
    from .client import (
        DEFAULT_HTTP,
        MAX_TIMEOUT,
        Client,
        ClientError,
        base_url,
        timeout_ok,
    )

    if args.http is not None:
        http, source = args.http, "--http"
    elif os.environ.get("MESH_HTTP_ADDR", "").strip():
        http, source = os.environ["MESH_HTTP_ADDR"], "MESH_HTTP_ADDR"
    elif os.environ.get("MESH_HTTP", "").strip():
        # the agent's own setting, from the same environment (a sourced
        # mesh.env, `docker exec` into the agent's container): its address
        http, source = _dialable(os.environ["MESH_HTTP"]), "MESH_HTTP"
    else:
        http, source = DEFAULT_HTTP, "the default"
    try:
        url = base_url(http)
    except ClientError as exc:
        raise ClientError(f"{source}: {exc}") from None
    if args.timeout is None:
        args.timeout = getattr(args, "default_timeout", 10.0)
    for flag, seconds in (
        ("--timeout", args.timeout),
        ("--sync-timeout", getattr(args, "sync_timeout", None)),
    ):
        if seconds is not None and not timeout_ok(seconds):
            raise ClientError(
                f"{flag}: must be a number of seconds in (0, {MAX_TIMEOUT:g}], "
                f"got {seconds:g}"
            )
    token = args.api_token or os.environ.get("MESH_API_TOKEN") or None
    verify: str | bool = True
    if args.tls_ca is not None:
        ca, ca_source = args.tls_ca, "--tls-ca"
    else:
        ca, ca_source = os.environ.get("MESH_TLS_CA") or "", "MESH_TLS_CA"
    if ca:
        if not os.path.isfile(ca):
            raise ClientError(f"{ca_source}: no such file: {ca!r}")
        verify = ca
    return Client(url, token=token, timeout=args.timeout, verify=verify)


def _dialable(listen: str) -> str:
    """An agent's listen address (``MESH_HTTP``, parsed as the agent parses
    it) as one to call: a wildcard host is reached on loopback. Anything the
    agent would refuse is returned as it is, for :func:`base_url` to name."""
    import ipaddress

    from .config import parse_address
    from .errors import ConfigError
    from .messages import format_address, is_ip_literal

    try:
        host, port = parse_address(listen)
    except ConfigError:
        return listen
    if is_ip_literal(host):
        ip = ipaddress.ip_address(host)
        if ip.is_unspecified:
            host = "::1" if ip.version == 6 else "127.0.0.1"
    return format_address((host, port))


def _client_command(run: Callable[[Any, argparse.Namespace], None]) -> Command:
    """Wrap a client command: an error is one line on stderr, exit 1 (with
    ``--json``, the agent's JSON error body, if any, also goes to stdout)."""

    def command(args: argparse.Namespace) -> int:
        from .client import LIBRARY_ERRORS, ClientError

        try:
            with _client(args) as client:
                run(client, args)
        except ClientError as exc:
            if getattr(args, "json", False) and exc.document is not None:
                # the agent's error document for scripts (a 409's current route)
                _print_json(exc.document)
            return _fail(str(exc))
        # mesh.client turns these into ClientError; should one slip through
        # (bad input the client did not foresee), it is still one line.
        except LIBRARY_ERRORS as exc:
            return _fail(f"{type(exc).__name__}: {exc}")
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # `mesh routes watch | head`
            return 0
        return 0

    return command


def _fail(message: str) -> int:
    print(f"mesh: error: {message}", file=sys.stderr)
    return 1


def _print_json(document: Any) -> None:
    import json

    print(json.dumps(document, indent=2, sort_keys=True))


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _tags_text(tags: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


@_client_command
def _cmd_members(client: Any, args: argparse.Namespace) -> None:
    members = client.members()
    if args.json:  # the API's answer, as every --json prints (audit 7)
        _print_json({"members": members})
        return
    _print_table(
        ("NAME", "ADDRESS", "STATUS", "INCARNATION", "TAGS"),
        [
            (
                m["name"],
                m["addr"],
                m["status"],
                str(m["incarnation"]),
                _tags_text(m.get("tags") or {}),
            )
            for m in members
        ],
    )


@_client_command
def _cmd_leave(client: Any, args: argparse.Namespace) -> None:
    document = client.leave()
    if args.json:
        _print_json(document)
    else:
        print(f"agent at {client.url} is leaving the mesh")


@_client_command
def _cmd_routes_list(client: Any, args: argparse.Namespace) -> None:
    document = client.routes(args.prefix)
    if args.json:
        _print_json(document)
        return
    _print_table(
        ("KEY", "TARGET", "REVISION", "ORIGIN", "META"),
        [
            (
                r["key"],
                r["target"],
                str(r["revision"]),
                r["origin"],
                _tags_text(r.get("meta") or {}),
            )
            for r in document["routes"]
        ],
    )


@_client_command
def _cmd_routes_get(client: Any, args: argparse.Namespace) -> None:
    route = client.get_route(args.key)
    if args.json:
        _print_json(route)
        return
    for field in ("key", "target", "revision", "origin", "version"):
        print(f"{field}: {route.get(field, '')}")
    if route.get("meta"):
        print(f"meta: {_tags_text(route['meta'])}")


@_client_command
def _cmd_routes_put(client: Any, args: argparse.Namespace) -> None:
    from .client import ClientError
    from .errors import ConfigError

    try:
        meta = parse_pairs(args.meta, "--meta")
    except ConfigError as exc:  # a client error (exit 1), not the agent's (exit 2)
        raise ClientError(str(exc)) from None
    document = client.put_route(
        args.key,
        args.target,
        meta=meta,
        revision=args.revision,
        sync_timeout=args.sync_timeout,
    )
    _print_write("put", args, document)


@_client_command
def _cmd_routes_delete(client: Any, args: argparse.Namespace) -> None:
    document = client.delete_route(
        args.key, revision=args.revision, sync_timeout=args.sync_timeout
    )
    _print_write("deleted", args, document)


def _print_write(verb: str, args: argparse.Namespace, document: Any) -> None:
    """The write's outcome; with ``--sync-timeout``, exit 1 unless every member
    acknowledged it in time (as ``keyring`` does unless every member is ok):
    the write is committed either way, but a script asked for more."""
    pending = document.get("pending") or []
    if args.json:
        _print_json(document)
    else:
        print(f"{verb} {args.key} (version {document.get('version', '?')})")
        if "pending" in document:
            acked = document.get("acked", [])
            print(
                f"acked by {len(acked)} member(s); pending: {', '.join(pending) or '-'}"
            )
    if pending:
        from .client import ClientError

        raise ClientError(
            f"committed, but not acknowledged within {args.sync_timeout:g} s by "
            f"{len(pending)} member(s): {', '.join(pending)}"
        )


@_client_command
def _cmd_routes_watch(client: Any, args: argparse.Namespace) -> None:
    import json

    for event in client.watch_routes(index=args.index, prefix=args.prefix):
        if args.json:
            print(json.dumps(event, separators=(",", ":")), flush=True)
            continue
        kind, index = event.get("event"), event.get("index")
        if kind == "snapshot":
            routes = event.get("routes", [])
            print(f"[{index}] snapshot: {len(routes)} route(s)")
            for r in routes:
                print(f"[{index}] put {r['key']} -> {r['target']}")
        elif kind == "put":
            r = event["route"]
            print(f"[{index}] put {r['key']} -> {r['target']}")
        elif kind == "delete":
            print(f"[{index}] delete {event['key']}")
        else:
            continue  # heartbeats keep the connection honest; nothing to show
        sys.stdout.flush()
    # An agent ends a stream only when it leaves (an agent lost mid-stream
    # cuts it instead: an error, exit 1). Exit 0, but not in silence: a
    # human or a script's log should see why the watch stopped.
    print(
        "mesh: the agent ended the stream: it is leaving the mesh "
        "(watch another member)",
        file=sys.stderr,
    )


@_client_command
def _cmd_keyring_list(client: Any, args: argparse.Namespace) -> None:
    document = client.keyring()
    if args.json:
        _print_json(document)
        return
    _print_table(
        ("FINGERPRINT", "PRIMARY"),
        [(k["fingerprint"], "yes" if k["primary"] else "") for k in document["keys"]],
    )


@_client_command
def _cmd_keyring_op(client: Any, args: argparse.Namespace) -> None:
    document = client.keyring_op(args.verb, args.key)
    results: dict[str, str] = document.get("results", {})
    failed = {m: r for m, r in results.items() if r != "ok"}
    if args.json:  # the same exit status: a script reads both
        _print_json(document)
    else:
        print(
            f"{args.verb} {document.get('fingerprint', '?')}: "
            f"{len(results) - len(failed)}/{len(results)} member(s) ok"
        )
        for member, reason in sorted(failed.items()):
            print(f"  {member}: {reason}")
    if failed:
        from .client import ClientError

        raise ClientError(f"keyring {args.verb} failed on {len(failed)} member(s)")


# --- configuration layers ---

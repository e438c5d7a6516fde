"""msgpack bytes <-> route deltas: pushed batches, their acks, and the route row.

Why a module of its own: route batches are what every write crosses (one per
peer, and their row form is what anti-entropy carries, :mod:`mesh.codec_ae`),
and they are bounded differently from datagrams and push-pull: targets of 1024
characters of any script, rows up to the receiver's ``max_routes``. The rules
they share with the rest of the wire (version check, bounded unpack, names,
u64s, the ``DecodeError`` reasons) stay in :mod:`mesh.codec`.

Layout. A batch is ``[PROTOCOL_VERSION, sender, [row, ...]]`` with rows
``[key, target, meta, revision, hlc, origin, deleted]``; its ack is a map
``{"received": n, <outcome>: count, ...}``. Both are described at their
sections below and in docs/protocol.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Final

import msgpack

from .codec import (
    _CAP_ARRAY,
    _MSGPACK_ERRORS,
    _PACKER,
    _U64_MAX,
    PROTOCOL_VERSION,
    _bool,
    _check_version,
    _encode_tags,
    _name,
    _show,
    _u64,
    _unpack_bounded,
)
from .core.route_checks import (
    KEY_RE,
    MAX_META_ENTRIES,
    MAX_META_LEN,
    MAX_TARGET_LEN,
    ascii_metas_ok,
    ascii_targets_ok,
    keys_ok,
    validate_route_fields,
)
from .core.routes import Route, Version
from .errors import DecodeError

__all__ = [
    "MAX_ROUTES_BODY",
    "encode_routes",
    "decode_routes",
    "encode_routes_ack",
    "decode_routes_ack",
]


# --- route deltas (peer push and anti-entropy repair) ---
#
# Body: [PROTOCOL_VERSION, sender, [[key, target, meta, revision, hlc, origin,
# deleted], ...]] (+ appended fields ignored). Targets may be 1024 characters of
# any script, so string caps are in bytes: 4 per character.

MAX_ROUTES_BODY: Final = 16 * 1024 * 1024
_ROUTE_CAP_STR: Final = 4 * 1024 + 16
_key_ok = KEY_RE.fullmatch
_new_version = partial(tuple.__new__, Version)
_new_route = partial(tuple.__new__, Route)
_STR = {str}
_INT = {int}
_DICT = {dict}
_BOOL = {bool}


def route_row(r: Route) -> list[Any]:
    """One route on the wire (push batches and anti-entropy share it)."""
    return [
        r.key,
        r.target,
        _encode_tags(r.meta),
        r.version.revision,
        r.version.hlc,
        r.version.origin,
        r.deleted,
    ]


def encode_routes(sender: str, routes: Sequence[Route]) -> bytes:
    """Pack a batch of route deltas."""
    return _PACKER.pack([PROTOCOL_VERSION, sender, [route_row(r) for r in routes]])


def decode_routes(data: bytes, *, max_routes: int) -> tuple[str, list[Route]]:
    """Unpack a batch of route deltas: (sender, routes).

    Raises:
        DecodeError: bad msgpack, version or schema, a route outside the
            contract's limits, or more than ``max_routes`` rows.
    """
    document = _unpack_bounded(
        data,
        what="route batch",
        max_size=MAX_ROUTES_BODY,
        max_str_len=_ROUTE_CAP_STR,
        max_array_len=max(max_routes, _CAP_ARRAY),
    )
    top = _check_version(document, "route batch")
    if len(top) < 3:
        raise DecodeError(
            "route batch must be [version, sender, rows]", reason="schema"
        )
    sender = _name(top[1], "routes.sender")
    rows = top[2]
    if type(rows) is not list:
        raise DecodeError("routes.rows must be an array", reason="schema")
    if len(rows) > max_routes:
        raise DecodeError(
            f"route batch must hold at most {max_routes} routes, got {len(rows)}",
            reason="limit",
        )
    origins: set[str] = set()  # a batch's rows mostly share one origin
    return sender, _columns(rows, origins) or _routes(rows, origins)


def _columns(rows: list[Any], origins: set[str]) -> list[Route] | None:
    """The whole batch checked column by column, each check one pass in C
    (``map``, ``set``, ``min``/``max``, one regex over the joined keys), and
    built with ``map``: for a batch of common rows (7 fields, ASCII, live
    routes). None when any row is not one: :func:`_routes` then checks row
    by row and says what is wrong. Every replica decodes every route written
    in the mesh, and a check per row costs about as much as the rest of the
    receive. Accepts only batches whose every row :func:`_route` accepts, and
    builds the same routes (a property test holds it to that)."""
    if not rows or set(map(type, rows)) != {list} or set(map(len, rows)) != {7}:
        return None
    keys, targets, metas, revisions, hlcs, names, deleted = zip(*rows, strict=True)
    if (
        set(map(type, keys)) != _STR
        or set(map(type, targets)) != _STR
        or set(map(type, metas)) != _DICT
        or set(map(type, revisions)) != _INT
        or set(map(type, hlcs)) != _INT
        or set(map(type, names)) != _STR
        or set(map(type, deleted)) != _BOOL
        or any(deleted)  # (tombstones: row by row)
        or min(revisions) < 0
        or max(revisions) > _U64_MAX
        or min(hlcs) < 0
        or max(hlcs) > _U64_MAX
        or not ascii_targets_ok(targets)
    ):
        return None
    if not keys_ok(keys) or not ascii_metas_ok(metas):
        return None
    for name in set(names) - origins:
        try:
            origins.add(_name(name, "route.origin"))
        except DecodeError:
            return None  # (row by row, which says where)
    versions = map(_new_version, zip(revisions, hlcs, names, strict=True))
    return list(
        map(_new_route, zip(keys, targets, metas, versions, deleted, strict=True))
    )


def _routes(rows: list[Any], origins: set[str]) -> list[Route]:
    """Every row as a route: the common row (7 fields, an ASCII target and
    meta, an origin already seen in this batch) is checked inline here, and
    anything else goes to :func:`_route`, which checks it field by field and
    says what is wrong. Every replica decodes every route written in the
    mesh, and the checks by call cost as much as the rest of the receive.
    The inline test accepts a subset of what :func:`_route` accepts and
    builds the same route (a property test holds them to it)."""
    out: list[Route] = []
    append = out.append
    key_ok = _key_ok
    new = tuple.__new__
    for row in rows:
        if type(row) is list and len(row) == 7:
            key, target, meta, revision, hlc, origin, deleted = row
            if (
                type(key) is str
                and type(target) is str
                and type(meta) is dict
                and type(revision) is int
                and type(hlc) is int
                and (deleted is False or deleted is True)
                and 0 <= revision <= _U64_MAX
                and 0 <= hlc <= _U64_MAX
                and type(origin) is str  # (hashable, before the set)
                and origin in origins
                and key_ok(key) is not None
                and (deleted or 0 < len(target) <= MAX_TARGET_LEN)
                and target.isascii()
                and (not meta or _ascii_meta(meta))
            ):
                # tuple.__new__ straight: a named tuple's own __new__ is a
                # Python function, one frame per route and per version
                version = new(Version, (revision, hlc, origin))
                append(new(Route, (key, target, meta, version, deleted)))
                continue
        append(_route(row, origins))
    return out


def _ascii_meta(meta: dict[Any, Any]) -> bool:
    """Within the contract's meta limits, in ASCII (the inline check)."""
    if len(meta) > MAX_META_ENTRIES:
        return False
    for k, v in meta.items():
        if (
            type(k) is not str
            or type(v) is not str
            or len(k) > MAX_META_LEN
            or len(v) > MAX_META_LEN
            or not k.isascii()
            or not v.isascii()
        ):
            return False
    return True


def _route(row: object, origins: set[str] | None = None) -> Route:
    """One route row, checked against the contract's limits. ``origins``:
    names already checked in this batch (the regex runs once per origin)."""
    if type(row) is not list or len(row) < 7:
        raise DecodeError(
            f"route must be a 7-field array, got {_show(row)}", reason="schema"
        )
    key, target, meta, revision, hlc, origin, deleted = row[:7]
    deleted = _bool(deleted, "route.deleted")
    if type(meta) is not dict:
        raise DecodeError("route.meta must be a map", reason="schema")
    error = validate_route_fields(key, "x" if deleted else target, meta)
    if error is not None or type(target) is not str:
        raise DecodeError(
            f"route: {error or 'target must be a string'}", reason="schema"
        )
    # (type first: an unhashable origin, a list or map, must not reach the set)
    if origins is None or type(origin) is not str or origin not in origins:
        origin = _name(origin, "route.origin")
        if origins is not None:
            origins.add(origin)
    version = Version(_u64(revision, "route.revision"), _u64(hlc, "route.hlc"), origin)
    return Route(key, target, meta, version, deleted)


# --- the ack of a pushed route batch ---
#
# Body: {"received": n, <outcome>: count, ...}, a map of non-negative integers
# (outcome names: applied, stale, duplicate, invalid, full).


def encode_routes_ack(received: int, counts: Mapping[str, int]) -> bytes:
    """The ack of one pushed batch: ``{"received": n, <outcome>: count, ...}``."""
    return _PACKER.pack({"received": received, **counts})


def decode_routes_ack(data: bytes) -> dict[str, int]:
    """Parse an ack; raises :class:`DecodeError` unless it is a map of
    non-negative integers holding ``received``."""
    try:
        document = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=64,
            max_bin_len=0,
            max_array_len=0,
            max_map_len=32,
            max_ext_len=0,
        )
    except _MSGPACK_ERRORS as exc:
        raise DecodeError(f"malformed ack: {exc}", reason="malformed") from None
    if not isinstance(document, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in document.items()
    ):
        raise DecodeError("ack must be a map of counts", reason="schema")
    if "received" not in document:
        raise DecodeError("ack must hold received", reason="schema")
    return document

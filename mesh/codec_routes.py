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

Decoding takes two roads to the same routes: a batch in the common form goes
through msgspec's typed decoder (:func:`_typed`), cheap per route; any other
body, valid or not, through msgpack's bounded unpacker and :func:`_route` row
by row, which names what is wrong. A property test holds the first to accept
only what the second accepts, and to build the same routes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import compress
from operator import not_
from typing import Annotated, Any, Final

import msgpack
import msgspec

from .codec import (
    _CAP_ARRAY,
    _MSGPACK_ERRORS,
    _NAME_RE,
    _PACKER,
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
    MAX_META_ENTRIES,
    MAX_META_LEN,
    keys_ok,
    targets_ok,
    validate_route_fields,
)
from .core.routes import Route, Version
from .errors import DecodeError

__all__ = [
    "META_TYPE",
    "MAX_ROUTES_BODY",
    "U64_TYPE",
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
    """Pack a batch of route deltas: rows of :func:`route_row`, built as
    tuples in one comprehension (msgpack packs a tuple as it packs a list).
    Half the time of a ``route_row`` call per route: every batch call's
    routes are packed once for its peers."""
    rows = [
        (
            r.key,
            r.target,
            _encode_tags(r.meta),
            (v := r.version).revision,
            v.hlc,
            v.origin,
            r.deleted,
        )
        for r in routes
    ]
    return _PACKER.pack([PROTOCOL_VERSION, sender, rows])


def decode_routes(data: bytes, *, max_routes: int) -> tuple[str, list[Route]]:
    """Unpack a batch of route deltas: (sender, routes).

    Raises:
        DecodeError: bad msgpack, version or schema, a route outside the
            contract's limits, or more than ``max_routes`` rows.
    """
    if len(data) > MAX_ROUTES_BODY:
        raise DecodeError(
            f"route batch must be <= {MAX_ROUTES_BODY} bytes, got {len(data)}",
            reason="too_large",
        )
    typed = _typed(data, max_routes)
    if typed is not None:
        return typed
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
    return sender, [_route(row, origins) for row in rows]


# The common batch (three fields, rows of seven) as msgspec decodes it with
# its checks in C: types (strings from msgpack strings, integers that are
# not bools, maps of strings), the meta limits in characters, and u64s
# (msgpack has no integer above 2**64 - 1, so ">= 0" is the whole range).
#: a u64 as msgspec checks it (also the API's revision, from JSON)
U64_TYPE = Annotated[int, msgspec.Meta(ge=0)]
_META_TEXT = Annotated[str, msgspec.Meta(max_length=MAX_META_LEN)]
#: the contract's meta as msgspec checks it (also the API's, from JSON)
META_TYPE = Annotated[
    dict[_META_TEXT, _META_TEXT], msgspec.Meta(max_length=MAX_META_ENTRIES)
]
_Row = tuple[str, str, META_TYPE, U64_TYPE, U64_TYPE, str, bool]
_TYPED = msgspec.msgpack.Decoder(tuple[int, str, list[_Row]])


def _typed(data: bytes, max_routes: int) -> tuple[str, list[Route]] | None:
    """A batch in the common form, checked and built without a Python step
    per route: msgspec decodes it against :data:`_Row` (the checks of types
    and meta limits, in C), then keys, targets and names are checked column
    by column and the routes built with ``map``. None for any other body,
    valid or not: the unpacker and :func:`_route` then decide, and say what
    is wrong. Every replica decodes every route written in the mesh; this
    took a receiver's decode from 2.9 to ~1 us per route (msgpack's unpack
    and a column check before). Accepts only what :func:`_route` accepts,
    and builds the same routes (a property test holds it to that)."""
    try:
        version, sender, rows = _TYPED.decode(data)
    except msgspec.DecodeError:  # (ValidationError is one)
        return None
    if version != PROTOCOL_VERSION or not rows or len(rows) > max_routes:
        return None
    keys, targets, metas, revisions, hlcs, names, deleted = zip(*rows, strict=True)
    # a tombstone's target is not checked; every live one's is
    live = targets if not any(deleted) else compress(targets, map(not_, deleted))
    if (
        not targets_ok(list(live))
        or not keys_ok(keys)
        or _NAME_RE.fullmatch(sender) is None
    ):
        return None
    for name in set(names):
        if _NAME_RE.fullmatch(name) is None:
            return None
    versions = map(Version, revisions, hlcs, names)
    return sender, list(map(Route, keys, targets, metas, versions, deleted))


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

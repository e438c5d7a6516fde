"""msgpack bytes <-> anti-entropy messages (mesh/core/antientropy.py).

Layout. Every body is ``[PROTOCOL_VERSION, type, field, ...]``; fields appended
by newer versions are ignored. Routes use the push batches' row form
(:func:`mesh.codec_routes.route_row`); coded symbols travel packed, 16 bytes each
(little-endian sum u64, checksum u32, count i32), and wanted elements as packed
u64s, because a digest reply is mostly these and msgpack would add a third.

The digest's scheme (:data:`mesh.core.digest.SCHEME`) is in the message types
of a round's first exchange: scheme 2's ``open`` is type 5 and its ``symbols``
type 14. Scheme 1's (types 1 and 11, until session 15) are refused by name
(``bad_version``), so members of different schemes fail the round, counted on
both sides, instead of peeling each other's symbols into garbage; pages of a
full transfer (``chunk``) carry no digest and pass between both.

Every count is checked against the receiver's own bounds before anything is
built, and every failure is a :class:`~mesh.errors.DecodeError` with the
codec's reasons (``too_large``, ``malformed``, ``bad_version``, ``schema``,
``limit``): a hostile digest is refused and counted, never half-applied.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import attrs

from .codec import (
    _PACKER,
    PROTOCOL_VERSION,
    _bool,
    _check_version,
    _name,
    _show,
    _u64,
    _unpack_bounded,
)
from .codec_routes import _route, route_row
from .core.antientropy import (
    AeChunk,
    AeChunkReply,
    AeMore,
    AeOpen,
    AeRepair,
    AeRepaired,
    AeReply,
    AeRequest,
    AeSymbols,
    Drop,
    SymbolsStatus,
)
from .core.digest import SCHEME, Symbol
from .core.routes import Route, Version
from .errors import DecodeError

__all__ = [
    "MAX_AE_BODY",
    "AeLimits",
    "decode_ae_reply",
    "decode_ae_request",
    "encode_ae_reply",
    "encode_ae_request",
]

#: largest anti-entropy body either way (a repair of 2048 large routes fits)
MAX_AE_BODY: Final = 16 * 1024 * 1024
_SYMBOL: Final = struct.Struct("<QIi")
_ROUTE_CAP_STR: Final = 4 * 1024 + 16

_OPEN, _MORE, _REPAIR, _CHUNK = 5, 2, 3, 4
_SYMBOLS, _REPAIRED, _CHUNK_REPLY = 14, 12, 13
#: scheme 1's open and symbols (see the module docstring)
_OPEN_SCHEME1, _SYMBOLS_SCHEME1 = 1, 11
_SCHEME1 = (
    "digest scheme 1 (BLAKE2b walks, XOR symbols); this member speaks scheme "
    f"{SCHEME}: upgrade the older member"
)


@attrs.frozen
class AeLimits:
    """The receiver's bounds (from its Config): anything larger is refused."""

    max_symbols: int
    max_routes: int  # routes, wanted elements or drops in one body

    @classmethod
    def from_config(cls, config: Any) -> AeLimits:
        return cls(
            max_symbols=config.antientropy_max_symbols,
            max_routes=max(
                config.antientropy_repair_max, config.antientropy_chunk_routes
            ),
        )


# --- encoding ---


def _symbols_blob(symbols: tuple[Symbol, ...]) -> bytes:
    pack = _SYMBOL.pack
    return b"".join(pack(s.total, s.check, s.count) for s in symbols)


def _drops(drops: tuple[Drop, ...]) -> list[list[Any]]:
    return [[k, v.revision, v.hlc, v.origin] for k, v in drops]


def encode_ae_request(request: AeRequest) -> bytes:
    if isinstance(request, AeOpen):
        s = request.summary
        body: list[Any] = [
            _OPEN,
            request.sender,
            s.count,
            s.total,
            s.check,
            request.size,
        ]
    elif isinstance(request, AeMore):
        body = [_MORE, request.sender, request.index, request.start, request.stop]
    elif isinstance(request, AeRepair):
        body = [
            _REPAIR,
            request.sender,
            [route_row(r) for r in request.routes],
            struct.pack(f"<{len(request.want)}Q", *request.want),
            _drops(request.drops),
        ]
    else:
        body = [_CHUNK, request.sender, request.after, request.limit]
    return _PACKER.pack([PROTOCOL_VERSION, *body])


def encode_ae_reply(reply: AeReply) -> bytes:
    if isinstance(reply, AeSymbols):
        body: list[Any] = [
            _SYMBOLS,
            reply.status.value,
            reply.index,
            reply.start,
            reply.size,
            _symbols_blob(reply.symbols),
        ]
    elif isinstance(reply, AeRepaired):
        body = [_REPAIRED, [route_row(r) for r in reply.routes], _drops(reply.drops)]
    else:
        body = [
            _CHUNK_REPLY,
            [route_row(r) for r in reply.routes],
            reply.more,
            reply.size,
        ]
    return _PACKER.pack([PROTOCOL_VERSION, *body])


# --- decoding ---


def _unpack(data: bytes, limits: AeLimits) -> list[Any]:
    document = _unpack_bounded(
        data,
        what="anti-entropy body",
        max_size=MAX_AE_BODY,
        max_str_len=_ROUTE_CAP_STR,
        max_array_len=max(limits.max_routes, 256),
        # symbols and wanted elements travel packed: room for both bounds
        max_bin_len=32 * max(limits.max_symbols, limits.max_routes),
    )
    top = _check_version(document, "anti-entropy body")
    if len(top) < 2 or type(top[1]) is not int:
        raise DecodeError(
            "anti-entropy body must be [version, type, ...]", reason="schema"
        )
    return top


def _fields(top: list[Any], n: int, what: str) -> list[Any]:
    if len(top) < 2 + n:
        raise DecodeError(f"{what} must have {n} fields", reason="schema")
    return top[2 : 2 + n]


def _int(value: object, where: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise DecodeError(
            f"{where} must be an integer in {lo}..{hi}, got {_show(value)}",
            reason="schema",
        )
    return value


def _count(items: object, where: str, limit: int) -> list[Any]:
    if type(items) is not list:
        raise DecodeError(f"{where} must be an array", reason="schema")
    if len(items) > limit:
        raise DecodeError(
            f"{where} must hold at most {limit} items, got {len(items)}",
            reason="limit",
        )
    return items


def _routes(rows: object, where: str, limit: int) -> tuple[Route, ...]:
    return tuple(_route(row) for row in _count(rows, where, limit))


def _read_drops(rows: object, limit: int) -> tuple[Drop, ...]:
    out = []
    for row in _count(rows, "drops", limit):
        if type(row) is not list or len(row) < 4:
            raise DecodeError(
                f"drop must be a 4-field array, got {_show(row)}", reason="schema"
            )
        key = row[0]
        if type(key) is not str or not key:
            raise DecodeError("drop.key must be a string", reason="schema")
        version = Version(
            _u64(row[1], "drop.revision"),
            _u64(row[2], "drop.hlc"),
            _name(row[3], "drop.origin"),
        )
        out.append((key, version))
    return tuple(out)


def _blob(value: object, where: str, size: int, limit: int) -> bytes:
    if type(value) is not bytes or len(value) % size:
        raise DecodeError(f"{where} must be packed {size}-byte items", reason="schema")
    if len(value) // size > limit:
        raise DecodeError(
            f"{where} must hold at most {limit} items, got {len(value) // size}",
            reason="limit",
        )
    return value


def decode_ae_request(data: bytes, limits: AeLimits) -> AeRequest:
    """Unpack a request; raises DecodeError (see the module docstring)."""
    top = _unpack(data, limits)
    kind = top[1]
    big = limits.max_symbols * 4
    if kind == _OPEN:
        sender, count, total, check, size = _fields(top, 5, "ae open")
        summary = Symbol(
            _int(count, "open.count", -(2**31), 2**31 - 1),
            _u64(total, "open.sum"),
            _int(check, "open.check", 0, 2**32 - 1),
        )
        return AeOpen(_name(sender, "ae.sender"), summary, _u64(size, "open.size"))
    if kind == _OPEN_SCHEME1:
        raise DecodeError(f"anti-entropy open of {_SCHEME1}", reason="bad_version")
    if kind == _MORE:
        sender, index, start, stop = _fields(top, 4, "ae more")
        start = _int(start, "more.start", 0, big)
        stop = _int(stop, "more.stop", start, big)
        return AeMore(
            _name(sender, "ae.sender"), _u64(index, "more.index"), start, stop
        )
    if kind == _REPAIR:
        sender, rows, want, drops = _fields(top, 4, "ae repair")
        wanted = _blob(want, "repair.want", 8, limits.max_routes)
        return AeRepair(
            _name(sender, "ae.sender"),
            _routes(rows, "repair.routes", limits.max_routes),
            struct.unpack(f"<{len(wanted) // 8}Q", wanted),
            _read_drops(drops, limits.max_routes),
        )
    if kind == _CHUNK:
        sender, after, limit = _fields(top, 3, "ae chunk")
        if type(after) is not str or len(after) > 256:
            raise DecodeError("chunk.after must be a key or empty", reason="schema")
        return AeChunk(
            _name(sender, "ae.sender"), after, _int(limit, "chunk.limit", 1, 2**31)
        )
    raise DecodeError(
        f"unknown anti-entropy request type {_show(kind)}", reason="schema"
    )


def decode_ae_reply(data: bytes, limits: AeLimits) -> AeReply:
    """Unpack a reply; raises DecodeError (see the module docstring)."""
    top = _unpack(data, limits)
    kind = top[1]
    if kind == _SYMBOLS:
        status, index, start, size, blob = _fields(top, 5, "ae symbols")
        try:
            state = SymbolsStatus(status)
        except ValueError:
            raise DecodeError(
                f"unknown symbols status {_show(status)}", reason="schema"
            ) from None
        raw = _blob(blob, "symbols", _SYMBOL.size, limits.max_symbols)
        symbols = tuple(
            Symbol(count, total, check)
            for total, check, count in _SYMBOL.iter_unpack(raw)
        )
        return AeSymbols(
            state,
            _u64(index, "symbols.index"),
            _int(start, "symbols.start", 0, limits.max_symbols),
            _u64(size, "symbols.size"),
            symbols,
        )
    if kind == _SYMBOLS_SCHEME1:
        raise DecodeError(f"anti-entropy symbols of {_SCHEME1}", reason="bad_version")
    if kind == _REPAIRED:
        rows, drops = _fields(top, 2, "ae repaired")
        return AeRepaired(
            _routes(rows, "repaired.routes", limits.max_routes),
            _read_drops(drops, limits.max_routes),
        )
    if kind == _CHUNK_REPLY:
        rows, more, size = _fields(top, 3, "ae chunk reply")
        return AeChunkReply(
            _routes(rows, "chunk.routes", limits.max_routes),
            _bool(more, "chunk.more"),
            _u64(size, "chunk.size"),
        )
    raise DecodeError(f"unknown anti-entropy reply type {_show(kind)}", reason="schema")

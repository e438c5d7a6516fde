"""msgpack bytes <-> wire messages: datagrams, push-pull, and the shared rules.

Route batches and their acks (:mod:`mesh.codec_routes`) and anti-entropy bodies
(:mod:`mesh.codec_ae`) have modules of their own built on the helpers here
(version check, bounded unpack, field kinds); these three are the only code that
knows the byte layout.

Theory of operation
-------------------
Layout. A UDP datagram is one msgpack array ``[PROTOCOL_VERSION, [msg, ...]]`` and
each message is ``[type_id, field, field, ...]``, fields in the order of the attrs
class in :mod:`mesh.messages`: an address is ``[host, port]``, a ``MemberStatus``
its string value, tags a str -> str map. A push-pull body (TCP) is
``[PROTOCOL_VERSION, join, [row, ...]]`` with rows
``[name, [host, port], incarnation, status, tags]``. One table (``_SPECS``) says,
per type, which attributes go on the wire and how each is checked; encode and
decode both read it, so they cannot drift apart.

Versioning. The version number changes only when an old node would misread a new
packet, and then the whole packet is refused (``bad_version``) instead of guessed
at. Everything else evolves without it: a new message type takes a new id
(``MessageType`` is append-only) and old nodes skip and count it; a new field is
appended, and old nodes ignore fields past the ones they know. Fields are never
removed or reordered and every field is always sent, so a missing one is an error.

Limits. Decoding is the one place a stranger's bytes reach us, so it must be cheap
and may only raise :class:`~mesh.errors.DecodeError`, whose ``reason`` is a stable
metric label:

- ``too_large``: more bytes than a datagram (65507) or a push-pull body (16 MiB);
- ``malformed``: not one complete msgpack value (bad header, bad UTF-8, truncated,
  trailing bytes, nesting past msgpack's 1024 levels), or a value over the
  unpacker's caps below;
- ``bad_version``: not an array that starts with ``PROTOCOL_VERSION``;
- ``schema``: wrong shape or type (bools are not ints), a value out of its range
  (u64, port, name syntax, host length), or PUSH_PULL's id inside a datagram;
- ``limit``: well formed but over a protocol bound: messages per packet, members
  per push-pull, tags per map, tag key or value length.

A packet is all or nothing: one invalid message rejects it, so a peer's garbage
never half-applies. The unpacker's own caps (``_CAP_*``) sit well above the largest
valid value (4x for strings, maps and the message list), so a near miss gets its
precise ``limit``/``schema`` label while a wild length header is refused before
anything is allocated. Ext types are refused outright; bin values
are allowed up to a small cap only so that a future appended bytes field does not
break old nodes. Push-pull bodies are read row by row with a streaming unpacker, so
the member count is checked before any row is built.

Encoding trusts its input: messages come from the core, which builds them from
decoded or validated values. It raises :class:`~mesh.errors.LocalProtocolError`
only for a result that could never be sent (over the datagram or body size).
"""

from __future__ import annotations

import operator
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgpack

from .errors import DecodeError, LocalProtocolError
from .messages import (
    Ack,
    Alive,
    Dead,
    MemberState,
    MemberStatus,
    Message,
    MessageType,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
)

__all__ = [
    "PROTOCOL_VERSION",
    "PACKET_OVERHEAD",
    "MAX_PACKET_SIZE",
    "MAX_PUSH_PULL_SIZE",
    "MAX_TAGS",
    "MAX_TAG_KEY_LEN",
    "MAX_TAG_VALUE_LEN",
    "encode_packet",
    "decode_packet",
    "encoded_size",
    "encoded_tags_size",
    "encode_push_pull",
    "decode_push_pull",
]

PROTOCOL_VERSION: Final = 1

#: fixarray(2) + positive fixint version + array16 header of the message list.
#: array16 suffices: a message is at least 2 bytes, so a datagram holds < 65536.
PACKET_OVERHEAD: Final = 5

#: largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP header bytes)
MAX_PACKET_SIZE: Final = 65_507
#: largest push-pull body we read: 10k members with full tag sets fit comfortably
MAX_PUSH_PULL_SIZE: Final = 16 * 1024 * 1024

MAX_TAGS: Final = 64
MAX_TAG_KEY_LEN: Final = 64
MAX_TAG_VALUE_LEN: Final = 512

_U64_MAX: Final = 2**64 - 1
_MAX_HOST_LEN: Final = 255  # a DNS name's limit; hosts are IP literals in practice

# Unpacker caps: 4x the largest valid value (see "Limits" above).
_CAP_STR: Final = 4 * MAX_TAG_VALUE_LEN
_CAP_MAP: Final = 4 * MAX_TAGS
_CAP_ARRAY: Final = 256  # message fields, row fields, addresses
_CAP_BIN: Final = 512

# Every exception msgpack raises on bad input. Most subclass ValueError; OutOfData
# does not, and listing the rest says what we expect.
_MSGPACK_ERRORS: Final = (
    msgpack.ExtraData,
    msgpack.FormatError,
    msgpack.StackError,
    msgpack.OutOfData,
    UnicodeDecodeError,
    ValueError,
)

# First bytes of msgpack array headers: fixarray, array16, array32.
_ARRAY_HEADERS: Final = frozenset((*range(0x90, 0xA0), 0xDC, 0xDD))

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_STATUS_BY_VALUE: Final = {status.value: status for status in MemberStatus}

# A shared packer is ~3x faster than packb, which builds one per call. Safe: pack()
# runs in C without calling back into Python, and resets its buffer on error.
_PACKER: Final = msgpack.Packer(use_bin_type=True)

# Hostile values can nest 1000 deep, where repr() raises RecursionError.
_REPR = reprlib.Repr()
_REPR.maxstring = 40
_REPR.maxother = 40


def _show(value: object) -> str:
    return _REPR.repr(value)


# --- field kinds: how one attribute is checked on decode and shaped on encode ---

_Decode = Callable[[object, str], Any]
_Encode = Callable[[Any], object]
#: (decode, encode); encode None means msgpack packs the attribute as it is
_Kind = tuple[_Decode, _Encode | None]


def _u64(value: object, where: str) -> int:
    if type(value) is int and 0 <= value <= _U64_MAX:
        return value
    raise DecodeError(
        f"{where} must be an integer in 0..2**64-1, got {_show(value)}",
        reason="schema",
    )


def _name(value: object, where: str) -> str:
    if type(value) is str and _NAME_RE.fullmatch(value) is not None:
        return value
    raise DecodeError(
        f"{where} must be a name matching {_NAME_RE.pattern}, got {_show(value)}",
        reason="schema",
    )


def _bool(value: object, where: str) -> bool:
    if type(value) is bool:
        return value
    raise DecodeError(f"{where} must be a bool, got {_show(value)}", reason="schema")


def _address(value: object, where: str) -> tuple[str, int]:
    if type(value) is not list or len(value) != 2:
        raise DecodeError(
            f"{where} must be [host, port], got {_show(value)}", reason="schema"
        )
    host, port = value
    if type(host) is not str or not 1 <= len(host) <= _MAX_HOST_LEN:
        raise DecodeError(
            f"{where} host must be a string of 1..{_MAX_HOST_LEN} characters, "
            f"got {_show(host)}",
            reason="schema",
        )
    if type(port) is not int or not 0 <= port <= 65535:
        raise DecodeError(
            f"{where} port must be an integer in 0..65535, got {_show(port)}",
            reason="schema",
        )
    return host, port


def _tags(value: object, where: str) -> dict[str, str]:
    if type(value) is not dict:
        raise DecodeError(f"{where} must be a map, got {_show(value)}", reason="schema")
    if len(value) > MAX_TAGS:
        raise DecodeError(
            f"{where} must have at most {MAX_TAGS} entries, got {len(value)}",
            reason="limit",
        )
    for key, text in value.items():
        if type(key) is not str or type(text) is not str:
            raise DecodeError(
                f"{where} must map strings to strings, got {_show(key)}: {_show(text)}",
                reason="schema",
            )
        if len(key) > MAX_TAG_KEY_LEN or len(text) > MAX_TAG_VALUE_LEN:
            raise DecodeError(
                f"{where} keys must be <= {MAX_TAG_KEY_LEN} and values <= "
                f"{MAX_TAG_VALUE_LEN} characters, got {len(key)} and {len(text)}",
                reason="limit",
            )
    return value


def _encode_tags(tags: Mapping[str, str]) -> dict[str, str]:
    # msgpack packs dicts only, not arbitrary Mappings
    return tags if type(tags) is dict else dict(tags)


def _status(value: object, where: str) -> MemberStatus:
    status = _STATUS_BY_VALUE.get(value) if type(value) is str else None
    if status is None:
        raise DecodeError(
            f"{where} must be one of {', '.join(_STATUS_BY_VALUE)}, got {_show(value)}",
            reason="schema",
        )
    return status


def _encode_status(status: MemberStatus) -> str:
    return status.value


# Address tuples need no encoder: msgpack packs tuples as arrays.
_U64: Final[_Kind] = (_u64, None)
_NAME: Final[_Kind] = (_name, None)
_BOOL: Final[_Kind] = (_bool, None)
_ADDRESS: Final[_Kind] = (_address, None)
_TAGS: Final[_Kind] = (_tags, _encode_tags)
_STATUS: Final[_Kind] = (_status, _encode_status)


class _Spec:
    """The wire form of one attrs class: attribute order and kind of each field."""

    __slots__ = ("cls", "decoders", "encoders", "getter", "label", "names", "prefix")

    def __init__(
        self, type_id: MessageType | None, cls: type[Any], *fields: tuple[str, _Kind]
    ) -> None:
        self.cls = cls
        self.label = type_id.name.lower() if type_id is not None else "member"
        self.prefix: tuple[int, ...] = () if type_id is None else (int(type_id),)
        self.names = names = tuple(name for name, _ in fields)
        getter = operator.attrgetter(*names)
        # attrgetter of one name returns the bare value, not a 1-tuple
        self.getter: Callable[[Any], tuple[Any, ...]] = (
            getter if len(names) > 1 else lambda obj: (getter(obj),)
        )
        self.encoders = tuple(
            (len(self.prefix) + index, encode)
            for index, (_, (_, encode)) in enumerate(fields)
            if encode is not None
        )
        self.decoders = tuple(
            (decode, f"{self.label}.{name}") for name, (decode, _) in fields
        )

    def to_wire(self, obj: Any) -> list[Any]:
        wire = [*self.prefix, *self.getter(obj)]
        for index, encode in self.encoders:
            wire[index] = encode(wire[index])
        return wire

    def from_wire(self, wire: list[Any], start: int) -> Any:
        """Build the object from ``wire[start:]``; trailing fields are ignored."""
        decoders = self.decoders
        if len(wire) - start < len(decoders):
            raise DecodeError(
                f"{self.label} needs {len(decoders)} fields, got {len(wire) - start}",
                reason="schema",
            )
        # a plain loop: ~2x faster here than a comprehension over zip()
        args = []
        index = start
        for decode, where in decoders:
            args.append(decode(wire[index], where))
            index += 1
        return self.cls(*args)


# The wire layout. Append-only, like MessageType: add fields at the end.
_SPECS: Final = (
    _Spec(MessageType.PING, Ping, ("seq", _U64), ("target", _NAME), ("source", _NAME)),
    _Spec(
        MessageType.PING_REQ,
        PingReq,
        ("seq", _U64),
        ("target", _NAME),
        ("target_addr", _ADDRESS),
        ("source", _NAME),
        ("nack", _BOOL),
    ),
    _Spec(MessageType.ACK, Ack, ("seq", _U64)),
    _Spec(MessageType.NACK, Nack, ("seq", _U64)),
    _Spec(
        MessageType.ALIVE,
        Alive,
        ("incarnation", _U64),
        ("name", _NAME),
        ("addr", _ADDRESS),
        ("tags", _TAGS),
    ),
    _Spec(
        MessageType.SUSPECT,
        Suspect,
        ("incarnation", _U64),
        ("name", _NAME),
        ("sender", _NAME),
    ),
    _Spec(
        MessageType.DEAD,
        Dead,
        ("incarnation", _U64),
        ("name", _NAME),
        ("sender", _NAME),
    ),
)
_MEMBER_SPEC: Final = _Spec(
    None,
    MemberState,
    ("name", _NAME),
    ("addr", _ADDRESS),
    ("incarnation", _U64),
    ("status", _STATUS),
    ("tags", _TAGS),
)
_SPEC_BY_CLASS: Final = {spec.cls: spec for spec in _SPECS}
_SPEC_BY_TYPE_ID: Final = {spec.prefix[0]: spec for spec in _SPECS}
# known ids that are not datagram messages (PUSH_PULL travels over TCP)
_NOT_IN_DATAGRAMS: Final = frozenset(int(t) for t in MessageType) - set(
    _SPEC_BY_TYPE_ID
)


def _to_wire(message: Message) -> list[Any]:
    try:
        spec = _SPEC_BY_CLASS[type(message)]
    except KeyError:
        raise LocalProtocolError(
            f"not a datagram message: {type(message).__name__}"
        ) from None
    return spec.to_wire(message)


def _check_version(document: object, what: str) -> list[Any]:
    if type(document) is not list or not document:
        raise _not_versioned(what, document)
    if type(document[0]) is not int or document[0] != PROTOCOL_VERSION:
        raise _bad_version(what, document[0])
    return document


def _not_versioned(what: str, document: object) -> DecodeError:
    return DecodeError(
        f"{what} must be an array starting with the protocol version, "
        f"got {_show(document)}",
        reason="bad_version",
    )


def _bad_version(what: str, version: object) -> DecodeError:
    return DecodeError(
        f"{what} protocol version must be {PROTOCOL_VERSION}, got {_show(version)}",
        reason="bad_version",
    )


def _malformed(exc: Exception) -> DecodeError:
    return DecodeError(
        f"invalid msgpack: {type(exc).__name__}: {exc}", reason="malformed"
    )


# --- datagrams ---


def _unpack_bounded(
    data: bytes,
    *,
    what: str,
    max_size: int,
    max_str_len: int,
    max_array_len: int,
    max_bin_len: int = _CAP_BIN,
) -> object:
    """One whole msgpack document within the size and unpacker caps, or a
    DecodeError (``too_large`` or ``malformed``)."""
    if len(data) > max_size:
        raise DecodeError(
            f"{what} must be <= {max_size} bytes, got {len(data)}",
            reason="too_large",
        )
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_str_len,
            max_bin_len=max_bin_len,
            max_array_len=max_array_len,
            max_map_len=_CAP_MAP,
            max_ext_len=0,
        )
    except _MSGPACK_ERRORS as exc:
        raise _malformed(exc) from exc


def encode_packet(messages: Sequence[Message]) -> bytes:
    """Pack messages into one UDP datagram.

    The result is at most ``PACKET_OVERHEAD + sum(encoded_size(m) ...)`` bytes, so
    the core can fill a datagram budget with :func:`encoded_size` alone.

    Raises:
        LocalProtocolError: a message is not a datagram message, or the packet is
            over :data:`MAX_PACKET_SIZE` (the caller should have split it).
    """
    data = _PACKER.pack([PROTOCOL_VERSION, [_to_wire(m) for m in messages]])
    if len(data) > MAX_PACKET_SIZE:
        raise LocalProtocolError(
            f"packet must be <= {MAX_PACKET_SIZE} bytes, got {len(data)}"
        )
    return data


def encoded_size(message: Message) -> int:
    """Exact size of one message inside a packet (about 1 µs: one C pack call)."""
    return len(_PACKER.pack(_to_wire(message)))


def encoded_tags_size(tags: Mapping[str, str]) -> int:
    """Size of a tag map on the wire; :mod:`mesh.config` bounds a node's tags by it."""
    return len(_PACKER.pack(_encode_tags(tags)))


def decode_packet(data: bytes, *, max_messages: int = 128) -> tuple[list[Message], int]:
    """Unpack one UDP datagram.

    Args:
        data: the datagram payload.
        max_messages: most messages accepted in one packet (known or not).

    Returns:
        The decoded messages, in order, and how many were skipped because their
        type id is unknown (sent by a newer peer).

    Raises:
        DecodeError: anything else wrong, with ``reason`` one of ``too_large``,
            ``malformed``, ``bad_version``, ``schema``, ``limit``.
    """
    document = _unpack_bounded(
        data,
        what="packet",
        max_size=MAX_PACKET_SIZE,
        max_str_len=_CAP_STR,
        max_array_len=max(_CAP_ARRAY, 4 * max_messages),
    )
    packet = _check_version(document, "packet")
    if len(packet) < 2 or type(packet[1]) is not list:
        raise DecodeError("packet must be [version, [message, ...]]", reason="schema")
    wires: list[Any] = packet[1]
    if len(wires) > max_messages:
        raise DecodeError(
            f"packet must hold at most {max_messages} messages, got {len(wires)}",
            reason="limit",
        )
    messages: list[Message] = []
    skipped = 0
    for wire in wires:
        if type(wire) is not list or not wire or type(wire[0]) is not int:
            raise DecodeError(
                f"message must be [type_id, field, ...], got {_show(wire)}",
                reason="schema",
            )
        spec = _SPEC_BY_TYPE_ID.get(wire[0])
        if spec is not None:
            messages.append(spec.from_wire(wire, 1))
        elif wire[0] in _NOT_IN_DATAGRAMS:
            raise DecodeError(
                f"message type {wire[0]} is not allowed in a datagram",
                reason="schema",
            )
        else:
            skipped += 1
    return messages, skipped


# --- push-pull (TCP) ---


def encode_push_pull(push_pull: PushPull) -> bytes:
    """Pack a member-table exchange body.

    Raises:
        LocalProtocolError: the body is over :data:`MAX_PUSH_PULL_SIZE`.
    """
    data = _PACKER.pack(
        [
            PROTOCOL_VERSION,
            push_pull.join,
            [_MEMBER_SPEC.to_wire(member) for member in push_pull.members],
            push_pull.sender,
            push_pull.digest,
            push_pull.summary,
        ]
    )
    if len(data) > MAX_PUSH_PULL_SIZE:
        raise LocalProtocolError(
            f"push-pull body must be <= {MAX_PUSH_PULL_SIZE} bytes, got {len(data)}"
        )
    return data


def decode_push_pull(data: bytes, *, max_members: int = 10_000) -> PushPull:
    """Unpack a member-table exchange body.

    Args:
        data: the request or response body.
        max_members: most rows accepted; checked before any row is built.

    Raises:
        DecodeError: with the same reasons as :func:`decode_packet`.
    """
    if len(data) > MAX_PUSH_PULL_SIZE:
        raise DecodeError(
            f"push-pull body must be <= {MAX_PUSH_PULL_SIZE} bytes, got {len(data)}",
            reason="too_large",
        )
    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        max_buffer_size=MAX_PUSH_PULL_SIZE,
        max_str_len=_CAP_STR,
        max_bin_len=_CAP_BIN,
        max_array_len=_CAP_ARRAY,
        max_map_len=_CAP_MAP,
        max_ext_len=0,
    )
    unpacker.feed(data)
    try:
        return _read_push_pull(unpacker, data, max_members)
    except _MSGPACK_ERRORS as exc:
        raise _malformed(exc) from exc


def _read_push_pull(
    unpacker: msgpack.Unpacker, data: bytes, max_members: int
) -> PushPull:
    # Streaming: only the two outer arrays are read as headers, so a body claiming
    # a million rows is refused before one is built. read_array_header() cannot
    # tell "not an array" from "garbage", so peek at the header byte first and
    # unpack non-arrays whole, to give the same labels as decode_packet.
    if not _array_next(unpacker, data):
        raise _not_versioned("push-pull", _read_whole(unpacker, data))
    top = unpacker.read_array_header()
    if top == 0:
        _check_end(unpacker, data)
        raise _not_versioned("push-pull", [])
    version = unpacker.unpack()
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise _bad_version("push-pull", version)
    if top < 3:
        raise DecodeError(
            f"push-pull must be [version, join, members], got {top} fields",
            reason="schema",
        )
    join = _bool(unpacker.unpack(), "push_pull.join")
    if not _array_next(unpacker, data):
        unpacker.unpack()  # malformed beats schema, as in decode_packet
        raise DecodeError("push_pull.members must be an array", reason="schema")
    count = unpacker.read_array_header()
    if count > max_members:
        raise DecodeError(
            f"push-pull must hold at most {max_members} members, got {count}",
            reason="limit",
        )
    members: list[MemberState] = []
    for _ in range(count):
        row = unpacker.unpack()
        if type(row) is not list:
            raise DecodeError(
                f"member must be an array, got {_show(row)}", reason="schema"
            )
        members.append(_MEMBER_SPEC.from_wire(row, 0))
    sender = ""
    if top >= 4:
        raw_sender = unpacker.unpack()
        sender = "" if raw_sender == "" else _name(raw_sender, "push_pull.sender")
    digest = _u64(unpacker.unpack(), "push_pull.digest") if top >= 5 else 0
    summary = _bool(unpacker.unpack(), "push_pull.summary") if top >= 6 else False
    for _ in range(top - 6):
        unpacker.skip()  # fields appended by newer versions
    _check_end(unpacker, data)
    return PushPull(join, tuple(members), sender, digest, summary)


def _array_next(unpacker: msgpack.Unpacker, data: bytes) -> bool:
    offset = unpacker.tell()
    return offset < len(data) and data[offset] in _ARRAY_HEADERS


def _read_whole(unpacker: msgpack.Unpacker, data: bytes) -> object:
    value = unpacker.unpack()
    _check_end(unpacker, data)
    return value


def _check_end(unpacker: msgpack.Unpacker, data: bytes) -> None:
    if unpacker.tell() != len(data):
        raise DecodeError(
            f"{len(data) - unpacker.tell()} trailing bytes after the body",
            reason="malformed",
        )

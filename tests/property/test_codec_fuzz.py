"""mesh.codec under Hypothesis: valid values round-trip; hostile bytes only ever
raise DecodeError (never another exception, never a hang). Every decoder a
stranger's bytes reach is here: datagrams, push-pull, route batches and acks,
the sealed envelope (mesh.security) and the keyring operation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from mesh.codec import (
    PACKET_OVERHEAD,
    PROTOCOL_VERSION,
    decode_packet,
    decode_push_pull,
    encode_packet,
    encode_push_pull,
    encoded_size,
)
from mesh.codec_routes import decode_routes, decode_routes_ack
from mesh.core.routes import Route, Version
from mesh.errors import DecodeError
from mesh.messages import Message, MessageType, PushPull
from mesh.security import AuthError, Keyring, Kind
from mesh.shell.asgi import HttpError
from mesh.shell.keyring_api import _decode_op
from mesh.testing import strategies as ms

REASONS = {"too_large", "malformed", "bad_version", "schema", "limit"}

# modest, so the whole file runs in a few seconds on every test run
FAST = settings(max_examples=50, deadline=None)
FUZZ = settings(max_examples=100, deadline=None)

# Every kind of msgpack value, nested: what a hostile peer can send that is
# well-formed msgpack but says anything at all.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, 1, -1, 65535, 65536, 2**64 - 1]),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(
            st.text(max_size=6) | st.binary(max_size=4), children, max_size=4
        ),
    ),
    max_leaves=20,
)
# One field's worth: cheaper to draw than `values`, where many are needed at once.
fields = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=4), scalars, max_size=3),
)
type_ids = st.integers(min_value=-1, max_value=len(MessageType) + 2)


def check(decode: Callable[[bytes], object], data: bytes) -> None:
    """Decoding returns or raises DecodeError with a known reason; nothing else."""
    reason = None
    try:
        decode(data)
    except DecodeError as exc:
        reason = exc.reason
    assert reason is None or reason in REASONS, reason


# --- valid values ---


@FAST
@given(st.lists(ms.messages(), max_size=20))
def test_packet_round_trip(messages: list[Message]) -> None:
    data = encode_packet(messages)
    assert decode_packet(data) == (messages, 0)
    assert len(data) <= PACKET_OVERHEAD + sum(encoded_size(m) for m in messages)


@FAST
@given(ms.messages())
def test_encoded_size_is_exact(message: Message) -> None:
    # fixarray(2), version, fixarray(1), then the message itself
    assert encoded_size(message) == len(encode_packet([message])) - 3


@FAST
@given(ms.push_pulls(max_members=5))
def test_push_pull_round_trip(push_pull: PushPull) -> None:
    assert decode_push_pull(encode_push_pull(push_pull)) == push_pull


# --- hostile input ---


@settings(max_examples=300, deadline=None)  # cheap to draw: go wider
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    check(decode_packet, data)
    check(decode_push_pull, data)


@settings(max_examples=100, deadline=None)
@given(values)
def test_arbitrary_msgpack(value: Any) -> None:
    data = msgpack.packb(value)
    check(decode_packet, data)
    check(decode_push_pull, data)


@FUZZ
@given(st.lists(st.tuples(type_ids, st.lists(fields, max_size=6)), max_size=3))
def test_packet_shaped_msgpack(wires: list[tuple[int, list[Any]]]) -> None:
    # right envelope, any contents: reaches every field check
    check(
        decode_packet,
        msgpack.packb([PROTOCOL_VERSION, [[tid, *rest] for tid, rest in wires]]),
    )


@FUZZ
@given(fields, st.lists(st.lists(fields, max_size=6), max_size=3))
def test_push_pull_shaped_msgpack(join: Any, rows: list[list[Any]]) -> None:
    check(decode_push_pull, msgpack.packb([PROTOCOL_VERSION, join, rows]))


@FUZZ
@given(ms.messages(), st.data())
def test_one_field_replaced(message: Message, data: st.DataObject) -> None:
    wire = msgpack.unpackb(encode_packet([message]))[1][0]
    index = data.draw(st.integers(min_value=0, max_value=len(wire)), label="index")
    value = data.draw(fields, label="value")
    appended = index == len(wire)
    if appended:
        wire.append(value)
    else:
        wire[index] = value
    packet = msgpack.packb([PROTOCOL_VERSION, [wire]])
    check(decode_packet, packet)
    if appended:
        # a field appended by a newer peer is ignored; the message is intact
        assert decode_packet(packet) == ([message], 0)


@FUZZ
@given(ms.push_pulls(max_members=2), st.data())
def test_one_row_field_replaced(push_pull: PushPull, data: st.DataObject) -> None:
    document = msgpack.unpackb(encode_push_pull(push_pull))
    rows = document[2]
    if rows:
        row = rows[data.draw(st.integers(0, len(rows) - 1), label="row")]
        row[data.draw(st.integers(0, len(row) - 1), label="field")] = data.draw(fields)
    else:
        document[data.draw(st.integers(0, 2), label="field")] = data.draw(fields)
    check(decode_push_pull, msgpack.packb(document))


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
        st.integers(min_value=0),
        st.integers(min_value=0, max_value=255),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, position, byte in ops:
        at = position % (len(buf) + 1)
        if op == "insert":
            buf.insert(at, byte)
        elif op == "truncate":
            del buf[at:]
        elif at < len(buf):
            if op == "flip":
                buf[at] ^= 1 << (byte % 8)
            elif op == "set":
                buf[at] = byte
            else:
                del buf[at]
    return bytes(buf)


@FUZZ
@given(st.lists(ms.messages(), min_size=1, max_size=5), mutations)
def test_mutated_packet(
    messages: list[Message], ops: list[tuple[str, int, int]]
) -> None:
    check(decode_packet, mutate(encode_packet(messages), ops))


@FUZZ
@given(ms.push_pulls(max_members=2), mutations)
def test_mutated_push_pull(
    push_pull: PushPull, ops: list[tuple[str, int, int]]
) -> None:
    check(decode_push_pull, mutate(encode_push_pull(push_pull), ops))


# --- every other decoder, and structurally hostile msgpack (issue 5) ---

# Hand-made msgpack headers that promise far more than they hold: a decoder
# must refuse them from the header, before allocating what they announce.
HUGE_HEADERS = [
    b"\xdd\xff\xff\xff\xff",  # array32 of 4 G elements
    b"\xdf\xff\xff\xff\xff",  # map32 of 4 G pairs
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
    b"\xc9\xff\xff\xff\xff\x01",  # ext32 of 4 GiB
    b"\xdc\xff\xff",  # array16 of 65535
]


def _nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


def _route_decoder(data: bytes) -> object:
    return decode_routes(data, max_routes=100)


def _envelope_then_packet(data: bytes) -> object:
    """What the UDP loop does with a key: open, then decode what was sealed."""
    envelope = RING.open(data, kind=Kind.DATAGRAM)
    return decode_packet(envelope.payload)


RING = Keyring([bytes(range(32))])
DECODERS: list[Callable[[bytes], object]] = [
    decode_packet,
    decode_push_pull,
    _route_decoder,
    decode_routes_ack,
    _envelope_then_packet,
]
ENVELOPE_REASONS = {"unsealed", "bad_envelope", "bad_version", "auth_failed"}


def check_all(data: bytes) -> None:
    for decode in DECODERS:
        reason = None
        try:
            decode(data)
        except DecodeError as exc:
            reason = exc.reason
        assert reason is None or reason in REASONS | ENVELOPE_REASONS, (decode, reason)


@pytest.mark.parametrize("header", HUGE_HEADERS)
@pytest.mark.parametrize("wrap", ["bare", "packet", "push_pull", "routes"])
def test_huge_length_headers(header: bytes, wrap: str) -> None:
    """A 4 G length header anywhere is refused at once (a hang or a MemoryError
    would fail the test run)."""
    v = msgpack.packb(PROTOCOL_VERSION)
    data = {
        "bare": header,
        "packet": b"\x92" + v + header,
        "push_pull": b"\x93" + v + b"\xc2" + header,
        "routes": b"\x93" + v + b"\xa1a" + header,
    }[wrap]
    check_all(data)
    check_all(data + bytes(64))


@pytest.mark.parametrize("depth", [10, 200, 1100, 100_000])
def test_deep_nesting(depth: int) -> None:
    check_all(_nested(depth))
    v = msgpack.packb(PROTOCOL_VERSION)
    check_all(b"\x92" + v + _nested(depth))
    check_all(b"\x93" + v + b"\xa1a" + _nested(depth))


@FAST
@given(st.integers(PROTOCOL_VERSION + 1, 2**64 - 1), st.lists(fields, max_size=3))
def test_future_versions_are_refused_whole(version: int, rest: list[Any]) -> None:
    data = msgpack.packb([version, *rest])
    for decode in (decode_packet, decode_push_pull, _route_decoder):
        with pytest.raises(DecodeError) as exc:
            decode(data)
        assert exc.value.reason in {"bad_version", "schema", "malformed"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_every_decoder(data: bytes) -> None:
    check_all(data)
    check_all(b"\xc1" + data)  # the sealed-envelope magic, then anything


@FUZZ
@given(values)
def test_arbitrary_msgpack_every_decoder(value: Any) -> None:
    check_all(msgpack.packb(value))


@FUZZ
@given(fields, st.lists(st.lists(fields, max_size=8), max_size=3))
def test_routes_shaped_msgpack(sender: Any, rows: list[list[Any]]) -> None:
    check_all(msgpack.packb([PROTOCOL_VERSION, sender, rows]))


@FUZZ
@given(st.dictionaries(st.text(max_size=10), fields, max_size=6))
def test_ack_shaped_msgpack(document: dict[str, Any]) -> None:
    check_all(msgpack.packb(document))


@FUZZ
@given(st.lists(ms.messages(), min_size=1, max_size=5), mutations)
def test_mutated_sealed_packet_never_opens(
    messages: list[Message], ops: list[tuple[str, int, int]]
) -> None:
    """A sealed packet changed in any way is refused by authentication; only
    the untouched one opens."""
    sealed = RING.seal(encode_packet(messages), sender="a", kind=Kind.DATAGRAM, now=1.0)
    mutated = mutate(sealed, ops)
    if mutated == sealed:
        return
    with pytest.raises(AuthError) as exc:
        RING.open(mutated, kind=Kind.DATAGRAM)
    assert exc.value.reason in ENVELOPE_REASONS


@FUZZ
@given(values)
def test_sealed_hostile_payloads_only_raise_decode_error(value: Any) -> None:
    """A key holder sealing anything at all: the layer under the envelope still
    refuses it cleanly."""
    check_all(RING.seal(msgpack.packb(value), sender="a", kind=Kind.DATAGRAM, now=1.0))


@FUZZ
@given(st.one_of(st.binary(max_size=100), values.map(msgpack.packb)))
def test_keyring_operation_decoder(data: bytes) -> None:
    status = 200
    try:
        _decode_op(data)
    except HttpError as exc:
        status = exc.status
    assert status in (200, 400)


# Near-valid route rows: a valid row with one field (or none) swapped for a
# value just inside or outside the contract (as far as msgpack can carry it),
# so decode_routes' typed road (msgspec's row type, then column checks) meets
# both sides of every limit (keys with a newline: the column check matches all
# keys joined by newlines at once).
_VALID_ROW = ("k1", "t", {"a": "b"}, 0, 5, "n1", False)
_FIELD_CHOICES: tuple[tuple[Any, ...], ...] = (
    ("a.b:c@d-e", "", "-bad", "k" * 253, "k" * 254, "é", 7, "a\nb", "a\n"),
    ("", "x", "t" * 1024, "t" * 1025, "é" * 1024, "é" * 1025, 5, None),
    (
        {},
        {"é": "b"},
        {"a": "v" * 256},
        {"a": "v" * 257},
        {"a": 1},
        [],
        None,
        {str(i): "v" for i in range(32)},
        {str(i): "v" for i in range(33)},
    ),
    (1, 2**64 - 1, -(2**63), -1, True, 1.0, None),
    (0, 2**64 - 1, -(2**63), -1, False, "1"),
    ("n2", "n3", "", "bad name", 3, None),
    (True, 0, 1, None),
)


@st.composite
def _near_valid_row(draw: st.DrawFn) -> list[Any]:
    row = list(_VALID_ROW)
    field = draw(st.integers(-1, 6))
    if field >= 0:
        row[field] = draw(st.sampled_from(_FIELD_CHOICES[field]))
    if field == 1 and draw(st.booleans()):
        row[6] = True  # a tombstone's target is not checked for length
    return row + draw(st.sampled_from([[], ["extra"]]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_near_valid_row(), max_size=6))
def test_route_rows_typed_decode_agrees_with_the_field_by_field_one(
    rows: list[list[Any]],
) -> None:
    """decode_routes' typed road may only take rows that ``_route`` takes,
    and must build the same routes; a row either refuses is refused whole."""
    # two valid rows of two origins first: a batch need not have one origin
    seen = [["s1", "t", {}, 0, 0, "n1", False], ["s2", "t", {}, 0, 0, "n2", False]]
    _decoders_agree(seen + rows)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 4), st.integers(0, 6), st.data())
def test_route_batch_typed_decode_agrees_with_the_field_by_field_one(
    before: int, field: int, data: st.DataObject
) -> None:
    """decode_routes checks a batch of common rows by type and column by
    column: one near-valid row among valid ones must be refused exactly when
    ``_route`` refuses it (a wrong accept of one row would pass the whole
    batch)."""
    odd = list(_VALID_ROW)
    odd[field] = data.draw(st.sampled_from(_FIELD_CHOICES[field]))
    _decoders_agree([list(_VALID_ROW)] * before + [odd, list(_VALID_ROW)])


def _decoders_agree(wire: list[list[Any]]) -> None:
    from mesh.codec_routes import _route

    data = msgpack.packb([PROTOCOL_VERSION, "n0", wire])
    origins: set[str] = set()
    try:
        expected: list[Any] | None = [
            _route(row, origins) for row in msgpack.unpackb(data)[2]
        ]
    except DecodeError:
        expected = None
    try:
        got: list[Any] | None = decode_routes(data, max_routes=10)[1]
    except DecodeError:
        got = None
    assert got == expected
    if got is not None and expected is not None:
        assert [type(r.meta) for r in got] == [type(r.meta) for r in expected]
        assert all(type(r) is Route and type(r.version) is Version for r in got)

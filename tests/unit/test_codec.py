"""mesh.codec: byte layout, size accounting, and one concrete sample per rejection."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import attrs
import msgpack
import pytest

from mesh import codec
from mesh.codec import (
    MAX_PACKET_SIZE,
    MAX_PUSH_PULL_SIZE,
    PACKET_OVERHEAD,
    PROTOCOL_VERSION,
    decode_packet,
    decode_push_pull,
    encode_packet,
    encode_push_pull,
    encoded_size,
    encoded_tags_size,
)
from mesh.codec_routes import decode_routes
from mesh.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from mesh.messages import (
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

ADDR = ("10.0.0.7", 7946)

# (message, its wire array): the layout, spelled out once.
LAYOUT: list[tuple[Message, list[Any]]] = [
    (Ping(7, "b", "a"), [1, 7, "b", "a"]),
    (
        PingReq(8, "c", ("::1", 1), "a", nack=False),
        [2, 8, "c", ["::1", 1], "a", False],
    ),
    (PingReq(2**64 - 1, "c", ADDR, "a"), [2, 2**64 - 1, "c", list(ADDR), "a", True]),
    (Ack(0), [3, 0]),
    (Nack(9), [4, 9]),
    (Alive(3, "n", ADDR), [5, 3, "n", list(ADDR), {}]),
    (
        Alive(3, "n", ADDR, {"role": "web", "zone": "é☃"}),
        [5, 3, "n", list(ADDR), {"role": "web", "zone": "é☃"}],
    ),
    (Suspect(4, "n", "s"), [6, 4, "n", "s"]),
    (Dead(5, "n", "n"), [7, 5, "n", "n"]),
]
MESSAGES = [message for message, _ in LAYOUT]


def packet(*messages: object, version: object = PROTOCOL_VERSION) -> bytes:
    """A datagram built by hand, so tests can put anything in it."""
    return msgpack.packb([version, list(messages)])


def rejects(decode: Callable[[bytes], object], data: bytes, reason: str) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.reason == reason, info.value
    return info.value


# --- layout and sizes ---


@pytest.mark.parametrize(("message", "wire"), LAYOUT)
def test_layout(message: Message, wire: list[Any]) -> None:
    data = encode_packet([message])
    assert msgpack.unpackb(data) == [PROTOCOL_VERSION, [wire]]
    assert encoded_size(message) == len(msgpack.packb(wire))


@pytest.mark.parametrize("message", MESSAGES)
def test_round_trip_each_type(message: Message) -> None:
    assert decode_packet(encode_packet([message])) == ([message], 0)


def test_every_datagram_type_is_covered() -> None:
    covered = {wire[0] for _, wire in LAYOUT}
    assert covered == {int(t) for t in MessageType} - {MessageType.PUSH_PULL}


@pytest.mark.parametrize(
    "spec", [*codec._SPECS, codec._MEMBER_SPEC], ids=lambda spec: spec.label
)
def test_every_attribute_is_on_the_wire(spec: Any) -> None:
    # a field added to mesh.messages must be appended to the codec table too
    assert spec.names == tuple(field.name for field in attrs.fields(spec.cls))


def test_round_trip_mixed_packet() -> None:
    assert decode_packet(encode_packet(MESSAGES)) == (MESSAGES, 0)
    assert decode_packet(encode_packet([])) == ([], 0)


@pytest.mark.parametrize("count", [0, 1, 15, 16, 200, 2000])
def test_packet_overhead_bounds_the_packet(count: int) -> None:
    messages = [MESSAGES[i % len(MESSAGES)] for i in range(count)]
    total = PACKET_OVERHEAD + sum(encoded_size(m) for m in messages)
    assert len(encode_packet(messages)) <= total
    if count >= 16:  # array16 header: the bound is exact
        assert len(encode_packet(messages)) == total


def test_encode_packet_refuses_what_cannot_be_sent() -> None:
    big = Alive(1, "n", ADDR, {f"k{i}": "v" * 500 for i in range(64)})
    with pytest.raises(LocalProtocolError, match="65507"):
        encode_packet([big] * 3)


def test_encode_refuses_non_messages() -> None:
    member = MemberState("n", ADDR, 1, MemberStatus.ALIVE)
    with pytest.raises(LocalProtocolError, match="MemberState"):
        encoded_size(member)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "tags", [{}, {"a": "b"}, {"role": "web", "dc": "eu-1", "ü": "☃" * 40}]
)
def test_encoded_tags_size(tags: dict[str, str]) -> None:
    assert encoded_tags_size(tags) == len(msgpack.packb(tags))
    assert encoded_tags_size(types.MappingProxyType(tags)) == len(msgpack.packb(tags))


def test_alive_with_non_dict_mapping_encodes() -> None:
    alive = Alive(1, "n", ADDR, types.MappingProxyType({"a": "b"}))
    assert decode_packet(encode_packet([alive])) == (
        [Alive(1, "n", ADDR, {"a": "b"})],
        0,
    )


# --- forward compatibility ---


def test_unknown_type_is_skipped_and_counted() -> None:
    data = packet([3, 1], [99, "from", {"the": "future"}], [200], [1, 2, "b", "a"])
    assert decode_packet(data) == ([Ack(1), Ping(2, "b", "a")], 2)


def test_trailing_fields_are_ignored() -> None:
    data = packet([3, 1, "new", [1, 2]], [5, 1, "n", list(ADDR), {}, 7])
    assert decode_packet(data) == ([Ack(1), Alive(1, "n", ADDR)], 0)
    future = msgpack.packb([PROTOCOL_VERSION, [[4, 2]], "extension"])
    assert decode_packet(future) == ([Nack(2)], 0)


# --- one concrete sample per rejection ---

NESTED_100K = b"\x91" * 100_000

PACKET_SAMPLES: list[tuple[str, bytes, str]] = [
    ("over-datagram", b"\xc0" * (MAX_PACKET_SIZE + 1), "too_large"),
    ("nesting-100k", NESTED_100K, "too_large"),
    ("nesting-60k", b"\x91" * 60_000, "malformed"),
    ("str32-4GiB-header", b"\xdb\xff\xff\xff\xff", "malformed"),
    ("bin32-4GiB-header", b"\x92\x01\x91\x92\x03\xc6\xff\xff\xff\xff", "malformed"),
    ("array32-4G-entries", b"\x92\x01\xdd\xff\xff\xff\xff", "malformed"),
    (
        "map32-4G-entries",
        b"\x92\x01\x91\x95\x05\x01\xa1n\xc0\xdf\xff\xff\xff\xff",
        "malformed",
    ),
    ("bad-utf8", b"\x92\x01\x91\x94\x01\x05\xa1\xff\xa1a", "malformed"),
    ("trailing-bytes", packet([3, 1]) + b"\xc0", "malformed"),
    ("truncated", packet([1, 2, "b", "a"])[:-1], "malformed"),
    ("empty", b"", "malformed"),
    ("reserved-byte", b"\xc1", "malformed"),
    ("ext-type", packet([3, msgpack.ExtType(1, b"x")]), "malformed"),
    ("int-map-key", packet([5, 1, "n", list(ADDR), {1: "a"}]), "malformed"),
    ("future-version", packet([1, 2, "b", "a"], version=2), "bad_version"),
    ("bool-version", packet([3, 1], version=True), "bad_version"),
    ("not-an-array", msgpack.packb({"version": 1}), "bad_version"),
    ("empty-array", msgpack.packb([]), "bad_version"),
    ("bare-int", b"\x01", "bad_version"),
    ("no-message-list", msgpack.packb([1]), "schema"),
    ("message-map", msgpack.packb([1, {"a": 1}]), "schema"),
    ("message-not-array", packet(3), "schema"),
    ("message-empty", packet([]), "schema"),
    ("type-id-str", packet(["ack", 1]), "schema"),
    ("type-id-bool", packet([True, 1]), "schema"),
    ("push-pull-in-datagram", packet([8, True, []]), "schema"),
    ("bool-for-int", packet([3, True]), "schema"),
    ("negative-seq", packet([3, -1]), "schema"),
    ("float-seq", packet([3, 1.0]), "schema"),
    ("missing-field", packet([1, 2, "b"]), "schema"),
    ("name-bad-start", packet([1, 2, "-b", "a"]), "schema"),
    ("name-newline", packet([1, 2, "b\n", "a"]), "schema"),
    ("name-129-chars", packet([1, 2, "b" * 129, "a"]), "schema"),
    ("name-bytes", packet([1, 2, b"b", "a"]), "schema"),
    ("host-empty", packet([5, 1, "n", ["", 1], {}]), "schema"),
    ("host-256-chars", packet([5, 1, "n", ["h" * 256, 1], {}]), "schema"),
    ("port-65536", packet([5, 1, "n", ["h", 65536], {}]), "schema"),
    ("port-bool", packet([5, 1, "n", ["h", False], {}]), "schema"),
    ("address-3-items", packet([5, 1, "n", ["h", 1, 2], {}]), "schema"),
    ("nack-int", packet([2, 1, "t", list(ADDR), "s", 1]), "schema"),
    ("tags-list", packet([5, 1, "n", list(ADDR), []]), "schema"),
    ("tag-value-int", packet([5, 1, "n", list(ADDR), {"a": 1}]), "schema"),
    ("tag-key-bytes", packet([5, 1, "n", list(ADDR), {b"a": "b"}]), "schema"),
    ("deep-field", b"\x92\x01\x91\x92\x03" + b"\x91" * 1000 + b"\x01", "schema"),
    ("129-messages", packet(*[[3, i] for i in range(129)]), "limit"),
    (
        "65-tags",
        packet([5, 1, "n", list(ADDR), {str(i): "" for i in range(65)}]),
        "limit",
    ),
    ("tag-key-65", packet([5, 1, "n", list(ADDR), {"k" * 65: ""}]), "limit"),
    ("tag-value-513", packet([5, 1, "n", list(ADDR), {"k": "v" * 513}]), "limit"),
    (
        "huge-map",
        packet([5, 1, "n", list(ADDR), {str(i): "" for i in range(300)}]),
        "malformed",
    ),
]


@pytest.mark.parametrize(
    ("data", "reason"),
    [pytest.param(data, reason, id=name) for name, data, reason in PACKET_SAMPLES],
)
def test_decode_packet_rejects(data: bytes, reason: str) -> None:
    error = rejects(decode_packet, data, reason)
    assert isinstance(error, RemoteProtocolError)
    assert len(str(error)) < 300  # hostile values are never echoed whole


def test_every_reason_has_a_sample() -> None:
    reasons = {reason for _, _, reason in PACKET_SAMPLES}
    assert reasons == {"too_large", "malformed", "bad_version", "schema", "limit"}


def test_one_bad_message_spoils_the_packet() -> None:
    # no partial results: a peer that sends one invalid message is not trusted
    # for the rest of that datagram
    rejects(decode_packet, packet([3, 1], [3, -1]), "schema")


def test_max_messages_is_configurable() -> None:
    data = packet(*[[3, i] for i in range(10)])
    rejects(lambda d: decode_packet(d, max_messages=9), data, "limit")
    assert len(decode_packet(data, max_messages=10)[0]) == 10


# --- push-pull ---

MEMBERS = (
    MemberState("a", ADDR, 1, MemberStatus.ALIVE, {"role": "web"}),
    MemberState("b", ("::1", 0), 2**64 - 1, MemberStatus.SUSPECT),
    MemberState("c", ADDR, 0, MemberStatus.DEAD),
    MemberState("d", ADDR, 3, MemberStatus.LEFT, {"é": "☃"}),
)
ROW = ["a", list(ADDR), 1, "alive", {}]


def body(*rows: object, join: object = False, version: object = 1) -> bytes:
    return msgpack.packb([version, join, list(rows)])


@pytest.mark.parametrize(
    "push_pull",
    [PushPull(True, MEMBERS), PushPull(False, ()), PushPull(False, MEMBERS)],
)
def test_push_pull_round_trip(push_pull: PushPull) -> None:
    assert decode_push_pull(encode_push_pull(push_pull)) == push_pull


def test_push_pull_layout() -> None:
    data = encode_push_pull(PushPull(True, MEMBERS[:2], "me", 77, False))
    assert msgpack.unpackb(data) == [
        1,
        True,
        [
            ["a", list(ADDR), 1, "alive", {"role": "web"}],
            ["b", ["::1", 0], 2**64 - 1, "suspect", {}],
        ],
        "me",
        77,
        False,
    ]


def test_push_pull_summary_carries_the_digest_alone() -> None:
    data = encode_push_pull(PushPull(False, (), "me", 2**64 - 1, summary=True))
    assert decode_push_pull(data) == PushPull(False, (), "me", 2**64 - 1, True)
    assert len(data) < 24


def test_push_pull_trailing_fields_are_ignored() -> None:
    data = msgpack.packb([1, True, [[*ROW, "new"]], "s", 5, True, {"future": 1}, [2]])
    assert decode_push_pull(data) == PushPull(
        True, (MemberState("a", ADDR, 1, MemberStatus.ALIVE),), "s", 5, True
    )


def test_push_pull_without_sender_is_accepted() -> None:
    data = msgpack.packb([1, True, [ROW]])
    assert decode_push_pull(data).sender == ""
    rejects(decode_push_pull, msgpack.packb([1, True, [ROW], {"x": 1}]), "schema")


def test_push_pull_max_members() -> None:
    data = body(ROW, ROW, ROW)
    rejects(lambda d: decode_push_pull(d, max_members=2), data, "limit")
    assert len(decode_push_pull(data, max_members=3).members) == 3


PUSH_PULL_SAMPLES: list[tuple[str, bytes, str]] = [
    ("over-16MiB", b"\xc0" * (MAX_PUSH_PULL_SIZE + 1), "too_large"),
    ("nesting-100k", NESTED_100K, "malformed"),
    ("str32-4GiB-header", b"\xdb\xff\xff\xff\xff", "malformed"),
    ("bad-utf8", b"\x93\x01\xc2\x91\x95\xa1\xff", "malformed"),
    ("trailing-bytes", body(ROW) + b"\xc0", "malformed"),
    ("trailing-after-int", b"\x01\x02", "malformed"),
    ("truncated", body(ROW)[:-1], "malformed"),
    ("truncated-rows", b"\x93\x01\xc2\x92", "malformed"),
    ("empty", b"", "malformed"),
    ("reserved-byte", b"\xc1", "malformed"),
    ("reserved-in-members", b"\x93\x01\xc2\xc1", "malformed"),
    ("future-version", body(ROW, version=2), "bad_version"),
    ("empty-array", msgpack.packb([]), "bad_version"),
    ("not-an-array", msgpack.packb("hello"), "bad_version"),
    ("two-fields", msgpack.packb([1, True]), "schema"),
    ("join-int", body(ROW, join=1), "schema"),
    ("members-map", msgpack.packb([1, True, {}]), "schema"),
    ("row-not-array", body("a"), "schema"),
    ("row-missing-field", body(ROW[:4]), "schema"),
    ("status-unknown", body(["a", list(ADDR), 1, "zombie", {}]), "schema"),
    ("status-int", body(["a", list(ADDR), 1, 1, {}]), "schema"),
    ("negative-incarnation", body(["a", list(ADDR), -5, "alive", {}]), "schema"),
    ("bool-incarnation", body(["a", list(ADDR), True, "alive", {}]), "schema"),
    ("rows-header-4G", b"\x93\x01\xc2\xdd\xff\xff\xff\xff", "limit"),
    (
        "65-tags",
        body(["a", list(ADDR), 1, "alive", {str(i): "" for i in range(65)}]),
        "limit",
    ),
]


@pytest.mark.parametrize(
    ("data", "reason"),
    [pytest.param(data, reason, id=name) for name, data, reason in PUSH_PULL_SAMPLES],
)
def test_decode_push_pull_rejects(data: bytes, reason: str) -> None:
    rejects(decode_push_pull, data, reason)


def test_push_pull_is_not_a_datagram() -> None:
    rejects(decode_packet, encode_push_pull(PushPull(True, MEMBERS)), "schema")


def test_limits_match_the_docs() -> None:
    assert codec.MAX_TAGS == 64
    assert codec.MAX_TAG_KEY_LEN == 64
    assert codec.MAX_TAG_VALUE_LEN == 512
    assert PACKET_OVERHEAD == 5


@pytest.mark.parametrize("origin", [["n1"], {"n": 1}, 7, None, "", "bad name!"])
def test_route_rows_with_a_hostile_origin_are_refused(origin: object) -> None:
    # Decoding remembers the origins already checked in a batch; a value that
    # is not even hashable must be refused, never raise something else.
    good = ["k1", "http://x", {}, 0, 1, "n1", False]
    bad = ["k2", "http://x", {}, 0, 2, origin, False]
    data = msgpack.packb([PROTOCOL_VERSION, "n1", [good, bad]])
    with pytest.raises(DecodeError) as info:
        decode_routes(data, max_routes=10)
    assert info.value.reason == "schema"
    _, routes = decode_routes(
        msgpack.packb([PROTOCOL_VERSION, "n1", [good, good]]), max_routes=10
    )
    assert [r.version.origin for r in routes] == ["n1", "n1"]


_LIVE = ["k1", "http://x", {"a": "b"}, 0, 1, "n1", False]


def _live(target: str) -> list[object]:
    return [_LIVE[0], target, *_LIVE[2:]]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("future-version", msgpack.packb([2, "n1", [_LIVE]]), "bad_version"),
        ("bool-version", msgpack.packb([True, "n1", [_LIVE]]), "bad_version"),
        (
            "bad-sender",
            msgpack.packb([PROTOCOL_VERSION, "bad name", [_LIVE]]),
            "schema",
        ),
        (
            "over-max-routes",
            msgpack.packb([PROTOCOL_VERSION, "n1", [_LIVE] * 4]),
            "limit",
        ),
        # beside a tombstone (whose target is not checked), a live route's is
        (
            "empty-live-target",
            msgpack.packb(
                [
                    PROTOCOL_VERSION,
                    "n1",
                    [["k0", "", {}, 0, 1, "n1", True], _live("")],
                ]
            ),
            "schema",
        ),
        (  # (the tombstone's target valid too: only the live one's counts)
            "empty-live-target-valid-tombstone",
            msgpack.packb(
                [
                    PROTOCOL_VERSION,
                    "n1",
                    [["k0", "t", {}, 0, 1, "n1", True], _live("")],
                ]
            ),
            "schema",
        ),
        (
            "long-live-target",
            msgpack.packb(
                [
                    PROTOCOL_VERSION,
                    "n1",
                    [
                        ["k0", "", {}, 0, 1, "n1", True],
                        _live("t" * 1025),
                    ],
                ]
            ),
            "schema",
        ),
    ],
)
def test_bad_route_batches_are_refused_whole(
    name: str, data: bytes, reason: str
) -> None:
    with pytest.raises(DecodeError) as info:
        decode_routes(data, max_routes=3)
    assert info.value.reason == reason, name


def test_a_tombstones_target_is_kept_unchecked_beside_live_routes() -> None:
    rows = [
        ["k0", "", {}, 0, 1, "n1", True],
        ["k2", "t" * 2000, {}, 0, 2, "n1", True],
        _LIVE,
        _live("t" * 1024),
    ]
    sender, routes = decode_routes(
        msgpack.packb([PROTOCOL_VERSION, "n2", rows]), max_routes=4
    )
    assert sender == "n2"
    assert [(r.key, len(r.target), r.deleted) for r in routes] == [
        ("k0", 0, True),
        ("k2", 2000, True),
        ("k1", 8, False),
        ("k1", 1024, False),
    ]

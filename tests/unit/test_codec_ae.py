"""The anti-entropy wire format: round trips, and refusal of hostile bodies."""

from __future__ import annotations

import msgpack
import pytest

from mesh.codec import PROTOCOL_VERSION
from mesh.codec_ae import (
    AeLimits,
    decode_ae_reply,
    decode_ae_request,
    encode_ae_reply,
    encode_ae_request,
)
from mesh.core.antientropy import (
    AeChunk,
    AeChunkReply,
    AeMore,
    AeOpen,
    AeRepair,
    AeRepaired,
    AeSymbols,
    SymbolsStatus,
)
from mesh.core.digest import Symbol
from mesh.core.routes import Route, Version
from mesh.errors import DecodeError

LIMITS = AeLimits(max_symbols=64, max_routes=8)
ROUTE = Route("k", "http://t", {"a": "b"}, Version(1, 2 << 16, "n1"))
TOMB = Route("gone", "", {}, Version(0, 3 << 16, "n2"), deleted=True)

REQUESTS = [
    AeOpen("n1", Symbol(-3, 2**64 - 1, 2**32 - 1), 12),
    AeMore("n1", 7, 24, 48),
    AeRepair("n1", (ROUTE, TOMB), (1, 2**64 - 1), (("k", Version(1, 2, "n3")),)),
    AeRepair("n1"),
    AeChunk("n1", "", 1000),
    AeChunk("n1", "after-this", 5),
]
REPLIES = [
    AeSymbols(SymbolsStatus.SAME),
    AeSymbols(SymbolsStatus.BUSY),
    AeSymbols(SymbolsStatus.SYMBOLS, 9, 24, 100, (Symbol(1, 5, 6), Symbol(-1, 7, 8))),
    AeRepaired((ROUTE,), (("x", Version(0, 1, "n1")),)),
    AeChunkReply((ROUTE, TOMB), True, 2),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=repr)
def test_requests_round_trip(request_: object) -> None:
    assert decode_ae_request(encode_ae_request(request_), LIMITS) == request_  # type: ignore[arg-type]


@pytest.mark.parametrize("reply", REPLIES, ids=repr)
def test_replies_round_trip(reply: object) -> None:
    assert decode_ae_reply(encode_ae_reply(reply), LIMITS) == reply  # type: ignore[arg-type]


def test_an_idle_round_is_a_few_dozen_bytes() -> None:
    open_ = AeOpen("node-17", Symbol(100_000, 2**63 + 5, 2**31 + 7), 100_000)
    assert len(encode_ae_request(open_)) <= 40
    assert len(encode_ae_reply(AeSymbols(SymbolsStatus.SAME))) <= 12


def pack(*fields: object) -> bytes:
    return msgpack.packb([PROTOCOL_VERSION, *fields], use_bin_type=True)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xc1", "malformed"),
        (b"", "malformed"),
        (msgpack.packb([99, 1, "n", 0, 0, 0, 0]), "bad_version"),
        (pack(77, "n"), "schema"),  # unknown type
        (pack(5, "n", 0, 0), "schema"),  # too few fields
        (pack(5, "bad name!", 0, 0, 0, 0), "schema"),
        (pack(5, "n", 2**40, 0, 0, 0), "schema"),  # count out of range
        (pack(1, "n", 0, 0, 0, 0), "bad_version"),  # digest scheme 1's open
        (pack(2, "n", 0, 10, 5), "schema"),  # stop < start
        (pack(2, "n", 0, 0, 10**9), "schema"),  # far past any digest
        (pack(3, "n", [], b"\x00" * 7, []), "schema"),  # want not 8-byte items
        (pack(3, "n", [], b"\x00" * 8 * 9, []), "limit"),  # 9 wants > 8
        (pack(3, "n", [["k"]] * 9, b"", []), "limit"),
        (pack(3, "n", [["k", "t", {}, 0, 0, "o"]], b"", []), "schema"),
        (pack(3, "n", [], b"", [["k", 0, 0]]), "schema"),
        (pack(4, "n", 5, 10), "schema"),  # cursor not a string
        (pack(4, "n", "", 0), "schema"),
    ],
)
def test_hostile_requests_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_ae_request(body, LIMITS)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (pack(14, 9, 0, 0, 0, b""), "schema"),  # unknown status
        (pack(14, 1, 0, 0, 0, b"\x00" * 15), "schema"),
        (pack(14, 1, 0, 0, 0, b"\x00" * 16 * 65), "limit"),
        (pack(14, 1, 0, 10**6, 0, b""), "schema"),
        (pack(11, 1, 0, 0, 0, b""), "bad_version"),  # digest scheme 1's symbols
        (pack(12, [["k"]] * 9, []), "limit"),
        (pack(13, [], "yes", 0), "schema"),
        (pack(13, [], True, -1), "schema"),
    ],
)
def test_hostile_replies_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_ae_reply(body, LIMITS)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("body", "decode"),
    [
        (pack(1, "n", 3, 5, 7, 3), decode_ae_request),
        (pack(11, 1, 0, 0, 3, b"\x00" * 16), decode_ae_reply),
    ],
)
def test_a_scheme_1_digest_is_refused_by_name(body: bytes, decode: object) -> None:
    """A member of the old digest scheme (BLAKE2b walks, XOR symbols) opens
    rounds of type 1: peeling its symbols with scheme 2's arithmetic would
    yield garbage, so both messages are refused, saying why."""
    with pytest.raises(DecodeError) as info:
        decode(body, LIMITS)  # type: ignore[operator]
    assert info.value.reason == "bad_version"
    assert "digest scheme 1" in str(info.value)
    assert "upgrade" in str(info.value)


def test_a_huge_body_is_refused_before_unpacking() -> None:
    with pytest.raises(DecodeError) as info:
        decode_ae_request(b"\x00" * (17 * 1024 * 1024), LIMITS)
    assert info.value.reason == "too_large"

"""Arbitrary bytes and mutated valid bodies never escape the anti-entropy
decoders as anything but DecodeError."""

from __future__ import annotations

import contextlib

from hypothesis import given, strategies as st

from mesh.codec_ae import (
    AeLimits,
    decode_ae_reply,
    decode_ae_request,
    encode_ae_request,
)
from mesh.core.antientropy import AeChunk, AeMore, AeOpen, AeRepair
from mesh.core.digest import Symbol
from mesh.errors import DecodeError

LIMITS = AeLimits(max_symbols=64, max_routes=8)
VALID = [
    encode_ae_request(AeOpen("n", Symbol(1, 2, 3), 4)),
    encode_ae_request(AeMore("n", 1, 2, 3)),
    encode_ae_request(AeRepair("n", (), (1, 2), ())),
    encode_ae_request(AeChunk("n", "k", 5)),
]


def decode_both(data: bytes) -> None:
    for decode in (decode_ae_request, decode_ae_reply):
        with contextlib.suppress(DecodeError):
            decode(data, LIMITS)


@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    decode_both(data)


@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=6),
)
def test_mutated_valid_bodies(body: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(body)
    for at, value in edits:
        data[at % len(data)] = value
    decode_both(bytes(data))

"""Coverage-guided fuzzing (atheris/libFuzzer) of every decoder a stranger's
bytes reach: datagrams (plain and sealed), push-pull bodies, route batches and
their acks, the keyring operation, anti-entropy requests and replies.

The first input byte picks the decoder, the rest is its input. A decoder may
return or raise its documented refusal (DecodeError, with AuthError under it,
or the keyring operation's HttpError 400); anything else is a crash. libFuzzer's
``-rss_limit_mb`` and ``-malloc_limit_mb`` turn an unbounded allocation into a
crash too, and ``-timeout`` a hang.

Run: python scripts/fuzz/fuzz_decoders.py CORPUS_DIR -max_total_time=30
(scripts/fuzz/run does that with a seed corpus and hard limits).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["mesh"]):
    from mesh.codec import decode_packet, decode_push_pull
    from mesh.codec_ae import AeLimits, decode_ae_reply, decode_ae_request
    from mesh.codec_routes import decode_routes, decode_routes_ack
    from mesh.config import Config
    from mesh.errors import DecodeError
    from mesh.security import Keyring, Kind
    from mesh.shell.asgi import HttpError
    from mesh.shell.keyring_api import _decode_op

#: the fixed test key: seeds sealed with it reach the payload decoders
KEY = bytes(range(32))
RING = Keyring([KEY])
AE_LIMITS = AeLimits.from_config(Config())


def _sealed_packet(data: bytes) -> object:
    return decode_packet(RING.open(data, kind=Kind.DATAGRAM).payload)


def _sealed_request(data: bytes) -> object:
    envelope = RING.open(data, kind=Kind.REQUEST, bind=b"POST /mesh/v1/routes")
    return decode_routes(envelope.payload, max_routes=1000)


def _keyring_op(data: bytes) -> object:
    try:
        return _decode_op(data)
    except HttpError as exc:
        if exc.status != 400:
            raise
        return None


DECODERS: list[Callable[[bytes], object]] = [
    decode_packet,
    decode_push_pull,
    lambda data: decode_routes(data, max_routes=1000),
    decode_routes_ack,
    _sealed_packet,
    _sealed_request,
    _keyring_op,
    lambda data: decode_ae_request(data, AE_LIMITS),
    lambda data: decode_ae_reply(data, AE_LIMITS),
]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    decode = DECODERS[data[0] % len(DECODERS)]
    with contextlib.suppress(DecodeError):
        decode(data[1:])


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

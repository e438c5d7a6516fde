"""Write a seed corpus for fuzz_decoders.py: one valid input per decoder, so
the fuzzer starts from inside each format instead of at the first byte.

Run: python scripts/fuzz/seeds.py CORPUS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack

from mesh.codec import encode_packet, encode_push_pull
from mesh.codec_routes import encode_routes, encode_routes_ack
from mesh.core.routes import Route, Version
from mesh.messages import Ack, Alive, MemberState, MemberStatus, Ping, PushPull
from mesh.security import Keyring, Kind

KEY = bytes(range(32))  # fuzz_decoders.KEY


def seeds() -> list[bytes]:
    ring = Keyring([KEY])
    packet = encode_packet(
        [Ping(1, "b", "a"), Ack(1), Alive(3, "a", ("127.0.0.1", 7946), {"zone": "x"})]
    )
    push_pull = encode_push_pull(
        PushPull(
            join=True,
            members=(MemberState("a", ("127.0.0.1", 7946), 3, MemberStatus.ALIVE, {}),),
        )
    )
    routes = encode_routes(
        "a", [Route("svc.a", "http://x", {"k": "v"}, Version(1, 2, "a"))]
    )
    ack = encode_routes_ack(1, {"applied": 1})
    sealed_packet = ring.seal(packet, sender="a", kind=Kind.DATAGRAM, now=1.0)
    sealed_routes = ring.seal(
        routes, sender="a", kind=Kind.REQUEST, now=1.0, bind=b"POST /mesh/v1/routes"
    )
    op = msgpack.packb({"op": "install", "key": KEY})
    bodies = [packet, push_pull, routes, ack, sealed_packet, sealed_routes, op]
    return [bytes([i]) + body for i, body in enumerate(bodies)]


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds()):
        (out / f"seed-{i}").write_bytes(seed)


if __name__ == "__main__":
    main()

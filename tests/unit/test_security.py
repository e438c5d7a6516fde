"""mesh.security: keyring rotation rules, sealed envelopes, the replay window.

Pure logic, so exact: times are arguments, nonces can be fixed."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings, strategies as st

from mesh.security import (
    MAGIC,
    NONCE_SIZE,
    AuthError,
    Keyring,
    KeyringError,
    Kind,
    ReplayGuard,
    SourceThrottle,
    decode_key,
    encode_key,
    fingerprint,
    generate_key,
    overhead,
)

K1 = bytes(range(32))
K2 = bytes(range(1, 17))
K3 = bytes(range(2, 26))
NOW = 1_800_000_000.0

keys = st.sampled_from([16, 24, 32]).flatmap(
    lambda n: st.binary(min_size=n, max_size=n)
)
names = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=60
)


def reason(exc: pytest.ExceptionInfo[AuthError]) -> str:
    return exc.value.reason


# --- keys ---


@pytest.mark.parametrize("size", [16, 24, 32])
def test_key_round_trips_through_base64(size: int) -> None:
    key = generate_key(size)
    assert len(key) == size
    assert decode_key(encode_key(key)) == key


@pytest.mark.parametrize(
    "text",
    ["", "not base64!", base64.b64encode(b"x" * 15).decode(), "QUJD", "é"],
)
def test_bad_keys_are_400(text: str) -> None:
    with pytest.raises(KeyringError) as exc:
        decode_key(text)
    assert exc.value.status == 400


def test_fingerprint_names_without_revealing() -> None:
    fp = fingerprint(K1)
    assert fp.startswith("sha256:")
    assert len(fp) == len("sha256:") + 16
    assert fp != fingerprint(K2)
    assert encode_key(K1) not in fp


# --- keyring rules ---


def test_rotation_install_use_remove() -> None:
    ring = Keyring([K1])
    assert ring.list()[0].primary
    ring.install(K2)
    assert [(i.fingerprint, i.primary) for i in ring.list()] == [
        (fingerprint(K1), True),
        (fingerprint(K2), False),
    ]
    ring.use(K2)
    assert ring.primary == K2
    ring.remove(K1)
    assert len(ring) == 1
    assert K1 not in ring


def test_remove_primary_and_use_unknown_are_409() -> None:
    ring = Keyring([K1])
    with pytest.raises(KeyringError) as exc:
        ring.remove(K1)
    assert exc.value.status == 409
    with pytest.raises(KeyringError) as exc:
        ring.use(K2)
    assert exc.value.status == 409


def test_operations_are_idempotent() -> None:
    ring = Keyring([K1])
    ring.install(K2)
    ring.install(K2)
    ring.use(K2)
    ring.use(K2)
    ring.remove(K1)
    ring.remove(K1)
    assert len(ring) == 1


def test_keyring_is_bounded() -> None:
    ring = Keyring([K1], max_keys=2)
    ring.install(K2)
    with pytest.raises(KeyringError) as exc:
        ring.install(K3)
    assert exc.value.status == 409


# --- envelopes ---


def test_seal_open_round_trip_and_overhead() -> None:
    ring = Keyring([K1])
    sealed = ring.seal(b"hello", sender="node-a", kind=Kind.DATAGRAM, now=NOW)
    assert sealed[0] == MAGIC
    assert len(sealed) == len(b"hello") + overhead("node-a")
    env = ring.open(sealed, kind=Kind.DATAGRAM)
    assert (env.sender, env.payload, env.timestamp_ms) == (
        "node-a",
        b"hello",
        NOW * 1000,
    )


def test_every_installed_key_opens_primary_seals() -> None:
    old, new = Keyring([K1]), Keyring([K2])
    new.install(K1)  # the new key's holder still opens the old one
    assert (
        new.open(
            old.seal(b"x", sender="a", kind=Kind.DATAGRAM, now=NOW), kind=Kind.DATAGRAM
        ).payload
        == b"x"
    )
    sealed_new = new.seal(b"y", sender="b", kind=Kind.DATAGRAM, now=NOW)
    with pytest.raises(AuthError) as exc:
        old.open(sealed_new, kind=Kind.DATAGRAM)
    assert reason(exc) == "auth_failed"


def test_header_fields_are_authenticated() -> None:
    """The sender name, kind and timestamp are associated data: changing any
    byte of the header (or the body) fails authentication."""
    ring = Keyring([K1])
    sealed = ring.seal(b"payload", sender="node-a", kind=Kind.DATAGRAM, now=NOW)
    name_at = 4
    forged = bytearray(sealed)
    forged[name_at] ^= 0x01  # node-a -> oode-a
    with pytest.raises(AuthError) as exc:
        ring.open(bytes(forged), kind=Kind.DATAGRAM)
    assert reason(exc) == "auth_failed"
    for i in range(4 + len("node-a"), len(sealed)):
        flipped = bytearray(sealed)
        flipped[i] ^= 0x80
        with pytest.raises(AuthError):
            ring.open(bytes(flipped), kind=Kind.DATAGRAM)


def test_kind_and_bind_must_match() -> None:
    ring = Keyring([K1])
    request = ring.seal(b"b", sender="a", kind=Kind.REQUEST, now=NOW, bind=b"POST /x")
    with pytest.raises(AuthError) as exc:
        ring.open(request, kind=Kind.DATAGRAM)
    assert reason(exc) == "bad_envelope"
    with pytest.raises(AuthError) as exc:
        ring.open(request, kind=Kind.REQUEST, bind=b"POST /y")
    assert reason(exc) == "auth_failed"
    assert ring.open(request, kind=Kind.REQUEST, bind=b"POST /x").payload == b"b"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "unsealed"),
        (b"\x92\x01\x90", "unsealed"),
        (bytes([MAGIC]), "bad_envelope"),
        (bytes([MAGIC, 9, 1, 1]) + b"a" + bytes(40), "bad_version"),
        (bytes([MAGIC, 1, 7, 1]) + b"a" + bytes(40), "bad_envelope"),
        (bytes([MAGIC, 1, 1, 0]) + bytes(40), "bad_envelope"),
        (bytes([MAGIC, 1, 1, 200]) + bytes(40), "bad_envelope"),
        (bytes([MAGIC, 1, 1, 2]) + b"\xff\xfe" + bytes(40), "bad_envelope"),
        (bytes([MAGIC, 1, 1, 1]) + b"a" + bytes(40), "auth_failed"),
    ],
)
def test_hostile_headers(data: bytes, why: str) -> None:
    with pytest.raises(AuthError) as exc:
        Keyring([K1]).open(data, kind=Kind.DATAGRAM)
    assert reason(exc) == why


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_auth_error(data: bytes) -> None:
    with pytest.raises(AuthError) as exc:
        Keyring([K1]).open(data, kind=Kind.DATAGRAM)
    assert reason(exc) in {"unsealed", "bad_envelope", "bad_version", "auth_failed"}


@settings(max_examples=100, deadline=None)
@given(
    key=keys,
    payload=st.binary(max_size=2000),
    sender=names,
    kind=st.sampled_from(Kind),
    now=st.floats(0, 2**40),
    bind=st.binary(max_size=40),
)
def test_round_trip_property(
    key: bytes, payload: bytes, sender: str, kind: Kind, now: float, bind: bytes
) -> None:
    if len(sender.encode()) > 255:
        return
    ring = Keyring([key])
    sealed = ring.seal(payload, sender=sender, kind=kind, now=now, bind=bind)
    env = ring.open(sealed, kind=kind, bind=bind)
    assert (env.payload, env.sender, env.kind) == (payload, sender, kind)
    assert len(sealed) == len(payload) + overhead(sender)


@settings(max_examples=100, deadline=None)
@given(key=keys, other=keys, payload=st.binary(max_size=200), cut=st.integers(0, 400))
def test_wrong_key_or_truncation_never_opens(
    key: bytes, other: bytes, payload: bytes, cut: int
) -> None:
    sealed = Keyring([key]).seal(payload, sender="a", kind=Kind.DATAGRAM, now=NOW)
    if other != key:
        with pytest.raises(AuthError):
            Keyring([other]).open(sealed, kind=Kind.DATAGRAM)
    if cut < len(sealed):
        with pytest.raises(AuthError):
            Keyring([key]).open(sealed[:cut], kind=Kind.DATAGRAM)


# --- replay window ---


def nonce(i: int) -> bytes:
    return i.to_bytes(NONCE_SIZE, "big")


def test_replay_refused_within_window() -> None:
    guard = ReplayGuard(window=30.0, max_entries=100)
    ts = int(NOW * 1000)
    guard.check(ts, nonce(1), NOW)
    with pytest.raises(AuthError) as exc:
        guard.check(ts, nonce(1), NOW + 1)
    assert reason(exc) == "replay"
    guard.check(ts, nonce(2), NOW + 1)  # another nonce is fine


def test_old_and_future_refused() -> None:
    guard = ReplayGuard(window=30.0, max_entries=100)
    with pytest.raises(AuthError) as exc:
        guard.check(int((NOW - 30.5) * 1000), nonce(1), NOW)
    assert reason(exc) == "stale"
    with pytest.raises(AuthError) as exc:
        guard.check(int((NOW + 30.5) * 1000), nonce(2), NOW)
    assert reason(exc) == "future"
    guard.check(int((NOW - 29.5) * 1000), nonce(3), NOW)
    guard.check(int((NOW + 29.5) * 1000), nonce(4), NOW)


def test_replay_after_window_is_stale_not_accepted() -> None:
    """Once a nonce is forgotten its timestamp is out of the window too."""
    guard = ReplayGuard(window=30.0, max_entries=100)
    ts = int(NOW * 1000)
    guard.check(ts, nonce(1), NOW)
    with pytest.raises(AuthError) as exc:
        guard.check(ts, nonce(1), NOW + 31)
    assert reason(exc) == "stale"
    assert len(guard) == 0


def test_full_cache_narrows_the_window() -> None:
    guard = ReplayGuard(window=30.0, max_entries=3)
    base = int(NOW * 1000)
    for i in range(4):
        guard.check(base + i, nonce(i), NOW)
    assert len(guard) == 3
    assert guard.evictions == 1
    # The evicted nonce's replay is refused by the floor, not accepted.
    with pytest.raises(AuthError) as exc:
        guard.check(base + 0, nonce(0), NOW)
    assert reason(exc) == "stale"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(-40_000, 40_000), st.floats(0, 5)),
        max_size=60,
    ),
    st.integers(1, 10),
)
def test_no_envelope_is_ever_accepted_twice(
    events: list[tuple[int, int, float]], max_entries: int
) -> None:
    """Whatever the order, clock steps and cache size: the same envelope
    (timestamp, nonce) is accepted at most once, and the cache stays bounded."""
    guard = ReplayGuard(window=30.0, max_entries=max_entries)
    accepted: set[tuple[int, bytes]] = set()
    reasons: set[str] = set()
    now = NOW
    for n, offset_ms, step in events:
        now += step
        envelope = (int(NOW * 1000) + offset_ms, nonce(n))
        try:
            guard.check(*envelope, now)
        except AuthError as exc:
            reasons.add(exc.reason)
        else:
            assert envelope not in accepted
            accepted.add(envelope)
        assert len(guard) <= max_entries
    assert reasons <= {"stale", "future", "replay"}


# --- per-source budget of refused datagrams ---


def test_throttle_blocks_a_flooding_source_only() -> None:
    throttle = SourceThrottle(rate=10.0, burst=5, max_sources=100)
    bad, good = ("10.0.0.1", 1), ("10.0.0.2", 1)
    for _ in range(5):
        assert not throttle.blocked(bad, 0.0)
        throttle.refused(bad, 0.0)
    assert throttle.blocked(bad, 0.0)
    assert not throttle.blocked(good, 0.0)  # never refused: never blocked
    # one token back every 1/rate seconds
    assert throttle.blocked(bad, 0.09)
    assert not throttle.blocked(bad, 0.1)


def test_throttle_refills_to_burst_only() -> None:
    throttle = SourceThrottle(rate=10.0, burst=3, max_sources=100)
    src = ("10.0.0.1", 1)
    throttle.refused(src, 0.0)
    # a long quiet spell refills to the burst, not beyond
    for _ in range(3):
        assert not throttle.blocked(src, 100.0)
        throttle.refused(src, 100.0)
    assert throttle.blocked(src, 100.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=300), st.integers(1, 20))
def test_throttle_tracks_a_bounded_number_of_sources(
    sources: list[int], max_sources: int
) -> None:
    throttle = SourceThrottle(rate=1.0, burst=2, max_sources=max_sources)
    for i, src in enumerate(sources):
        throttle.refused(src, i * 0.01)
        assert len(throttle) <= max_sources

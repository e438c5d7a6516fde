"""Gossip keys, sealed envelopes and the replay window: pure logic, no I/O.

Theory of operation
-------------------
Keys. A :class:`Keyring` holds 1..``max_keys`` AES keys (16, 24 or 32 bytes).
The *primary* seals everything we send; every installed key is tried when
opening, so a mesh rotates keys without a flag day (memberlist's keyring):
``install`` the new key everywhere, ``use`` it everywhere, ``remove`` the old
one. The primary cannot be removed. Keys are never shown, only their
:func:`fingerprint` (``sha256:`` + 16 hex digits of SHA-256 of the key).

Envelope. One layout for a datagram, a peer HTTP request body and its response
body::

    0xC1 | version | kind | name_len | name | timestamp_ms (u64 BE) | nonce (12)
    | AES-GCM(ciphertext + 16-byte tag)

The header is the associated data, so the sender's member name, the kind and
the timestamp are authenticated along with the payload; ``bind`` adds context
that is not on the wire (the request's method and path, or for a response the
request's nonce, so a response cannot be replayed as the answer to another
request). 0xC1 is the one byte msgpack never uses: a sealed packet can never be
mistaken for a plain one, and a node without keys refuses it as malformed.

Replay. We chose a sender timestamp plus a bounded nonce cache over per-sender
counters: UDP reorders and loses packets, so counters need a sliding bitmap per
sender, a restart resets them (needing an epoch), and per-sender state grows
with the number of names a key holder makes up. The timestamp needs clocks
within ``window`` of each other (NTP), as Kerberos and TLS tickets do. A packet
is accepted once: its timestamp within ``window`` of our clock and its nonce
not seen in that window. The cache holds at most ``max_entries`` nonces; when
full, the oldest is evicted and its timestamp becomes a *floor* below which
everything is refused, so a full cache narrows the window instead of letting a
replay through. Only authenticated packets reach the cache, so strangers
cannot fill it.

Nothing here reads a clock: ``now`` (wall-clock seconds) is an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import os
import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import Final, NamedTuple

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import DecodeError, MeshError

__all__ = [
    "ENVELOPE_VERSION",
    "MAGIC",
    "NONCE_SIZE",
    "TAG_SIZE",
    "AuthError",
    "Envelope",
    "KeyInfo",
    "Keyring",
    "KeyringError",
    "Kind",
    "ReplayGuard",
    "SourceThrottle",
    "decode_key",
    "encode_key",
    "fingerprint",
    "generate_key",
    "is_sealed",
    "overhead",
    "parse_header",
]

MAGIC: Final = 0xC1
ENVELOPE_VERSION: Final = 1
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
KEY_SIZES: Final = (16, 24, 32)
#: longest sender name in a header (a member name is at most 128 characters)
MAX_NAME_BYTES: Final = 255
_TS = struct.Struct(">Q")
_FIXED: Final = 4 + _TS.size + NONCE_SIZE  # magic, version, kind, name_len


class Kind(IntEnum):
    """What an envelope carries; authenticated, so one cannot pass for another."""

    DATAGRAM = 1
    REQUEST = 2
    RESPONSE = 3


class AuthError(DecodeError):
    """A sealed input failed: not sealed, bad header, no key opens it, or replayed.

    A :class:`DecodeError`, so the shell's per-datagram handling counts and drops
    it like any other bad input; ``reason`` is one of ``unsealed``,
    ``bad_envelope``, ``bad_version``, ``auth_failed``, ``stale``, ``future``,
    ``replay``.
    """


class KeyringError(MeshError, ValueError):
    """A keyring operation was refused. ``status`` is the HTTP answer: 400 for
    a malformed key, 409 for an operation that conflicts with the keyring's
    state (removing the primary, using a key that is not installed, full)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def decode_key(text: str) -> bytes:
    """Base64 text to a key of 16, 24 or 32 bytes.

    Raises:
        KeyringError: status 400, not base64 or the wrong size.
    """
    if not isinstance(text, str):  # type: ignore[redundant-expr,unused-ignore]
        raise KeyringError("key must be a base64 string", status=400)
    try:
        key = base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyringError("key must be base64", status=400) from None
    if len(key) not in KEY_SIZES:
        raise KeyringError(
            f"key must decode to 16, 24 or 32 bytes, got {len(key)}", status=400
        )
    return key


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def generate_key(size: int = 32) -> bytes:
    """A fresh random key from the OS's CSPRNG."""
    if size not in KEY_SIZES:
        raise KeyringError(f"key size must be 16, 24 or 32, got {size}", status=400)
    return os.urandom(size)


def fingerprint(key: bytes) -> str:
    """``sha256:`` + 16 hex digits: names a key without revealing it."""
    return "sha256:" + hashlib.sha256(key).hexdigest()[:16]


def overhead(name: str) -> int:
    """Bytes an envelope adds to a payload sent by ``name``."""
    return _FIXED + len(name.encode()) + TAG_SIZE


def is_sealed(data: bytes) -> bool:
    return len(data) > 0 and data[0] == MAGIC


@attrs.frozen
class KeyInfo:
    fingerprint: str
    primary: bool


@attrs.frozen
class Envelope:
    """An opened envelope: who sent it, when (their clock, ms), and what."""

    sender: str
    kind: Kind
    timestamp_ms: int
    nonce: bytes
    payload: bytes


class _Header(NamedTuple):
    # A tuple, not attrs: built for every packet received, before anything is
    # known about it, so it should cost next to nothing.
    sender: str
    kind: Kind
    timestamp_ms: int
    nonce: bytes
    #: where the ciphertext starts (the header is data[:end])
    end: int


_KINDS: Final = {int(k): k for k in Kind}


def parse_header(data: bytes) -> _Header:
    """The envelope header, checked for shape only (nothing is authenticated yet).

    Raises:
        AuthError: ``unsealed``, ``bad_version`` or ``bad_envelope``.
    """
    if not data or data[0] != MAGIC:
        raise AuthError("not a sealed envelope", reason="unsealed")
    if len(data) < 4:
        raise AuthError("envelope header truncated", reason="bad_envelope")
    if data[1] != ENVELOPE_VERSION:
        raise AuthError(f"envelope version {data[1]} unknown", reason="bad_version")
    kind = _KINDS.get(data[2])
    if kind is None:
        raise AuthError(f"envelope kind {data[2]} unknown", reason="bad_envelope")
    name_len = data[3]
    end = _FIXED + name_len
    if name_len == 0 or len(data) < end + TAG_SIZE:
        raise AuthError("envelope truncated", reason="bad_envelope")
    try:
        sender = data[4 : 4 + name_len].decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError("sender name is not UTF-8", reason="bad_envelope") from None
    (timestamp_ms,) = _TS.unpack_from(data, 4 + name_len)
    return _Header(sender, kind, timestamp_ms, data[end - NONCE_SIZE : end], end)


class Keyring:
    """The installed keys; the first is the primary.

    Args:
        keys: the initial keys, primary first (at least one).
        max_keys: most keys installed at once (each is tried on every open).

    Raises:
        KeyringError: no key, a malformed key, or more than ``max_keys``.
    """

    def __init__(self, keys: Sequence[bytes], *, max_keys: int = 16) -> None:
        if not keys:
            raise KeyringError("a keyring needs at least one key", status=400)
        self._max_keys = max_keys
        self._keys: dict[bytes, AESGCM] = {}
        self._primary = keys[0]
        for key in keys:
            self.install(key)

    @property
    def primary(self) -> bytes:
        return self._primary

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def list(self) -> list[KeyInfo]:
        """The keys by fingerprint, primary first."""
        infos = [KeyInfo(fingerprint(self._primary), True)]
        infos += [
            KeyInfo(fingerprint(k), False) for k in self._keys if k != self._primary
        ]
        return infos

    def install(self, key: bytes) -> str:
        """Add ``key`` for opening (idempotent); returns its fingerprint."""
        _check_key(key)
        if key not in self._keys:
            if len(self._keys) >= self._max_keys:
                raise KeyringError(
                    f"keyring is full ({self._max_keys} keys); remove one first",
                    status=409,
                )
            self._keys[key] = AESGCM(key)
        return fingerprint(key)

    def use(self, key: bytes) -> str:
        """Make an installed ``key`` the primary (idempotent)."""
        _check_key(key)
        if key not in self._keys:
            raise KeyringError(
                f"key {fingerprint(key)} is not installed; install it first",
                status=409,
            )
        self._primary = key
        return fingerprint(key)

    def remove(self, key: bytes) -> str:
        """Remove ``key`` (idempotent if absent); never the primary."""
        _check_key(key)
        if key == self._primary:
            raise KeyringError(
                f"key {fingerprint(key)} is the primary; use another key first",
                status=409,
            )
        self._keys.pop(key, None)
        return fingerprint(key)

    def seal(
        self,
        payload: bytes,
        *,
        sender: str,
        kind: Kind,
        now: float,
        bind: bytes = b"",
        nonce: bytes | None = None,
    ) -> bytes:
        """Encrypt and authenticate ``payload`` with the primary key.

        Args:
            sender: our member name (authenticated, in clear).
            kind: what this is; the receiver insists on the kind it expects.
            now: our wall clock, seconds (the replay timestamp).
            bind: context both sides know that is not sent.
            nonce: 12 bytes; random by default (tests pass their own).
        """
        name = sender.encode()
        if not 0 < len(name) <= MAX_NAME_BYTES:
            raise KeyringError("sender name must be 1..255 bytes", status=400)
        if nonce is None:
            nonce = os.urandom(NONCE_SIZE)
        header = (
            bytes((MAGIC, ENVELOPE_VERSION, int(kind), len(name)))
            + name
            + _TS.pack(max(0, int(now * 1000)))
            + nonce
        )
        return header + self._keys[self._primary].encrypt(nonce, payload, header + bind)

    def open(self, data: bytes, *, kind: Kind, bind: bytes = b"") -> Envelope:
        """Authenticate and decrypt; the primary is tried first, then the rest.

        Raises:
            AuthError: not sealed, a bad header, the wrong kind, or no key opens
                it (``auth_failed``). Replays are :class:`ReplayGuard`'s job.
        """
        header = parse_header(data)
        if header.kind is not kind:
            raise AuthError(
                f"expected a {kind.name.lower()} envelope, got "
                f"{header.kind.name.lower()}",
                reason="bad_envelope",
            )
        aad = data[: header.end] + bind
        ciphertext = data[header.end :]
        primary = self._keys[self._primary]
        for aead in (primary, *(a for a in self._keys.values() if a is not primary)):
            try:
                payload = aead.decrypt(header.nonce, ciphertext, aad)
            except InvalidTag:
                continue
            return Envelope(
                header.sender, header.kind, header.timestamp_ms, header.nonce, payload
            )
        raise AuthError("no installed key opens this envelope", reason="auth_failed")


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) not in KEY_SIZES:  # type: ignore[redundant-expr,unused-ignore]
        raise KeyringError("key must be 16, 24 or 32 bytes", status=400)


class ReplayGuard:
    """Accept each (timestamp, nonce) once within ``window`` seconds of ``now``.

    Args:
        window: how far a sender's clock may be from ours, seconds.
        max_entries: most nonces remembered (the bound; see module docstring).
    """

    def __init__(self, window: float, max_entries: int) -> None:
        self._window_ms = int(window * 1000)
        self._max = max_entries
        self._seen: set[bytes] = set()
        self._heap: list[tuple[int, bytes]] = []
        #: timestamps at or below this are refused (raised by evictions)
        self._floor_ms = -1
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, timestamp_ms: int, nonce: bytes, now: float) -> None:
        """Record the envelope or raise.

        Raises:
            AuthError: ``stale`` (older than the window or the floor),
                ``future`` (ahead of the window) or ``replay`` (nonce seen).
        """
        now_ms = int(now * 1000)
        cutoff = now_ms - self._window_ms
        heap = self._heap
        while heap and heap[0][0] < cutoff:
            _, old = heapq.heappop(heap)
            self._seen.discard(old)
        if timestamp_ms < cutoff or timestamp_ms <= self._floor_ms:
            raise AuthError("envelope older than the replay window", reason="stale")
        if timestamp_ms > now_ms + self._window_ms:
            raise AuthError("envelope from beyond the replay window", reason="future")
        if nonce in self._seen:
            raise AuthError("envelope replayed", reason="replay")
        self._seen.add(nonce)
        heapq.heappush(heap, (timestamp_ms, nonce))
        while len(self._seen) > self._max:
            ts, old = heapq.heappop(heap)
            self._seen.discard(old)
            self._floor_ms = max(self._floor_ms, ts)
            self.evictions += 1


class SourceThrottle:
    """A per-source budget of *refused* datagrams (a token bucket each).

    Every datagram a source sends that is refused (unauthenticated, replayed,
    undecodable) costs one token; tokens come back at ``rate`` per second up to
    ``burst``. A source without a token has its datagrams dropped unread, for
    the price of a dict lookup instead of an AES-GCM attempt and a decode, so
    one flooding source cannot take the CPU (and then the kernel buffer) that
    the other members' probes and acks need. Members whose packets are good
    never spend a token. At most ``max_sources`` sources are tracked; past it
    the oldest entry is forgotten (it starts again with a full bucket).

    Args:
        rate: refused datagrams per second a source may send indefinitely.
        burst: refused datagrams a source may send at once.
        max_sources: sources remembered.
    """

    def __init__(self, rate: float, burst: int, max_sources: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max = max_sources
        #: source -> (tokens, at)
        self._buckets: dict[object, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def blocked(self, source: object, now: float) -> bool:
        """True when ``source`` has no token left (its datagram is dropped)."""
        bucket = self._buckets.get(source)
        if bucket is None:
            return False
        tokens, at = bucket
        return tokens + (now - at) * self._rate < 1.0

    def refused(self, source: object, now: float) -> None:
        """Charge ``source`` one token for a refused datagram."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self._max:
                del self._buckets[next(iter(self._buckets))]
            tokens = self._burst
        else:
            tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
        self._buckets[source] = (tokens - 1.0, now)

"""The route table's values and its clock: what a write is, what a stored
route is, how versions order, and the hybrid logical clock behind them.

Apart from :class:`~mesh.core.routes.RouteTable` because every layer uses
these (codecs, the push queues, the API, embedders) and none of them needs the
table itself; ``mesh.core.routes`` re-exports them, its import path for
callers. No I/O and no clock reading here either: wall-clock milliseconds
come in with each call.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping
from typing import NamedTuple

import msgspec

__all__ = [
    "MAX_U64",
    "HybridClock",
    "Outcome",
    "OutcomeStatus",
    "Route",
    "Version",
    "Write",
    "version_ms",
]

_HLC_LOGICAL_BITS = 16
#: the largest revision (and change index) the contract takes: 2**64 - 1
MAX_U64 = (1 << 64) - 1


class Version(msgspec.Struct, frozen=True, order=True, gc=False):
    """Total order of writes to one key: revision, then HLC, then origin.

    A struct in C, not an attrs class: every replica builds one per route it
    receives and compares two on every overwrite, and construction and
    ordering run in C (attrs' generated ``<`` took 4 µs, 70x a tuple's).
    Compared field by field in that order, as a tuple would be. Never
    tracked by the cyclic collector (``gc=False``; it holds no containers):
    see :class:`Route`.
    """

    revision: int
    hlc: int
    origin: str

    def __str__(self) -> str:
        # Fixed-width numbers: the opaque string sorts like the version itself.
        # (str.zfill pads as the format spec 020d does for these non-negative
        # numbers, in about half its time: every stored route's answer shows
        # its version, a batch call's up to 1,000 of them)
        return f"{str(self.revision).zfill(20)}.{str(self.hlc).zfill(20)}.{self.origin}"

    @classmethod
    def parse(cls, text: str) -> Version:
        """Inverse of ``str``; raises ValueError on anything else."""
        revision, hlc, origin = text.split(".", 2)
        if len(revision) != 20 or len(hlc) != 20 or not origin:
            raise ValueError(f"not a version: {text!r}")
        return cls(int(revision), int(hlc), origin)


_ZERO_VERSION = Version(0, 0, "")


_NO_META: Mapping[str, str] = types.MappingProxyType({})


class Route(msgspec.Struct, frozen=True, gc=False):
    """One key's current state; ``deleted`` marks a tombstone.

    A struct in C (msgspec), not an attrs class or a named tuple: every
    replica builds one per route pushed to it (a frozen attrs class took
    1.34 µs to build, a named tuple 0.49, this ~0.1), and holds one per key
    for as long as the key lives. ``gc=False`` keeps them, and the dicts
    that hold only them and strings, out of the cyclic collector: with named
    tuples a full collection walked two objects per entry, ~0.6 s with the
    loop held at 10^6 routes (docs/benchmarks.md, "Thirteenth round"). A
    route refers to strings, its version and its meta map of strings, never
    to itself, so it can be in no cycle the collector would have to break.
    Immutable; its repr leaves out target and meta, which may carry access
    tokens.
    """

    key: str
    target: str
    meta: Mapping[str, str] = _NO_META
    version: Version = _ZERO_VERSION
    deleted: bool = False

    def __repr__(self) -> str:
        return (
            f"Route(key={self.key!r}, version={self.version!r}, "
            f"deleted={self.deleted!r})"
        )

    def to_json(self) -> dict[str, object]:
        """The contract's route object."""
        return {
            "key": self.key,
            "target": self.target,
            "meta": dict(self.meta),
            "version": str(self.version),
            "origin": self.version.origin,
            "revision": self.version.revision,
        }


class OutcomeStatus(enum.Enum):
    APPLIED = "applied"  # stored: newer than what we had
    STALE = "stale"  # older than what we have; nothing changed
    DUPLICATE = "duplicate"  # the very version we have; nothing changed
    CONFLICT = "conflict"  # a client's revision older than ours (HTTP 409)
    INVALID = "invalid"  # fails the contract's limits (HTTP 400)
    FULL = "full"  # table at max_routes (HTTP 507)
    EXPIRED = "expired"  # older than the GC horizon for a key we lack: refused
    UNAVAILABLE = "unavailable"  # a client write before we caught up (HTTP 503)


class Outcome(NamedTuple):
    """What applying a write did; the API maps it to a status code (a named
    tuple: one per item of a batch call)."""

    status: OutcomeStatus
    route: Route | None = None  # the stored route after the call
    reason: str = ""

    @property
    def changed(self) -> bool:
        return self.status is OutcomeStatus.APPLIED


class Write(NamedTuple):
    """One client write (or delete) for :meth:`NodeCore.write_routes`; a
    named tuple (one per item of a batch call, gone once it is answered),
    shown like :class:`Route` without target and meta, which may carry
    access tokens."""

    key: str
    target: str
    meta: Mapping[str, str] = _NO_META
    revision: int | None = None
    deleted: bool = False

    def __repr__(self) -> str:
        return (
            f"Write(key={self.key!r}, revision={self.revision!r}, "
            f"deleted={self.deleted!r})"
        )


def version_ms(version: Version) -> int:
    """Wall-clock milliseconds of the write (the HLC's physical part)."""
    return version.hlc >> _HLC_LOGICAL_BITS


class HybridClock:
    """Hybrid logical clock: ``(wall_ms << 16) | counter`` (Kulkarni et al.)."""

    __slots__ = ("clamped", "last", "max_skew_ms")

    def __init__(self, max_skew_ms: int) -> None:
        self.max_skew_ms = max_skew_ms
        self.last = 0
        #: remote timestamps refused as too far ahead (a metric)
        self.clamped = 0

    def increment(self, wall_ms: int) -> int:
        """A timestamp for a local write: above everything seen so far."""
        self.last = max(self.last + 1, wall_ms << _HLC_LOGICAL_BITS)
        return self.last

    def witness(self, remote: int, wall_ms: int) -> None:
        """Move past a remote timestamp unless it is too far in the future."""
        if (remote >> _HLC_LOGICAL_BITS) > wall_ms + self.max_skew_ms:
            self.clamped += 1
            return
        self.last = max(self.last, remote)

"""The replicated route table: versions, a hybrid logical clock, tombstones.

Theory of operation. A route is ``key -> (target, meta)`` with a :class:`Version`
that totally orders every write to that key across the mesh:

    (revision, hlc, origin)

``revision`` is the client's own version from its source of truth when it gives
one (a write without one inherits the stored revision, so it orders after it by
HLC); ``hlc`` is the accepting node's hybrid logical clock (milliseconds << 16 |
counter), so causally later writes sort later even with skewed wall clocks;
``origin`` breaks the last ties. Applying a route keeps whichever of stored and
incoming has the larger version, so ``apply`` is idempotent, commutative and
associative: replicas that see the same writes in any order, any number of times,
end identical (last writer wins on the version, a CRDT register per key). A delete
is a write of a *tombstone*, ordered like any other write, so a stale update can
never resurrect a deleted key.

The clock never goes backwards and witnesses remote HLCs, but clamps any that lie
more than ``hlc_max_skew`` ahead of our wall clock: a peer with a clock far in the
future cannot drag ours (and every later write) with it. Its write is still stored
with its own version: changing a version would break convergence.

What it does not know: who the peers are, how routes travel, or what time it is;
wall-clock milliseconds come in with each call.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping

import attrs

__all__ = [
    "MAX_META_ENTRIES",
    "MAX_META_LEN",
    "MAX_TARGET_LEN",
    "HybridClock",
    "Outcome",
    "OutcomeStatus",
    "Route",
    "RouteTable",
    "Version",
    "validate_route_fields",
]

#: contract limits (docs/contract.md), not tunables
KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}")
MAX_TARGET_LEN = 1024
MAX_META_ENTRIES = 32
MAX_META_LEN = 256
_HLC_LOGICAL_BITS = 16
_HLC_LOGICAL_MASK = (1 << _HLC_LOGICAL_BITS) - 1
_MAX_U64 = (1 << 64) - 1


@attrs.frozen(order=True)
class Version:
    """Total order of writes to one key: revision, then HLC, then origin."""

    revision: int
    hlc: int
    origin: str

    def __str__(self) -> str:
        # Fixed-width numbers: the opaque string sorts like the version itself.
        return f"{self.revision:020d}.{self.hlc:020d}.{self.origin}"

    @classmethod
    def parse(cls, text: str) -> Version:
        """Inverse of ``str``; raises ValueError on anything else."""
        revision, hlc, origin = text.split(".", 2)
        if len(revision) != 20 or len(hlc) != 20 or not origin:
            raise ValueError(f"not a version: {text!r}")
        return cls(int(revision), int(hlc), origin)


@attrs.frozen
class Route:
    """One key's current state; ``deleted`` marks a tombstone."""

    key: str
    target: str = attrs.field(repr=False)  # may carry access tokens
    meta: Mapping[str, str] = attrs.field(repr=False, factory=dict)
    version: Version = Version(0, 0, "")
    deleted: bool = False

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


@attrs.frozen
class Outcome:
    """What applying a write did; the API maps it to a status code."""

    status: OutcomeStatus
    route: Route | None = None  # the stored route after the call
    reason: str = ""

    @property
    def changed(self) -> bool:
        return self.status is OutcomeStatus.APPLIED


def validate_route_fields(
    key: object, target: object = "x", meta: object = None
) -> str | None:
    """Check the contract's limits; returns an error message or None."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        return f"key must match ^{KEY_RE.pattern}$"
    if not isinstance(target, str) or not 1 <= len(target) <= MAX_TARGET_LEN:
        return f"target must be a string of 1..{MAX_TARGET_LEN} characters"
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        return "meta must be an object of string values"
    if len(meta) > MAX_META_ENTRIES:
        return f"meta must have at most {MAX_META_ENTRIES} entries, got {len(meta)}"
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            return "meta keys and values must be strings"
        if len(k) > MAX_META_LEN or len(v) > MAX_META_LEN:
            return f"meta keys and values must be at most {MAX_META_LEN} characters"
    return None


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


class RouteTable:
    """Key -> newest :class:`Route` (tombstones included), with a change index.

    ``index`` increases by one on every applied change; it orders changes on this
    node (watchers, push low-water marks), never across nodes.
    """

    def __init__(self, *, origin: str, max_routes: int, hlc_max_skew_ms: int) -> None:
        self.origin = origin
        self.max_routes = max_routes
        self.clock = HybridClock(hlc_max_skew_ms)
        self._routes: dict[str, Route] = {}
        self.index = 0
        self.tombstones = 0

    def __len__(self) -> int:
        """Live routes (tombstones excluded)."""
        return len(self._routes) - self.tombstones

    def __iter__(self) -> Iterator[Route]:
        """Every entry, tombstones included."""
        return iter(self._routes.values())

    def get(self, key: str) -> Route | None:
        """The stored entry for ``key``, tombstone included."""
        return self._routes.get(key)

    def live(self, prefix: str = "") -> list[Route]:
        """Live routes whose key starts with ``prefix``, sorted by key."""
        return sorted(
            (
                r
                for r in self._routes.values()
                if not r.deleted and r.key.startswith(prefix)
            ),
            key=lambda r: r.key,
        )

    def write(
        self,
        key: str,
        target: str,
        meta: Mapping[str, str],
        *,
        revision: int | None,
        wall_ms: int,
        deleted: bool = False,
    ) -> Outcome:
        """A client's write (or delete) accepted here: version it and apply."""
        error = validate_route_fields(key, "x" if deleted else target, meta)
        if error is None and revision is not None and not 0 <= revision <= _MAX_U64:
            error = "revision must be an integer in 0..2**64-1"
        if error is not None:
            return Outcome(OutcomeStatus.INVALID, self._routes.get(key), error)
        current = self._routes.get(key)
        if (
            current is not None
            and revision is not None
            and revision < current.version.revision
        ):
            return Outcome(
                OutcomeStatus.CONFLICT,
                current,
                f"revision {revision} is older than the stored revision "
                f"{current.version.revision}",
            )
        if revision is None:
            revision = current.version.revision if current is not None else 0
        hlc = self.clock.increment(wall_ms)
        if current is not None and current.version.revision == revision:
            # A write must supersede what it replaces, even one whose HLC was
            # clamped as too far ahead of our clock.
            hlc = max(hlc, current.version.hlc + 1)
        version = Version(revision, hlc, self.origin)
        route = Route(
            key,
            "" if deleted else target,
            {} if deleted else dict(meta),
            version,
            deleted,
        )
        return self._store(route, current)

    def apply(self, route: Route, *, wall_ms: int) -> Outcome:
        """A write from a peer (push or repair): keep the larger version."""
        error = validate_route_fields(
            route.key, "x" if route.deleted else route.target, route.meta
        )
        if error is not None:
            return Outcome(OutcomeStatus.INVALID, None, error)
        self.clock.witness(route.version.hlc, wall_ms)
        current = self._routes.get(route.key)
        if current is not None:
            if route.version == current.version:
                return Outcome(OutcomeStatus.DUPLICATE, current)
            if route.version < current.version:
                return Outcome(OutcomeStatus.STALE, current)
        return self._store(route, current)

    def _store(self, route: Route, current: Route | None) -> Outcome:
        if current is None and len(self._routes) >= self.max_routes:
            return Outcome(
                OutcomeStatus.FULL, None, f"table holds max_routes={self.max_routes}"
            )
        self._routes[route.key] = route
        if current is not None and current.deleted:
            self.tombstones -= 1
        if route.deleted:
            self.tombstones += 1
        self.index += 1
        return Outcome(OutcomeStatus.APPLIED, route)

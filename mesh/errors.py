"""The mesh exception family.

One tree, rooted at :class:`MeshError`, so callers can catch everything mesh raises
with one clause and tell local mistakes (bugs, bad configuration) from remote ones
(a peer or client sent garbage). Mirrors h11's split of local vs remote protocol
errors.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DecodeError",
    "LocalProtocolError",
    "MeshError",
    "PeerUnreachable",
    "ProtocolError",
    "PushTimeout",
    "RemoteProtocolError",
    "TransportError",
]


class MeshError(Exception):
    """Base of every exception mesh raises on purpose."""


class ConfigError(MeshError, ValueError):
    """A flag, environment variable or TOML value is invalid.

    Raised at start-up, before any socket is opened; the CLI prints the message and
    exits with status 2. Never raised at run time.
    """


class ProtocolError(MeshError):
    """Abstract: someone broke the protocol. Use a subclass."""


class LocalProtocolError(ProtocolError):
    """We asked the core for something illegal: a bug in the caller, not the peer."""


class RemoteProtocolError(ProtocolError):
    """A peer or client sent something illegal.

    The shell catches this per datagram or request, counts it and carries on; it
    never propagates into a loop.
    """

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        #: a short stable label used as the metric label (``dropped_total{reason=}``)
        self.reason = reason


class DecodeError(RemoteProtocolError):
    """The codec could not turn bytes into a valid message (bad msgpack, unknown
    version, schema mismatch, limit exceeded)."""


class TransportError(MeshError):
    """Shell only: talking to a peer failed. httpx/OSError are mapped to these at the
    boundary with ``raise ... from exc``."""


class PeerUnreachable(TransportError):
    """The peer could not be reached (connect error, refused, reset)."""


class PushTimeout(TransportError):
    """The peer did not answer within the per-request or per-peer deadline."""

"""mesh: a gossip peer mesh node (SWIM + Lifeguard membership, replicated routes)."""

from __future__ import annotations

from .config import Config
from .errors import (
    ConfigError,
    DecodeError,
    LocalProtocolError,
    MeshError,
    ProtocolError,
    RemoteProtocolError,
    TransportError,
)
from .messages import MemberStatus

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "DecodeError",
    "LocalProtocolError",
    "MemberStatus",
    "MeshError",
    "ProtocolError",
    "RemoteProtocolError",
    "TransportError",
    "__version__",
]

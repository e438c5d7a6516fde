"""mesh: a gossip peer mesh node (SWIM + Lifeguard membership, replicated routes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .embed import Node, open_node

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "DecodeError",
    "LocalProtocolError",
    "MemberStatus",
    "MeshError",
    "Node",
    "ProtocolError",
    "RemoteProtocolError",
    "TransportError",
    "__version__",
    "open_node",
]

# The embedding API pulls in trio, httpx and the whole shell: load it on first
# use, so ``import mesh.core`` (sans-IO, see tests/unit/test_layering.py) and
# ``mesh version`` stay light.
_LAZY = {"open_node", "Node"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import embed

        return getattr(embed, name)
    raise AttributeError(f"module 'mesh' has no attribute {name!r}")

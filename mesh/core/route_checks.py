"""The contract's limits on a route, and the checks that hold a key, target
and meta to them: one place for the API, the codec, the route table and the
client (which must not load the table, and with it numpy, to check a key).

Column checks (:func:`keys_ok`, :func:`targets_ok`, :func:`ascii_targets_ok`,
:func:`ascii_metas_ok`) check a whole batch's field at once, each step one
pass in C: every replica decodes every route written in the mesh, and a check
per route costs about as much as storing it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "KEY_RE",
    "MAX_META_ENTRIES",
    "MAX_META_LEN",
    "MAX_TARGET_LEN",
    "ascii_metas_ok",
    "ascii_targets_ok",
    "is_unicode",
    "keys_ok",
    "targets_ok",
    "validate_route_fields",
]

#: contract limits (docs/contract.md), not tunables
KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}")
MAX_TARGET_LEN = 1024
MAX_META_ENTRIES = 32
MAX_META_LEN = 256
_key_ok = KEY_RE.fullmatch


def is_unicode(text: str) -> bool:
    """No lone surrogates, so UTF-8 can carry it. JSON's ``"\\ud800"`` escape
    (or a command-line argument that is not UTF-8) decodes to a ``str`` no
    UTF-8 encoder accepts: stored, it would fail every push and every
    anti-entropy page that carries it (ASCII, the common case, is one check)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_NOT_UNICODE = "strings must be valid Unicode (no lone surrogates)"


def validate_route_fields(
    key: object, target: object = "x", meta: object = None
) -> str | None:
    """Check the contract's limits; returns an error message or None."""
    if not isinstance(key, str) or not _key_ok(key):
        return f"key must match ^{KEY_RE.pattern}$"
    if not isinstance(target, str) or not 1 <= len(target) <= MAX_TARGET_LEN:
        return f"target must be a string of 1..{MAX_TARGET_LEN} characters"
    if not is_unicode(target):
        return f"target: {_NOT_UNICODE}"
    if meta is None or meta == {}:
        return None
    # (a dict first: the ABC check is several times slower, on every route)
    if not isinstance(meta, dict) and not isinstance(meta, Mapping):
        return "meta must be an object of string values"
    if len(meta) > MAX_META_ENTRIES:
        return f"meta must have at most {MAX_META_ENTRIES} entries, got {len(meta)}"
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            return "meta keys and values must be strings"
        if len(k) > MAX_META_LEN or len(v) > MAX_META_LEN:
            return f"meta keys and values must be at most {MAX_META_LEN} characters"
        if not is_unicode(k) or not is_unicode(v):
            return f"meta: {_NOT_UNICODE}"
    return None


# Every key of a batch at once: the keys joined by newlines (which no key
# holds) match this when each one matches KEY_RE.
_keys_ok = re.compile(rf"(?:{KEY_RE.pattern}\n)*{KEY_RE.pattern}").fullmatch
_STR_TYPE = {str}


def keys_ok(keys: Sequence[str]) -> bool:
    """Every one of ``keys`` (strings) is a valid key: one regex over them
    joined, for a batch's column check (a key holding a newline would pass
    as two, so newlines are counted)."""
    joined = "\n".join(keys)
    return joined.count("\n") == len(keys) - 1 and _keys_ok(joined) is not None


def targets_ok(targets: Sequence[str]) -> bool:
    """Every one of ``targets`` (strings) is of 1..MAX_TARGET_LEN characters:
    a column check (True for none)."""
    return (
        min(map(len, targets), default=1) >= 1
        and max(map(len, targets), default=0) <= MAX_TARGET_LEN
    )


def ascii_targets_ok(targets: Sequence[str]) -> bool:
    """:func:`targets_ok`, in ASCII (False may also mean "not ASCII", as for
    :func:`ascii_metas_ok`)."""
    return targets_ok(targets) and "".join(targets).isascii()


def ascii_metas_ok(metas: Sequence[dict[Any, Any]]) -> bool:
    """Every one of ``metas`` (dicts) is within the meta limits, in ASCII: a
    column check, each step one pass in C. False may also mean "not ASCII":
    the caller then checks map by map (:func:`validate_route_fields`)."""
    if not metas:
        return True
    if max(map(len, metas)) > MAX_META_ENTRIES:
        return False
    names = list(itertools.chain.from_iterable(metas))
    if not names:
        return True
    values = list(itertools.chain.from_iterable(map(dict.values, metas)))
    return (
        set(map(type, names)) == _STR_TYPE
        and set(map(type, values)) == _STR_TYPE
        and max(map(len, names)) <= MAX_META_LEN
        and max(map(len, values)) <= MAX_META_LEN
        and "".join(names).isascii()
        and "".join(values).isascii()
    )

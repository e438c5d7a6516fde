"""Hypothesis strategies for wire values.

Every value drawn is valid: it survives ``encode -> decode`` unchanged, so a test
that gets a ``DecodeError`` from one of these has found a codec bug. Tag keys use
the alphabet :class:`mesh.Config` accepts, so the same tags also fit a config.
Hostile inputs are built in the tests themselves, not here.
"""

from __future__ import annotations

import string

from hypothesis import strategies as st

from ..codec import MAX_TAG_KEY_LEN, MAX_TAG_VALUE_LEN
from ..messages import (
    Ack,
    Address,
    Alive,
    Dead,
    MemberState,
    MemberStatus,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
)

__all__ = [
    "addresses",
    "member_states",
    "messages",
    "names",
    "push_pulls",
    "tags",
    "u64s",
]

_NAME_FIRST = string.ascii_letters + string.digits
_NAME_REST = _NAME_FIRST + "._:@-"
_TAG_KEY_ALPHABET = _NAME_FIRST + "_.:-"


def u64s() -> st.SearchStrategy[int]:
    """Sequence numbers and incarnations: the full unsigned 64-bit range."""
    return st.integers(min_value=0, max_value=2**64 - 1)


def names() -> st.SearchStrategy[str]:
    """Member names: ``[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}``."""
    return st.builds(
        str.__add__, st.sampled_from(_NAME_FIRST), st.text(_NAME_REST, max_size=127)
    )


def addresses() -> st.SearchStrategy[Address]:
    """``(host, port)`` with host an IPv4 or IPv6 literal, port in 0..65535."""
    return st.tuples(
        st.ip_addresses().map(str), st.integers(min_value=0, max_value=65535)
    )


def tags(*, max_size: int = 8) -> st.SearchStrategy[dict[str, str]]:
    """Tag maps; values are any text (non-ASCII included) up to the codec limit."""
    return st.dictionaries(
        st.text(_TAG_KEY_ALPHABET, min_size=1, max_size=MAX_TAG_KEY_LEN),
        st.text(max_size=MAX_TAG_VALUE_LEN),
        max_size=max_size,
    )


def messages() -> st.SearchStrategy[Message]:
    """Any datagram message."""
    return st.one_of(
        st.builds(Ping, seq=u64s(), target=names(), source=names()),
        st.builds(
            PingReq,
            seq=u64s(),
            target=names(),
            target_addr=addresses(),
            source=names(),
            nack=st.booleans(),
        ),
        st.builds(Ack, seq=u64s()),
        st.builds(Nack, seq=u64s()),
        st.builds(
            Alive, incarnation=u64s(), name=names(), addr=addresses(), tags=tags()
        ),
        st.builds(Suspect, incarnation=u64s(), name=names(), sender=names()),
        st.builds(Dead, incarnation=u64s(), name=names(), sender=names()),
    )


def member_states() -> st.SearchStrategy[MemberState]:
    """One row of a member-table exchange."""
    return st.builds(
        MemberState,
        name=names(),
        addr=addresses(),
        incarnation=u64s(),
        status=st.sampled_from(MemberStatus),
        tags=tags(),
    )


def push_pulls(*, max_members: int = 20) -> st.SearchStrategy[PushPull]:
    """Member-table exchange bodies (small: size is not what these test)."""
    return st.builds(
        PushPull,
        join=st.booleans(),
        members=st.lists(member_states(), max_size=max_members).map(tuple),
        sender=st.one_of(st.just(""), names()),
    )

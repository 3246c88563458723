"""Sets of ids kept as sorted 8-byte digests in one `bytes` value.

A customer's state must remember every money fact it applied and every return it settled, for
ever, or a redelivery years later would count twice. Ids are up to 240 characters; an 8-byte
BLAKE2b digest keeps the set at 8 bytes a member. Sorted, the set is canonical (the same members
give the same bytes in any insertion order, so states compare equal) and a lookup is a binary
search over slices, with no Python set to build when a state is decoded.

Two different ids share a digest with probability about n / 2**64 per lookup: for a customer with
100,000 remembered ids, about 5e-15.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SIZE = 8


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=SIZE).digest()


def _position(digests: bytes, member: bytes) -> int:
    """Index (in members) of the first stored digest >= member."""
    low, high = 0, len(digests) // SIZE
    while low < high:
        middle = (low + high) // 2
        if digests[middle * SIZE : (middle + 1) * SIZE] < member:
            low = middle + 1
        else:
            high = middle
    return low


def contains(digests: bytes, member: bytes) -> bool:
    at = _position(digests, member) * SIZE
    return digests[at : at + SIZE] == member


def added(digests: bytes, member: bytes) -> bytes:
    """`digests` with `member` in it (the same object when it already was)."""
    at = _position(digests, member) * SIZE
    if digests[at : at + SIZE] == member:
        return digests
    return digests[:at] + member + digests[at:]


def of(ids: Iterable[str]) -> bytes:
    return b"".join(sorted({digest(text) for text in ids}))


def count(digests: bytes) -> int:
    return len(digests) // SIZE

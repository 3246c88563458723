"""Digest sets: membership, canonical bytes whatever the insertion order, 8 bytes a member."""

from __future__ import annotations

from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from streams import digests

ids = st.lists(st.text(min_size=1, max_size=40), max_size=60)


@settings(max_examples=200, deadline=None)
@given(ids, ids)
def test_members_are_found_and_others_are_not(members: list[str], others: list[str]) -> None:
    stored = b""
    for text in members:
        stored = digests.added(stored, digests.digest(text))
    assert stored == digests.of(members)
    assert digests.count(stored) == len(set(members))
    for text in members:
        assert digests.contains(stored, digests.digest(text))
    for text in set(others) - set(members):
        assert not digests.contains(stored, digests.digest(text))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=20), unique=True, max_size=40), st.randoms())
def test_the_bytes_do_not_depend_on_the_insertion_order(members: list[str], random: Random) -> None:
    shuffled = list(members)
    random.shuffle(shuffled)
    forward = b""
    for text in members:
        forward = digests.added(forward, digests.digest(text))
    backward = b""
    for text in shuffled:
        backward = digests.added(backward, digests.digest(text))
    assert forward == backward


def test_adding_a_member_again_returns_the_same_bytes() -> None:
    stored = digests.of(["a", "b"])
    assert digests.added(stored, digests.digest("a")) is stored
    assert len(stored) == 2 * digests.SIZE


def test_the_empty_set_contains_nothing() -> None:
    assert not digests.contains(b"", digests.digest(""))

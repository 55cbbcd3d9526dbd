"""Decoding skips counting msgpack values for headers of at most half the object budget
(protocols.envelope): a header of n bytes decodes, payload included, to at most 2n counted
values, so such a header can never exceed the budget. These tests hold that bound, and check
that a header just over half the budget is still counted and refused."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.codec import ObjectBudget, unpack_limited
from protocols.envelope import decode_envelope
from protocols.errors import ProtocolError
from tests.unit.protocols.payloads import header_of, pack

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
    st.text(max_size=4), st.binary(max_size=4),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 9)), children, max_size=6),
    ),
    max_leaves=60,
)


def counted_values(packed: bytes) -> int:
    budget = ObjectBudget(1 << 30)
    unpack_limited(packed, budget=budget)
    return budget.limit - budget.left


@settings(max_examples=300, database=None, deadline=None)
@given(VALUES)
def test_msgpack_bytes_decode_to_at_most_twice_as_many_counted_values(value: Any):
    packed = msgpack.packb(value, use_bin_type=True)
    assert counted_values(packed) <= 2 * len(packed)


@pytest.mark.parametrize("depth", [1, 10, 100])
def test_nested_empty_lists_come_closest_to_the_bound(depth: int):
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    packed = msgpack.packb(value)
    assert len(packed) == depth
    assert counted_values(packed) == 2 * depth - 1


def test_a_header_over_half_the_budget_is_still_counted_and_refused():
    payload = msgpack.packb([[]] * 700)
    header = pack({**header_of(), "payload": payload})
    limit = counted_values(header) + counted_values(payload) - 1
    assert 2 * len(header) > limit  # so decoding must count, and stop one value short
    with pytest.raises(ProtocolError, match=f"more than {limit} msgpack values"):
        decode_envelope([header], max_header_objects=limit)
    assert decode_envelope([header], max_header_objects=limit + 1).payload == [[]] * 700

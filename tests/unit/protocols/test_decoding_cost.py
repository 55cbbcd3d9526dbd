"""A message cannot make its receiver do unbounded work: the header has a size limit of
its own (far below the tensor frames'), and decoding stops once a message has built
more msgpack values than a budget allows."""

from __future__ import annotations

import msgpack
import pytest
import torch

from protocols.codec import ObjectBudget, unpack_limited
from protocols.envelope import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_OBJECTS,
    decode_envelope,
    encode_envelope,
    read_return_address,
)
from protocols.errors import ProtocolError
from tests.unit.protocols.payloads import header_of, make_envelope, pack


def test_the_default_header_limit_is_a_few_megabytes_and_far_below_the_message_limit():
    assert 1 << 20 <= DEFAULT_MAX_HEADER_BYTES <= 16 << 20


def test_a_header_over_its_limit_is_refused_before_it_is_parsed_even_when_tensors_are_small():
    header = pack({**header_of(), "payload": pack({"text": "x" * 5000})})
    with pytest.raises(ProtocolError, match=r"header frame of \d+ bytes exceeds the limit of 4096 bytes"):
        decode_envelope([header], max_header_bytes=4096)


def test_tensor_frames_do_not_count_against_the_header_limit():
    frames, _ = encode_envelope(make_envelope({"x": torch.zeros(10_000)}))
    assert decode_envelope(frames, max_header_bytes=4096).payload["x"].shape == (10_000,)


def test_a_payload_of_a_million_empty_lists_is_refused_by_the_object_budget():
    payload = b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\x90" * (1 << 20)  # 1 MiB: [[], [], ...]
    header = pack({**header_of(), "payload": payload})
    assert len(header) < DEFAULT_MAX_HEADER_BYTES
    with pytest.raises(ProtocolError, match="more than 100000 msgpack values"):
        decode_envelope([header], max_header_objects=100_000)


def test_header_and_payload_share_one_budget():
    envelope = make_envelope({"rows": [[1, 2, 3]] * 300})
    frames, _ = encode_envelope(envelope)
    decode_envelope(frames, max_header_objects=1_600)  # 300 lists of 3 (1200), the outer list (301), the maps
    with pytest.raises(ProtocolError, match="more than 1400 msgpack values"):
        decode_envelope(frames, max_header_objects=1_400)


def test_the_default_budget_holds_a_large_batch_of_token_ids():
    envelope = make_envelope({"prompt_ids": [list(range(1000))] * 512})
    frames, _ = encode_envelope(envelope)
    assert len(decode_envelope(frames).payload["prompt_ids"]) == 512
    assert 512 * 1001 < DEFAULT_MAX_HEADER_OBJECTS


def test_an_object_budget_counts_containers_and_their_items():
    budget = ObjectBudget(10)
    assert unpack_limited(msgpack.packb([1, 2, [3, 4]]), budget=budget) == [1, 2, [3, 4]]
    assert budget.left == 10 - (1 + 2) - (1 + 3)


def test_the_return_address_of_an_oversized_header_is_read_without_decoding_the_payload():
    header = pack({**header_of(), "payload": b"\x00" * (4 << 20)})
    message_id, sender, expects_reply = read_return_address(header)
    assert (message_id, sender, expects_reply) == (header_of()["message_id"], header_of()["sender"], header_of()["expects_reply"])


@pytest.mark.parametrize("header", [b"", b"\xc1", pack([1, 2]), pack({"message_id": 3, "sender": "a", "expects_reply": True}),
                                    pack({"message_id": "m", "sender": "a"})], ids=repr)
def test_a_header_without_a_readable_return_address_has_none(header):
    assert read_return_address(header) is None

"""Sparse deltas of one piece (runtime/weights/delta.py): the encoding chosen, the bytes it
writes (hand-computed), and bit-exact application, NaN payloads and -0.0 included."""

from __future__ import annotations

import pytest
import torch

from runtime.weights import delta
from runtime.weights.delta import BITMAP, FULL, INDICES, DeltaError, apply, choose, encode, pack_bits, payload_nbytes, unpack_bits

BF16 = torch.bfloat16


def changed_mask(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    out = torch.empty(new.numel(), dtype=torch.bool)
    delta.mark_changed(new, old, out)
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def received(piece: delta.EncodedPiece, base: torch.Tensor) -> torch.Tensor:
    """What a receiver holding `base` ends with (as runtime.weights.transfer does it)."""
    target = base.clone()
    kind, count = piece.header.tolist()
    if kind == FULL:
        target.copy_(piece.payload)
    elif piece.payload is not None:
        apply(kind, count, piece.payload.clone(), target)
    return target


def test_two_changes_in_64_bfloat16_elements_travel_as_int32_indices_then_values() -> None:
    old = torch.zeros(64, dtype=BF16)
    new = old.clone()
    new[3], new[40] = 1.0, -2.0
    piece = encode(new, changed_mask(new, old))
    assert piece.header.tolist() == [INDICES, 2]
    assert piece.payload is not None
    # indices 3 and 40 as little-endian int32 (8 bytes, already aligned), then the two
    # bfloat16 values: 1.0 is 0x3F80, -2.0 is 0xC000
    assert piece.payload.tolist() == [3, 0, 0, 0, 40, 0, 0, 0, 0x80, 0x3F, 0x00, 0xC0]
    assert piece.nbytes == 16 + 12
    assert same_bits(received(piece, old), new)


def test_every_third_of_64_elements_changed_travels_as_a_bitmap_then_values() -> None:
    old = torch.zeros(64, dtype=BF16)
    new = old.clone()
    new[::3] = 1.0  # 22 changes: indices would take 88 + 44 bytes, a bitmap 8 + 44, all 128
    piece = encode(new, changed_mask(new, old))
    assert piece.header.tolist() == [BITMAP, 22]
    assert piece.payload is not None and piece.payload.numel() == 8 + 44
    # element i is bit i % 8 of byte i // 8: 0, 3, 6 -> 0b01001001; 9, 12, 15 -> 0b10010010; ...
    assert piece.payload[:8].tolist() == [0b01001001, 0b10010010, 0b00100100, 0b01001001, 0b10010010, 0b00100100,
                                          0b01001001, 0b10010010]
    assert same_bits(received(piece, old), new)


def test_a_piece_where_most_elements_changed_travels_whole_without_a_copy() -> None:
    old = torch.zeros(64, dtype=BF16)
    new = torch.arange(64, dtype=BF16)  # 63 changes
    piece = encode(new, changed_mask(new, old))
    assert piece.header.tolist() == [FULL, 63]
    assert piece.payload is new
    assert piece.nbytes == 16 + 128


def test_an_unchanged_piece_is_its_header_alone() -> None:
    old = torch.randn(100).to(BF16)
    piece = encode(old.clone(), changed_mask(old, old))
    assert piece.header.tolist() == [INDICES, 0] and piece.payload is None and piece.nbytes == 16
    assert same_bits(received(piece, old), old)


def test_payload_sizes_and_the_choice_between_them() -> None:
    # n = 1000 bfloat16 elements: full 2000 bytes; bitmap 128 (125 padded to 8) + 2c; indices 4c (padded) + 2c
    assert payload_nbytes(FULL, 1000, 7, 2) == 2000
    assert payload_nbytes(INDICES, 1000, 7, 2) == 32 + 14
    assert payload_nbytes(BITMAP, 1000, 7, 2) == 128 + 14
    assert payload_nbytes(INDICES, 1000, 0, 2) == payload_nbytes(BITMAP, 1000, 0, 2) == 0
    assert choose(1000, 7, 2) == INDICES
    assert choose(1000, 100, 2) == BITMAP  # 400 + 200 against 128 + 200
    assert choose(1000, 936, 2) == FULL  # a bitmap (128 + 1872) would tie with full: full wins ties
    assert choose(1000, 935, 2) == BITMAP
    assert choose(1000, 0, 2, encodable=False) == FULL


def test_bits_are_packed_element_i_into_bit_i_mod_8_and_unpacked_back() -> None:
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    packed = pack_bits(mask)
    assert packed.tolist() == [0x81, 0x01]
    assert torch.equal(unpack_bits(packed, 9), mask)


SPECIALS = [float("nan"), -0.0, 0.0, float("inf"), -float("inf"), 1e-40]


@pytest.mark.parametrize("dtype", [BF16, torch.float16, torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool])
@pytest.mark.parametrize("share", [0.0, 0.01, 0.2, 0.9])
def test_applying_the_encoded_piece_to_the_base_gives_the_new_bits_exactly(dtype: torch.dtype, share: float) -> None:
    generator = torch.Generator().manual_seed(int(share * 100) + dtype.itemsize)
    numel = 1003  # not a multiple of 8
    if dtype.is_floating_point:
        old = torch.randn(numel, generator=generator).to(dtype)
        old[: len(SPECIALS)] = torch.tensor(SPECIALS).to(dtype)
    else:
        old = torch.randint(0, 2 if dtype == torch.bool else 100, (numel,), generator=generator).to(dtype)
    new = old.clone()
    flip = torch.rand(numel, generator=generator) < share
    if dtype == torch.bool:
        new[flip] = ~new[flip]
    else:
        new.view(torch.uint8).view(numel, dtype.itemsize)[flip, 0] ^= 1  # flip the lowest bit: NaN payloads, -0.0 -> tiny
    piece = encode(new, changed_mask(new, old))
    assert same_bits(received(piece, old), new)


def test_a_patch_is_brought_up_to_the_new_piece_whatever_the_encoding() -> None:
    old = torch.randn(500).to(BF16)
    for changes in (0, 3, 120, 480):
        new = old.clone()
        new[:changes] += 1
        kept = old.clone()
        encode(new, changed_mask(new, old), patch=kept)
        assert same_bits(kept, new), changes


def test_a_complex_piece_has_no_bit_view_and_travels_whole() -> None:
    old = torch.zeros(16, dtype=torch.complex64)
    new = old.clone()
    new[0] = 1j
    changed = torch.empty(16, dtype=torch.bool)
    delta.mark_changed(new, old, changed)
    assert changed.all()  # no bit view: everything counts as changed
    assert encode(new, changed).header.tolist() == [FULL, 16]


def test_a_payload_that_does_not_fit_its_piece_is_refused() -> None:
    target = torch.zeros(16, dtype=BF16)
    with pytest.raises(DeltaError, match="does not fit a piece of 16 elements"):
        apply(INDICES, 2, torch.zeros(11, dtype=torch.uint8), target)
    with pytest.raises(DeltaError, match="does not fit"):
        apply(INDICES, 17, torch.zeros(payload_nbytes(INDICES, 16, 17, 2), dtype=torch.uint8), target)
    outside = torch.zeros(12, dtype=torch.uint8)
    outside[:8].view(torch.int32).copy_(torch.tensor([1, 16], dtype=torch.int32))
    with pytest.raises(DeltaError, match="outside the piece"):
        apply(INDICES, 2, outside, target)
    bitmap = torch.zeros(payload_nbytes(BITMAP, 16, 2, 2), dtype=torch.uint8)
    bitmap[0] = 0b111  # three marked, the header says two
    with pytest.raises(DeltaError, match="marks 3 changes, the header says 2"):
        apply(BITMAP, 2, bitmap, target)
    with pytest.raises(DeltaError, match="unknown piece encoding 7"):
        payload_nbytes(7, 16, 1, 2)

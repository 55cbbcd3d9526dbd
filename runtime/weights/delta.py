"""Sparse deltas: one piece of a bucket as what changed since the previous version.

With small learning rates most bfloat16 weights keep their exact bits from one version
to the next. A piece (a slice of one bucket, one dtype, ``n`` elements of ``s`` bytes,
``c`` of them changed) then travels in whichever encoding is smallest:

    FULL     every element                                 n * s bytes
    INDICES  int32 positions of the changed elements,      4c (padded to 8) + c * s
             then their new values
    BITMAP   one bit per element, 1 where it changed       ceil(n / 8) (padded to 8) + c * s
             (element i is bit i % 8 of byte i // 8),
             then the new values in element order

Each piece of a delta version is preceded by a header, two int64 (the encoding and
``c``), so the receiver knows what follows; an unchanged piece is its header alone.
Elements compare by their bits and values are written as bits (NaN payloads and -0.0
included), so a receiver holding the base version's exact bytes ends with the new
version's exact bytes. Only dtypes of 1, 2, 4 or 8 bytes have a bit view; others
always travel FULL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FULL, INDICES, BITMAP = 0, 1, 2
KINDS = ("full", "indices", "bitmap")
HEADER_NUMEL = 2
"""int64 elements of a piece header: (encoding, changed count)."""

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_BYTE_BITS: dict[torch.device, torch.Tensor] = {}
"""Per device: int64 [256], the 8 bools of each byte value (bit i -> byte i), for `unpack_bits`."""


class DeltaError(ValueError):
    """A header or payload that does not describe a delta of this piece."""


def bits(tensor: torch.Tensor) -> torch.Tensor | None:
    """`tensor` viewed as integers of its element size (no copy); None if it has no such view."""
    kind = _BITS.get(tensor.element_size())
    if kind is None or tensor.is_complex():
        return None
    return tensor.view(kind)


def mark_changed(new: torch.Tensor, old: torch.Tensor, out: torch.Tensor) -> None:
    """``out[i] = bits(new[i]) != bits(old[i])``; tensors of a dtype without a bit view are
    all marked changed."""
    new_bits, old_bits = bits(new), bits(old)
    if new_bits is None or old_bits is None:
        out.fill_(True)
    else:
        torch.ne(new_bits, old_bits, out=out)


def _aligned(nbytes: int) -> int:
    return (nbytes + 7) // 8 * 8


def payload_nbytes(kind: int, numel: int, count: int, itemsize: int) -> int:
    """Bytes following the header of a piece of `numel` elements with `count` changed."""
    if kind == FULL:
        return numel * itemsize
    if count == 0:
        return 0
    if kind == INDICES:
        return _aligned(4 * count) + count * itemsize
    if kind == BITMAP:
        return _aligned((numel + 7) // 8) + count * itemsize
    raise DeltaError(f"unknown piece encoding {kind}")


def choose(numel: int, count: int, itemsize: int, encodable: bool = True) -> int:
    """The smallest encoding (FULL on a tie, or when the dtype has no bit view)."""
    if not encodable:
        return FULL
    sizes = {kind: payload_nbytes(kind, numel, count, itemsize) for kind in (FULL, INDICES, BITMAP)}
    if numel >= 2**31:  # int32 indices cannot name every element
        del sizes[INDICES]
    return min(sizes, key=lambda kind: (sizes[kind], kind))


@dataclass(frozen=True)
class EncodedPiece:
    """One piece of a delta version as it travels: `header`, then `payload` unless None."""

    header: torch.Tensor
    """int64 [2]: encoding, changed count."""
    payload: torch.Tensor | None
    """FULL: the piece itself; INDICES or BITMAP: uint8 bytes; None when nothing changed."""
    numel: int
    itemsize: int

    @property
    def kind(self) -> int:
        return int(self.header[0])

    @property
    def nbytes(self) -> int:
        """Bytes on the wire, header included."""
        payload = 0 if self.payload is None else self.payload.numel() * self.payload.element_size()
        return HEADER_NUMEL * 8 + payload


def encode(new: torch.Tensor, changed: torch.Tensor, patch: torch.Tensor | None = None) -> EncodedPiece:
    """The piece `new` (1-D, its new values) given `changed` (bool, same length) against the
    previous version, in its smallest encoding. The payload of FULL is `new` itself (no copy).

    Args:
        patch: the previous version's piece, kept elsewhere: it is brought up to `new`
            (the changed elements written, or all of them for FULL).
    """
    numel, itemsize = new.numel(), new.element_size()
    new_bits = bits(new)
    count = int(torch.count_nonzero(changed)) if new_bits is not None else numel
    kind = choose(numel, count, itemsize, new_bits is not None)
    header = torch.tensor([kind, count], dtype=torch.int64, device=new.device)
    if kind == FULL:
        if patch is not None:
            patch.copy_(new)
        return EncodedPiece(header, new, numel, itemsize)
    if count == 0:
        return EncodedPiece(header, None, numel, itemsize)
    assert new_bits is not None
    positions = changed.nonzero().view(-1)
    values = new_bits[positions]
    payload = torch.empty(payload_nbytes(kind, numel, count, itemsize), dtype=torch.uint8, device=new.device)
    if kind == INDICES:
        head = positions.to(torch.int32).view(torch.uint8)
    else:
        head = pack_bits(changed)
    payload[: head.numel()].copy_(head)
    payload[_aligned(head.numel()) :].view(new_bits.dtype).copy_(values)
    if patch is not None:
        patch_bits = bits(patch)
        assert patch_bits is not None
        patch_bits[positions] = values
    return EncodedPiece(header, payload, numel, itemsize)


def apply(kind: int, count: int, payload: torch.Tensor, target: torch.Tensor) -> None:
    """Write a received delta into `target` (1-D, holding the base version's piece).

    Args:
        kind, count: the piece's header.
        payload: uint8, exactly `payload_nbytes(kind, target.numel(), count, itemsize)` bytes.
        target: the piece to patch, in place.

    Raises:
        DeltaError: the payload's size or an index does not fit the piece.
    """
    numel, itemsize = target.numel(), target.element_size()
    want = payload_nbytes(kind, numel, count, itemsize)
    if kind == FULL or not 0 <= count <= numel or payload.numel() != want:
        raise DeltaError(f"a {KINDS[kind] if 0 <= kind < 3 else kind} delta of {count} changes does not fit a piece of "
                         f"{numel} elements ({payload.numel()} payload bytes, {want} expected)")
    if count == 0:
        return
    target_bits = bits(target)
    if target_bits is None:
        raise DeltaError(f"a {target.dtype} piece has no bit view: it travels whole")
    if kind == INDICES:
        positions = payload[: 4 * count].view(torch.int32).long()
        if int(positions.min()) < 0 or int(positions.max()) >= numel:
            raise DeltaError(f"a delta index lies outside the piece of {numel} elements")
        target_bits.index_put_((positions,), payload[_aligned(4 * count) :].view(target_bits.dtype))
        return
    head = (numel + 7) // 8
    mask = unpack_bits(payload[:head], numel)
    marked = int(torch.count_nonzero(mask))
    if marked != count:
        raise DeltaError(f"the bitmap marks {marked} changes, the header says {count}")
    target_bits.masked_scatter_(mask, payload[_aligned(head) :].view(target_bits.dtype))


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool [n] -> uint8 [ceil(n / 8)]; element i is bit i % 8 of byte i // 8."""
    numel = mask.numel()
    padded = torch.zeros(_aligned(numel), dtype=torch.uint8, device=mask.device)
    padded[:numel].copy_(mask.view(torch.uint8))
    columns = padded.view(-1, 8)
    packed = columns[:, 0].clone()
    for bit in range(1, 8):
        packed |= columns[:, bit] << bit
    return packed[: (numel + 7) // 8]


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """uint8 [ceil(numel / 8)] -> bool [numel] (the inverse of `pack_bits`): one table
    look-up per byte."""
    table = _BYTE_BITS.get(packed.device)
    if table is None:
        spread = (torch.arange(256, device=packed.device).unsqueeze(1) >> torch.arange(8, device=packed.device)) & 1
        table = _BYTE_BITS[packed.device] = spread.to(torch.bool).view(torch.int64).view(256)
    return table.index_select(0, packed.long()).view(torch.bool)[:numel]

"""Helpers shared by the protocols tests: envelopes to encode, headers to forge, and an
exact (bit-for-bit) comparison of a decoded payload with the one that was sent."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import numpy as np
import torch

from protocols.envelope import Envelope, decode_envelope, encode_envelope


def make_envelope(payload: Any = None, **fields: Any) -> Envelope:
    """An envelope with plausible routing fields; `fields` override them."""
    routing = {"kind": "test_protocols.payload", "message_id": "id-1", "sender": "tester", "sent_at": 1_700_000_000.5}
    routing.update(fields)
    return Envelope(payload=payload, **routing)


def round_trip(payload: Any) -> Any:
    """The payload as a receiver sees it after encode_envelope -> bytes frames -> decode_envelope."""
    frames, _ = encode_envelope(make_envelope(payload))
    return decode_envelope([bytes(frame) for frame in frames]).payload


def encoded_frames(payload: Any = None) -> list[bytes]:
    frames, _ = encode_envelope(make_envelope(payload))
    return [bytes(frame) for frame in frames]


def header_of(payload: Any = None) -> dict[str, Any]:
    """The decoded header map of a valid message carrying `payload` (for forging)."""
    return msgpack.unpackb(encoded_frames(payload)[0], raw=False)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def address(buffer: Any) -> int:
    """Address of the first byte of a buffer."""
    return np.frombuffer(buffer, dtype=np.uint8).ctypes.data


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's elements as bytes in row-major order, whatever its dtype (NaNs, float8 included)."""
    flat = tensor.detach().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A tensor of random bit patterns (valid 0/1 for bool), so every byte of the wire format is exercised."""
    count = math.prod(shape)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator, dtype=torch.uint8).bool()
    data = torch.randint(0, 256, (count * dtype.itemsize,), generator=generator, dtype=torch.uint8)
    return data.view(dtype).reshape(shape)


def aligned_frame(data: bytes, offset: int = 0, alignment: int = 64) -> memoryview:
    """A writable frame holding `data` at an address that is `offset` bytes past an `alignment` boundary."""
    storage = bytearray(len(data) + 2 * alignment)
    start = (-address(storage)) % alignment + offset
    view = memoryview(storage)[start : start + len(data)]
    view[:] = data
    return view


def assert_identical_payload(decoded: Any, sent: Any, path: str = "payload") -> None:
    """Assert `decoded` is exactly what a receiver must get for `sent`.

    Tuples arrive as lists (msgpack has one array type); floats compare bit for bit
    (NaN and -0.0 included); tensors and arrays compare dtype, shape and raw bytes.
    """
    if isinstance(sent, torch.Tensor):
        assert isinstance(decoded, torch.Tensor), f"{path}: {type(decoded).__name__} is not a tensor"
        assert decoded.dtype == sent.dtype, f"{path}: dtype {decoded.dtype} != {sent.dtype}"
        assert decoded.shape == sent.shape, f"{path}: shape {decoded.shape} != {sent.shape}"
        assert raw_bytes(decoded) == raw_bytes(sent), f"{path}: tensor bytes differ"
    elif isinstance(sent, np.ndarray):
        assert isinstance(decoded, np.ndarray), f"{path}: {type(decoded).__name__} is not an array"
        assert decoded.dtype.str == sent.dtype.str, f"{path}: dtype {decoded.dtype.str} != {sent.dtype.str}"
        assert decoded.shape == sent.shape, f"{path}: shape {decoded.shape} != {sent.shape}"
        assert decoded.tobytes() == sent.tobytes(), f"{path}: array bytes differ"
    elif isinstance(sent, (list, tuple)):
        assert type(decoded) is list, f"{path}: {type(decoded).__name__} is not a list"
        assert len(decoded) == len(sent), f"{path}: length {len(decoded)} != {len(sent)}"
        for index, (got, want) in enumerate(zip(decoded, sent)):
            assert_identical_payload(got, want, f"{path}[{index}]")
    elif isinstance(sent, dict):
        assert type(decoded) is dict, f"{path}: {type(decoded).__name__} is not a dict"
        assert list(decoded) == list(sent), f"{path}: keys {list(decoded)} != {list(sent)}"
        for key in sent:
            assert_identical_payload(decoded[key], sent[key], f"{path}[{key!r}]")
    elif isinstance(sent, float):
        assert type(decoded) is float, f"{path}: {type(decoded).__name__} is not a float"
        assert struct.pack("<d", decoded) == struct.pack("<d", sent), f"{path}: {decoded!r} != {sent!r}"
    else:
        assert type(decoded) is type(sent), f"{path}: type {type(decoded).__name__} != {type(sent).__name__}"
        assert decoded == sent, f"{path}: {decoded!r} != {sent!r}"

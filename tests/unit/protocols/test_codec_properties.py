"""Property tests of the wire format.

(a) Any valid payload round-trips exactly through encode_envelope/decode_envelope.
(b) Random bytes, (c) mutated valid messages and randomly replaced header fields never
    raise anything but ProtocolError.
(d) Forged lengths and shapes are refused quickly, without allocating what they claim.
"""

from __future__ import annotations

import math
import time
import tracemalloc
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.codec import TORCH_DTYPES
from protocols.envelope import Envelope, decode_envelope, encode_envelope
from protocols.errors import ProtocolError
from tests.unit.protocols.payloads import assert_identical_payload, header_of, make_envelope, pack

# complex32 and sparse CSR are carried (or refused) on purpose; torch warns that they are experimental.
pytestmark = [
    pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning"),
    pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning"),
]

PROPERTY_SETTINGS = settings(
    deadline=1000, max_examples=120, database=None, suppress_health_check=[HealthCheck.too_slow]
)

NUMPY_DTYPES = ["|b1", "|i1", "|u1", "<u2", "<i4", "<i8", ">i8", "<f2", "<f4", ">f4", "<f8", "<c8", "<c16"]


# ----------------------------------------------------------------- strategies
@st.composite
def torch_tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = TORCH_DTYPES[draw(st.sampled_from(sorted(TORCH_DTYPES)))]
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    nbytes = math.prod(shape) * dtype.itemsize
    data = bytearray(draw(st.binary(min_size=nbytes, max_size=nbytes)))
    if dtype == torch.bool:
        data = bytearray(byte & 1 for byte in data)
    if nbytes:
        tensor = torch.frombuffer(data, dtype=torch.uint8).view(dtype).reshape(shape)
    else:
        tensor = torch.empty(shape, dtype=dtype)
    if tensor.dim() >= 2 and draw(st.booleans()):
        tensor = tensor.transpose(0, -1)  # non-contiguous: the codec must copy it
    return tensor


@st.composite
def numpy_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(NUMPY_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    nbytes = math.prod(shape) * dtype.itemsize
    data = bytearray(draw(st.binary(min_size=nbytes, max_size=nbytes)))
    if dtype.kind == "b":
        data = bytearray(byte & 1 for byte in data)
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if array.ndim >= 2 and draw(st.booleans()):
        array = array.T
    return array


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
payloads = st.recursive(
    scalars | torch_tensors() | numpy_arrays(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)


# ----------------------------------------------------------------- (a) round trip
@PROPERTY_SETTINGS
@given(payload=payloads, as_bytes=st.booleans())
def test_any_valid_payload_round_trips_exactly(payload, as_bytes):
    frames, nbytes = encode_envelope(make_envelope(payload))
    if as_bytes:  # a receiver's frames are its own memory, not the sender's
        frames = [bytes(frame) for frame in frames]

    received = decode_envelope(frames)

    assert received.nbytes == nbytes
    assert_identical_payload(received.payload, payload)


# ----------------------------------------------------------------- (b), (c) malformed input
def decodes_or_refuses(frames: list[Any]) -> None:
    """Decoding must succeed or raise ProtocolError; any other exception fails the test."""
    try:
        envelope = decode_envelope(frames)
    except ProtocolError:
        return
    assert isinstance(envelope, Envelope)


@PROPERTY_SETTINGS
@given(frames=st.lists(st.binary(max_size=64), max_size=4))
def test_random_bytes_are_always_refused_with_a_protocol_error(frames):
    with pytest.raises(ProtocolError):
        decode_envelope(frames)


@PROPERTY_SETTINGS
@given(header=st.dictionaries(st.sampled_from(sorted(header_of())) | st.text(max_size=4),
                              st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                              | st.floats() | st.text(max_size=4) | st.binary(max_size=4), max_size=14))
def test_random_header_maps_are_always_refused_with_a_protocol_error(header):
    with pytest.raises(ProtocolError):
        decode_envelope([pack(header)])


def _base_frames() -> list[bytes]:
    payload = {
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "mask": torch.tensor([True, False]),
        "values": np.linspace(0, 1, 5, dtype=np.float32),
        "big_endian": np.arange(3, dtype=">i2"),
        "meta": {"step": 3, "name": "x", "ratio": 0.5, "tags": ["a", "b"], "blob": b"\x00\x01"},
    }
    frames, _ = encode_envelope(make_envelope(payload, correlation_id="c", deadline=5.0, credits=(1, 2)))
    return [bytes(frame) for frame in frames]


BASE_FRAMES = _base_frames()

wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=6)
    | st.binary(max_size=6),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)


@PROPERTY_SETTINGS
@given(field=st.sampled_from(sorted(header_of())), value=wire_values)
def test_any_value_in_any_header_field_decodes_or_is_refused(field, value):
    header = msgpack.unpackb(BASE_FRAMES[0], raw=False)
    header[field] = value
    decodes_or_refuses([pack(header), *BASE_FRAMES[1:]])


@PROPERTY_SETTINGS
@given(position=st.integers(0, 3), part=st.integers(0, 3), value=wire_values)
def test_any_value_in_any_descriptor_decodes_or_is_refused(position, part, value):
    header = msgpack.unpackb(BASE_FRAMES[0], raw=False)
    header["tensors"][position][part] = value
    decodes_or_refuses([pack(header), *BASE_FRAMES[1:]])


@st.composite
def mutated_frames(draw: st.DrawFn) -> list[Any]:
    frames = [bytearray(frame) for frame in BASE_FRAMES]
    for _ in range(draw(st.integers(1, 3))):
        mutation = draw(st.sampled_from(["flip", "truncate", "extend", "drop", "add", "swap"]))
        if mutation in ("flip", "truncate", "extend") and not frames:
            continue
        index = draw(st.integers(0, len(frames) - 1)) if frames else 0
        if mutation == "flip" and frames[index]:
            for _ in range(draw(st.integers(1, 4))):
                at = draw(st.integers(0, len(frames[index]) - 1))
                frames[index][at] = draw(st.integers(0, 255))
        elif mutation == "truncate":
            frames[index] = frames[index][: draw(st.integers(0, len(frames[index])))]
        elif mutation == "extend":
            frames[index] += draw(st.binary(min_size=1, max_size=16))
        elif mutation == "drop" and frames:
            del frames[index]
        elif mutation == "add":
            frames.insert(draw(st.integers(0, len(frames))), bytearray(draw(st.binary(max_size=32))))
        elif mutation == "swap" and len(frames) >= 2:
            other = draw(st.integers(0, len(frames) - 1))
            frames[index], frames[other] = frames[other], frames[index]
    writable = draw(st.booleans())  # bytearray frames are viewed, bytes frames are copied
    return [frame if writable else bytes(frame) for frame in frames]


def test_the_unmutated_base_message_decodes():
    assert decode_envelope(BASE_FRAMES).payload["meta"]["step"] == 3


@settings(PROPERTY_SETTINGS, max_examples=250)
@given(frames=mutated_frames())
def test_mutated_messages_decode_or_are_refused_with_a_protocol_error(frames):
    decodes_or_refuses(frames)


# ----------------------------------------------------------------- (d) forged sizes
def decode_measured(frames: list[bytes]) -> tuple[int, float]:
    """Decode `frames` expecting a ProtocolError; return (peak bytes allocated, seconds taken)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ProtocolError):
            decode_envelope(frames)
        return tracemalloc.get_traced_memory()[1], time.perf_counter() - started
    finally:
        tracemalloc.stop()


SMALL_PEAK = 1 << 20  # 1 MiB: generous for a message of a few hundred bytes

FORGED_LENGTHS = {
    "array32": b"\xdd\xff\xff\xff\xff",
    "map32": b"\xdf\xff\xff\xff\xff",
    "bin32": b"\xc6\xff\xff\xff\xff",
    "str32": b"\xdb\xff\xff\xff\xff",
    "ext32": b"\xc9\xff\xff\xff\xff\x01",
    "array16": b"\xdc\xff\xff",
    "map16": b"\xde\xff\xff",
}


@pytest.mark.parametrize("where", ["header", "payload", "descriptors"])
@pytest.mark.parametrize("forged", sorted(FORGED_LENGTHS))
def test_a_forged_length_is_refused_without_allocating_it(forged, where):
    claim = FORGED_LENGTHS[forged] + b"\x00" * 8  # a huge claimed length, a tiny body
    header = header_of()
    if where == "header":
        frames = [claim]
    elif where == "payload":
        header["payload"] = claim
        frames = [pack(header)]
    else:  # the raw bytes of the header's last field, 'tensors', are replaced by the forged value
        assert list(header)[-1] == "tensors" and header["tensors"] == []
        packed = pack(header)
        frames = [packed[:-1] + claim]

    peak, seconds = decode_measured(frames)

    assert peak < SMALL_PEAK
    assert seconds < 1.0


@pytest.mark.parametrize("array", ["torch", "numpy"])
@pytest.mark.parametrize("shape", [[2**40, 2**40], [2**63, 2], [2**64 - 1] * 64, [65536] * 8],
                         ids=["2^40x2^40", "2^63x2", "max-rank-max-dims", "65536^8"])
def test_a_forged_shape_is_refused_without_allocating_it(shape, array):
    header = header_of()
    header["tensors"] = [["float64" if array == "torch" else "<f8", shape, 1, array]]
    header["payload"] = pack(msgpack.ExtType(1, (0).to_bytes(4, "little")))

    peak, seconds = decode_measured([pack(header), b"\x00" * 8])

    assert peak < SMALL_PEAK
    assert seconds < 1.0


@settings(PROPERTY_SETTINGS, max_examples=60)
@given(prefix=st.sampled_from(sorted(FORGED_LENGTHS.values())), body=st.binary(max_size=32),
       nesting=st.integers(0, 3))
def test_forged_lengths_at_any_depth_are_refused_without_allocating_them(prefix, body, nesting):
    forged = b"\x91" * nesting + prefix + body  # inside `nesting` one-element arrays
    header = header_of()
    header["payload"] = forged
    peak, _ = decode_measured([pack(header)])
    assert peak < SMALL_PEAK

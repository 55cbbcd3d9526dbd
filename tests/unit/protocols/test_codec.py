"""The payload codec: what round-trips exactly, what is refused, and when bytes are copied.

The copy rules under test are the ones in the `protocols.codec` module docstring:
sending a contiguous CPU tensor does not copy; receiving views the frame unless the
frame is misaligned for the dtype, read-only, or the tensor is empty.
"""

from __future__ import annotations

import gc
import math
import weakref

import msgpack
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from protocols.codec import TORCH_DTYPES, decode_payload, encode_payload
from protocols.envelope import decode_envelope, encode_envelope
from protocols.errors import ProtocolError
from protocols.messages import message
from tests.unit.protocols.payloads import (
    address,
    aligned_frame,
    assert_identical_payload,
    encoded_frames,
    make_envelope,
    random_tensor,
    raw_bytes,
    round_trip,
)

# complex32 and sparse CSR are carried (or refused) on purpose; torch warns that they are experimental.
pytestmark = [
    pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning"),
    pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning"),
]

SHAPES = [(), (0,), (3, 0, 2), (7,), (2, 3, 4)]
NUMPY_DTYPES = ["|b1", "|i1", "<u2", "<i4", "<i8", "<f2", "<f4", "<f8", "<c8", ">f4"]


def _random_array(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype_ = np.dtype(dtype)
    if dtype_.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    data = rng.integers(0, 256, size=math.prod(shape) * dtype_.itemsize, dtype=np.uint8)
    return data.view(dtype_).reshape(shape)


# ----------------------------------------------------------------- round trips
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype_name", sorted(TORCH_DTYPES))
def test_every_torch_dtype_round_trips_bit_for_bit(dtype_name, shape):
    dtype = TORCH_DTYPES[dtype_name]
    sent = random_tensor(dtype, shape, torch.Generator().manual_seed(len(shape)))

    received = round_trip(sent)

    assert received.dtype == dtype
    assert received.shape == sent.shape
    assert raw_bytes(received) == raw_bytes(sent)  # byte-wise, so NaN payloads and float8 compare exactly


def test_the_codec_carries_every_common_torch_dtype():
    expected = {"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32",
                "float64", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2"}
    assert expected <= TORCH_DTYPES.keys()


@pytest.mark.parametrize("dtype_name", sorted(TORCH_DTYPES))
def test_non_contiguous_tensors_of_every_dtype_arrive_as_their_contiguous_values(dtype_name):
    dtype = TORCH_DTYPES[dtype_name]
    base = random_tensor(dtype, (4, 6), torch.Generator().manual_seed(1))
    # The expected bytes are computed on a uint8 view, independent of the dtype's own copy kernels.
    base_bytes = base.view(torch.uint8).reshape(4, 6, dtype.itemsize)
    cases = {
        "transpose": (base.t(), base_bytes.transpose(0, 1)),
        "step slice": (base[::2, 1::3], base_bytes[::2, 1::3]),
        "expand": (base[1:2].expand(3, 6), base_bytes[1:2].expand(3, 6, dtype.itemsize)),
    }
    for name, (view, expected_bytes) in cases.items():
        assert not view.is_contiguous(), name
        received = round_trip(view)
        assert received.shape == view.shape, name
        assert raw_bytes(received) == expected_bytes.contiguous().numpy().tobytes(), name


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_lazy_conjugate_and_negative_views_arrive_resolved(dtype):
    values = torch.randn(5, dtype=dtype, generator=torch.Generator().manual_seed(2))
    conjugate = values.conj()
    negative_imaginary = values.conj().imag  # a real view with the negative bit set
    assert conjugate.is_conj() and negative_imaginary.is_neg()

    received_conjugate, received_negative = round_trip([conjugate, negative_imaginary])

    assert not received_conjugate.is_conj()
    assert_close(received_conjugate, torch.conj_physical(values), rtol=0, atol=0)
    assert not received_negative.is_neg()
    assert_close(received_negative, -values.imag, rtol=0, atol=0)


def test_a_tensor_that_requires_grad_arrives_as_plain_data():
    weights = torch.nn.Parameter(torch.randn(3, 2, generator=torch.Generator().manual_seed(3)))

    received = round_trip(weights * 2)

    assert isinstance(received, torch.Tensor) and not isinstance(received, torch.nn.Parameter)
    assert not received.requires_grad
    assert_close(received, (weights * 2).detach(), rtol=0, atol=0)


def test_a_contiguous_tensor_with_a_storage_offset_round_trips():
    base = torch.arange(10, dtype=torch.int64)
    assert_close(round_trip(base[3:7]), torch.tensor([3, 4, 5, 6]), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (7,), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_numpy_arrays_round_trip_with_dtype_and_byte_order(dtype, shape):
    sent = _random_array(dtype, shape)

    received = round_trip(sent)

    assert isinstance(received, np.ndarray)
    assert received.dtype.str == np.dtype(dtype).str  # '>f4' stays big-endian
    assert received.shape == shape
    assert received.tobytes() == sent.tobytes()


def test_non_contiguous_numpy_arrays_arrive_in_c_order():
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    for view in (grid.T, grid[::-1], grid[:, ::2], np.asfortranarray(grid)):
        received = round_trip(view)
        assert received.flags.c_contiguous
        np.testing.assert_array_equal(received, view)


def test_nested_containers_round_trip_and_tuples_arrive_as_lists():
    # msgpack has a single array type, so a receiver cannot tell a tuple from a list.
    sent = {"outer": [1, (2, 3), {"inner": (None, [True, False])}], "empty": {}, "nothing": [], "pair": ()}

    received = round_trip(sent)

    assert received == {"outer": [1, [2, 3], {"inner": [None, [True, False]]}], "empty": {}, "nothing": [], "pair": []}
    assert type(received["outer"][1]) is list


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 0.0, -0.0, 1.5, 1e308, 5e-324,
     math.inf, -math.inf, math.nan, "", "héllo ✓ 🚀 中文 \x00", b"", b"\x00\xff\x80"],
    ids=repr,
)
def test_scalars_round_trip_with_their_exact_type_and_value(value):
    assert_identical_payload(round_trip(value), value)


def test_bools_stay_bools_and_ints_stay_ints():
    received = round_trip([True, 1, 0, False])
    assert [type(value) for value in received] == [bool, int, int, bool]


def test_byte_like_values_arrive_as_bytes():
    assert round_trip([bytearray(b"ab"), memoryview(b"cd")]) == [b"ab", b"cd"]


def test_numpy_scalars_arrive_as_python_scalars():
    received = round_trip([np.float32(1.5), np.int64(-3), np.bool_(True), np.uint8(255)])
    assert received == [1.5, -3, True, 255]
    assert [type(value) for value in received] == [float, int, bool, int]


def test_a_dict_with_integer_keys_keeps_them():
    assert round_trip({1: "a", -2: "b"}) == {1: "a", -2: "b"}


# ----------------------------------------------------------------- refusals
@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, [1, {"deep": 2**70}]], ids=["2**64", "-2**63-1", "nested"])
def test_integers_beyond_64_bits_are_refused(value):
    with pytest.raises(ProtocolError):
        encode_payload(value)


def test_an_integer_beyond_64_bits_is_refused_with_a_message_that_says_so():
    with pytest.raises(ProtocolError, match="64"):
        encode_payload(2**64)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: {1, 2}, "set"),
        (lambda: object(), "object"),
        (lambda: frozenset(), "frozenset"),
        (lambda: complex(1, 2), "complex"),
        (lambda: np.array([object(), 1], dtype=object), "object"),
        (lambda: np.array(["a", "bc"]), "<U2"),
        (lambda: np.array([b"a"]), "S1"),
        (lambda: np.zeros(2, dtype="datetime64[s]"), "datetime64"),
        (lambda: np.zeros(2, dtype="f4,i4"), "cannot be sent"),
        (lambda: torch.eye(3).to_sparse(), "to_dense"),
        (lambda: torch.eye(3).to_sparse_csr(), "to_dense"),
    ],
    ids=["set", "object", "frozenset", "complex", "object-array", "string-array", "bytes-array", "datetime-array",
         "structured-array", "sparse-coo", "sparse-csr"],
)
def test_values_that_cannot_travel_are_refused_with_a_message_naming_them(make, named):
    with pytest.raises(ProtocolError, match=named):
        encode_payload({"field": [make()]})


@pytest.mark.filterwarnings("ignore::UserWarning")  # quantized tensor creation is deprecated in recent torch
def test_a_quantized_tensor_is_refused_naming_its_dtype():
    quantized = torch.quantize_per_tensor(torch.ones(3), scale=0.1, zero_point=0, dtype=torch.quint8)
    with pytest.raises(ProtocolError, match="quint8"):
        encode_payload(quantized)


def test_a_string_with_a_lone_surrogate_is_refused():
    with pytest.raises(ProtocolError):
        encode_payload("\ud800")


def test_a_tuple_dict_key_encodes_but_cannot_be_decoded():
    # Documents a sharp edge rather than a promise: the key arrives as a list, which is unhashable.
    frames = encoded_frames({(1, 2): "x"})
    with pytest.raises(ProtocolError, match="unhashable"):
        decode_envelope(frames)


@pytest.mark.filterwarnings("ignore::UserWarning")  # nested tensors are a prototype API
@pytest.mark.parametrize("make", [lambda: torch.empty(3, device="meta"),
                                  lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])],
                         ids=["meta", "nested-strided"])
def test_tensors_without_plain_cpu_data_are_refused_with_a_protocol_error(make):
    with pytest.raises(ProtocolError):
        encode_payload(make())


@message("test_protocols.codec.timed")
class TimedMessage:  # test -> test
    seconds: float


def test_a_hand_made_extension_value_can_only_point_at_a_tensor_of_its_own_message():
    # msgpack packs ExtType values itself (the encoder never sees them), so the
    # receiver is where they are checked: code 1 may only name a tensor the
    # message carries; any other extension code is refused.
    frames = encoded_frames([torch.ones(1), msgpack.ExtType(1, (0).to_bytes(4, "little"))])
    aliased = decode_envelope(frames).payload
    assert aliased[1] is aliased[0]
    with pytest.raises(ProtocolError, match="refers to tensor 3"):
        decode_envelope(encoded_frames([torch.ones(1), msgpack.ExtType(1, (3).to_bytes(4, "little"))]))
    with pytest.raises(ProtocolError, match="unknown msgpack extension type 5"):
        decode_envelope(encoded_frames([msgpack.ExtType(5, b"x")]))


def test_a_msgpack_timestamp_decodes_as_a_timestamp_that_typed_fields_refuse():
    # msgpack decodes extension -1 itself; a typed message field never accepts it.
    from protocols.messages import from_payload

    frames = encoded_frames({"when": msgpack.Timestamp(1, 0)})
    assert isinstance(decode_envelope(frames).payload["when"], msgpack.Timestamp)
    with pytest.raises(ProtocolError, match="expected float"):
        from_payload(TimedMessage.KIND, {"seconds": msgpack.Timestamp(1, 0)})


def test_sending_a_contiguous_tensor_does_not_copy_it():
    tensor = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)[1]  # contiguous, with a storage offset

    _, _, buffers = encode_payload({"x": tensor})

    assert address(buffers[0]) == tensor.data_ptr()
    assert buffers[0].nbytes == tensor.numel() * tensor.element_size()


def test_sending_a_contiguous_numpy_array_does_not_copy_it():
    array = np.arange(10, dtype=np.float64)
    _, _, buffers = encode_payload(array)
    assert address(buffers[0]) == array.ctypes.data


def test_sending_a_non_contiguous_tensor_copies_it():
    tensor = torch.arange(12, dtype=torch.int32).reshape(3, 4).t()
    _, _, buffers = encode_payload(tensor)
    assert address(buffers[0]) != tensor.data_ptr()
    assert bytes(buffers[0]) == tensor.contiguous().numpy().tobytes()


def test_the_send_buffer_keeps_a_temporary_copy_alive():
    _, _, buffers = encode_payload(torch.arange(1000, dtype=torch.int64).reshape(10, 100).t())
    gc.collect()
    torch.ones(100_000)  # reuse freed memory, if any was freed
    expected = torch.arange(1000, dtype=torch.int64).reshape(10, 100).t().contiguous()
    assert bytes(buffers[0]) == expected.numpy().tobytes()


def test_the_descriptor_names_the_frame_each_tensor_will_have():
    _, descriptors, _ = encode_payload([torch.ones(2), np.zeros(3, np.int16)], first_frame=5)
    assert [descriptor.to_wire() for descriptor in descriptors] == [
        ["float32", [2], 5, "torch"],
        ["<i2", [3], 6, "numpy"],
    ]


# ----------------------------------------------------------------- zero copy when receiving
def _frames_with_tensor_frame(payload, tensor_frame: memoryview | bytes) -> list:
    header, _ = encode_envelope(make_envelope(payload))
    return [bytes(header[0]), tensor_frame]


WIDE_DTYPES = ["int16", "int32", "int64", "float16", "bfloat16", "float32", "float64", "complex64", "complex128"]


@pytest.mark.parametrize("dtype_name", WIDE_DTYPES + ["uint8", "bool", "float8_e4m3fn"])
def test_a_received_tensor_views_the_frame_without_copying(dtype_name):
    sent = random_tensor(TORCH_DTYPES[dtype_name], (5, 3), torch.Generator().manual_seed(4))
    frame = aligned_frame(raw_bytes(sent))

    received = decode_envelope(_frames_with_tensor_frame(sent, frame)).payload

    assert received.data_ptr() == address(frame)
    assert raw_bytes(received) == raw_bytes(sent)


def test_a_received_numpy_array_views_the_frame_without_copying():
    sent = np.arange(6, dtype=np.float64)
    frame = aligned_frame(sent.tobytes())
    received = decode_envelope(_frames_with_tensor_frame(sent, frame)).payload
    assert received.ctypes.data == address(frame)
    assert received.flags.writeable


def test_writing_a_received_tensor_writes_the_frame():
    frame = aligned_frame(torch.zeros(4, dtype=torch.int32).numpy().tobytes())
    received = decode_envelope(_frames_with_tensor_frame(torch.zeros(4, dtype=torch.int32), frame)).payload
    received[2] = 7
    assert np.frombuffer(frame, dtype=np.int32).tolist() == [0, 0, 7, 0]


@pytest.mark.parametrize("dtype_name", WIDE_DTYPES)
def test_a_misaligned_frame_yields_an_aligned_correct_copy(dtype_name):
    dtype = TORCH_DTYPES[dtype_name]
    sent = random_tensor(dtype, (6,), torch.Generator().manual_seed(5))
    frame = aligned_frame(raw_bytes(sent), offset=1)  # like a small message packed at an odd offset

    received = decode_envelope(_frames_with_tensor_frame(sent, frame)).payload

    start = address(frame)
    assert not start <= received.data_ptr() < start + frame.nbytes
    alignment = dtype.itemsize // 2 if dtype.is_complex else dtype.itemsize
    assert received.data_ptr() % alignment == 0
    assert raw_bytes(received) == raw_bytes(sent)


@pytest.mark.parametrize("dtype", ["<i4", "<f8", "<c16", ">f4"])
def test_a_misaligned_frame_yields_an_aligned_correct_numpy_copy(dtype):
    sent = _random_array(dtype, (6,))
    frame = aligned_frame(sent.tobytes(), offset=1)

    received = decode_envelope(_frames_with_tensor_frame(sent, frame)).payload

    assert received.ctypes.data != address(frame)
    assert received.ctypes.data % (sent.dtype.alignment or 1) == 0
    assert received.tobytes() == sent.tobytes()


def test_a_single_byte_dtype_needs_no_alignment_and_is_viewed_at_any_offset():
    sent = torch.arange(9, dtype=torch.uint8)
    frame = aligned_frame(raw_bytes(sent), offset=3)
    received = decode_envelope(_frames_with_tensor_frame(sent, frame)).payload
    assert received.data_ptr() == address(frame)


@pytest.mark.parametrize("sent", [torch.arange(8, dtype=torch.float32), np.arange(8, dtype=np.int32)],
                         ids=["torch", "numpy"])
def test_a_read_only_bytes_frame_yields_a_writable_copy(sent):
    frame = bytes(raw_bytes(sent) if isinstance(sent, torch.Tensor) else sent.tobytes())

    received = decode_envelope(_frames_with_tensor_frame(sent, frame)).payload

    if isinstance(received, torch.Tensor):
        assert not address(frame) <= received.data_ptr() < address(frame) + len(frame)
        received.add_(1)
        assert_close(received, torch.arange(1, 9, dtype=torch.float32), rtol=0, atol=0)
    else:
        assert received.flags.writeable
        received += 1
        np.testing.assert_array_equal(received, np.arange(1, 9))
    assert frame == (raw_bytes(sent) if isinstance(sent, torch.Tensor) else sent.tobytes())  # untouched


def test_an_empty_tensor_is_rebuilt_without_a_frame_to_view():
    received = round_trip({"empty": torch.empty(0, 5, dtype=torch.float64), "array": np.empty((2, 0), np.int8)})
    assert received["empty"].shape == (0, 5) and received["empty"].dtype == torch.float64
    assert received["array"].shape == (2, 0) and received["array"].dtype == np.int8


def test_a_received_tensor_keeps_its_frame_alive():
    sent = torch.arange(64, dtype=torch.int64)
    owner = np.frombuffer(bytearray(raw_bytes(sent)), dtype=np.uint8)  # a frame owner we can watch
    owner_alive = weakref.ref(owner)
    frames = _frames_with_tensor_frame(sent, memoryview(owner))

    received = decode_envelope(frames).payload
    del owner, frames
    gc.collect()

    assert owner_alive() is not None
    torch.full((10_000,), -1, dtype=torch.int64)  # churn the allocator
    assert_close(received, torch.arange(64), rtol=0, atol=0)
    del received
    gc.collect()
    assert owner_alive() is None


def test_decoding_the_senders_own_frames_shares_the_senders_memory():
    # Within one process (inproc) the frame is the sender's storage: the docstring says clone before writing.
    sent = torch.zeros(3)
    frames, _ = encode_envelope(make_envelope(sent))
    received = decode_envelope(frames).payload
    assert received.data_ptr() == sent.data_ptr()


def test_decode_payload_puts_each_tensor_where_the_encoder_left_it():
    first, second = torch.ones(2), np.zeros(3)
    packed, descriptors, _ = encode_payload({"b": second, "a": [first, first]})
    assert len(descriptors) == 3  # each occurrence travels in its own frame
    stand_ins = [np.full(3, 8.0), torch.full((2,), 9.0), torch.full((2,), 7.0)]

    rebuilt = decode_payload(packed, stand_ins)

    assert rebuilt["b"] is stand_ins[0]
    assert rebuilt["a"][0] is stand_ins[1] and rebuilt["a"][1] is stand_ins[2]

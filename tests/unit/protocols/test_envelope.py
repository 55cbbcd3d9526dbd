"""The envelope: routing fields round-trip, and every malformed header, descriptor or frame
is refused with a ProtocolError whose text names what was wrong."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import torch

from protocols.envelope import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_TENSOR_RANK,
    SCHEMA_VERSION,
    Envelope,
    decode_envelope,
    encode_envelope,
    new_id,
)
from protocols.errors import ProtocolError
from tests.unit.protocols.payloads import encoded_frames, header_of, make_envelope, pack

HEADER_FIELDS = ["schema_version", "kind", "message_id", "correlation_id", "trace_id", "sender", "sent_at",
                 "deadline", "expects_reply", "credits", "shm_host", "payload", "tensors"]


def decode_with_header(header: dict, *tensor_frames: bytes, **options) -> Envelope:
    return decode_envelope([pack(header), *tensor_frames], **options)


# ----------------------------------------------------------------- round trip
def test_every_routing_field_round_trips():
    sent = Envelope(kind="test_protocols.ask", message_id=new_id(), sender="learner-0", sent_at=12.25,
                    payload={"x": 1}, correlation_id="req-7", trace_id="trace-3", deadline=99.5,
                    expects_reply=True, credits=(4, 1 << 40))

    frames, nbytes = encode_envelope(sent)
    received = decode_envelope(frames)

    assert received == Envelope(kind="test_protocols.ask", message_id=sent.message_id, sender="learner-0",
                                sent_at=12.25, payload={"x": 1}, correlation_id="req-7", trace_id="trace-3",
                                deadline=99.5, expects_reply=True, credits=(4, 1 << 40), nbytes=nbytes)


def test_nbytes_is_the_size_of_all_frames_on_both_sides():
    frames, nbytes = encode_envelope(make_envelope({"t": torch.ones(10), "a": np.zeros(3, np.int16)}))
    assert nbytes == sum(memoryview(frame).nbytes for frame in frames) == len(frames[0]) + 40 + 6
    assert decode_envelope(frames).nbytes == nbytes


def test_the_header_carries_exactly_the_documented_fields():
    assert sorted(header_of()) == sorted(HEADER_FIELDS)
    assert header_of()["schema_version"] == SCHEMA_VERSION


def test_integer_times_are_accepted_and_arrive_as_floats():
    header = header_of()
    header["sent_at"], header["deadline"] = 5, 6
    received = decode_with_header(header)
    assert (received.sent_at, received.deadline) == (5.0, 6.0)
    assert type(received.sent_at) is float and type(received.deadline) is float


def test_descriptors_may_name_frames_in_any_order():
    header = header_of([torch.ones(2), torch.zeros(3)])
    first, second = header["tensors"]
    first[2], second[2] = 2, 1  # tensor 0 now lives in frame 2
    zeros, ones = torch.zeros(3).numpy().tobytes(), torch.ones(2).numpy().tobytes()

    received = decode_with_header(header, zeros, ones).payload

    assert received[0].tolist() == [1.0, 1.0] and received[1].tolist() == [0.0, 0.0, 0.0]


def test_a_message_of_exactly_the_limit_is_accepted():
    frames = encoded_frames(torch.ones(4))
    size = sum(len(frame) for frame in frames)
    assert decode_envelope(frames, max_message_bytes=size).payload.tolist() == [1.0] * 4
    with pytest.raises(ProtocolError, match=f"message of {size} bytes exceeds the limit of {size - 1} bytes"):
        decode_envelope(frames, max_message_bytes=size - 1)


def test_the_default_limit_is_one_gibibyte():
    assert DEFAULT_MAX_MESSAGE_BYTES == 1 << 30


def test_frames_may_be_any_byte_buffer():
    frames = encoded_frames(np.arange(4, dtype=np.int32))
    for kinds in ([bytes, bytes], [bytearray, bytearray], [memoryview, memoryview]):
        converted = [kind(frame) for kind, frame in zip(kinds, frames)]
        assert decode_envelope(tuple(converted)).payload.tolist() == [0, 1, 2, 3]
    # a 2-d uint8 array and a float32 array as frames are read as their raw bytes
    shaped = np.frombuffer(frames[1], dtype=np.uint8).reshape(4, 4)
    assert decode_envelope([frames[0], shaped]).payload.tolist() == [0, 1, 2, 3]
    assert decode_envelope([frames[0], np.frombuffer(frames[1], dtype=np.float32)]).payload.tolist() == [0, 1, 2, 3]


def test_new_ids_are_unique_and_share_a_process_prefix():
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert len({identifier.split("-")[0] for identifier in ids}) == 1


# ----------------------------------------------------------------- the frame list
@pytest.mark.parametrize("frames", [[], (), None, b"not a list", "frames", iter([b"x"])],
                         ids=["empty-list", "empty-tuple", "None", "bytes", "str", "iterator"])
def test_something_other_than_a_list_of_frames_is_refused(frames):
    with pytest.raises(ProtocolError, match="header frame"):
        decode_envelope(frames)


@pytest.mark.parametrize("frame", [None, "text", 3, 1.5, [b"x"]], ids=repr)
def test_a_frame_that_is_not_a_byte_buffer_is_refused(frame):
    with pytest.raises(ProtocolError, match="not a byte buffer"):
        decode_envelope([encoded_frames()[0], frame])
    with pytest.raises(ProtocolError, match="not a byte buffer"):
        decode_envelope([frame])


@pytest.mark.parametrize("header", [b"", b"\xc1", b"\x92\x01", b"\x80\x01", b"not msgpack"], ids=repr)
def test_a_header_that_is_not_msgpack_is_refused(header):
    with pytest.raises(ProtocolError, match="malformed msgpack"):
        decode_envelope([header])


@pytest.mark.parametrize("header", [[1, 2], "kind", 7, None, b"bytes"], ids=repr)
def test_a_header_that_is_not_a_map_is_refused(header):
    with pytest.raises(ProtocolError, match="header must be a msgpack map"):
        decode_envelope([pack(header)])


def test_a_message_larger_than_the_limit_is_refused_before_it_is_parsed():
    frames = [b"\xc1" * 100, b"x" * 100]  # not even msgpack: the size check comes first
    with pytest.raises(ProtocolError, match="exceeds the limit of 150 bytes"):
        decode_envelope(frames, max_message_bytes=150)


# ----------------------------------------------------------------- header fields
@pytest.mark.parametrize("field", HEADER_FIELDS)
def test_a_missing_header_field_is_named(field):
    header = header_of()
    del header[field]
    with pytest.raises(ProtocolError, match=rf"missing \['{field}'\]"):
        decode_with_header(header)


@pytest.mark.parametrize("extra", ["extra", 7, b"raw"], ids=repr)
def test_an_unknown_header_field_is_named(extra):
    header = header_of()
    header[extra] = 1
    with pytest.raises(ProtocolError, match=rf"unknown \[.*{extra!s}"):
        decode_with_header(header)


WRONG_TYPES = [
    ("kind", 5), ("kind", None), ("kind", b"bytes"),
    ("message_id", 5), ("message_id", None),
    ("correlation_id", 5), ("correlation_id", b"x"),
    ("trace_id", 1.5), ("trace_id", []),
    ("sender", None), ("sender", ["a"]),
    ("sent_at", "now"), ("sent_at", None), ("sent_at", True),
    ("deadline", "soon"), ("deadline", False),
    ("expects_reply", 1), ("expects_reply", None), ("expects_reply", "yes"),
    ("credits", {"messages": 1}), ("credits", 3), ("credits", True),
    ("shm_host", 5), ("shm_host", b"host"),
    ("payload", "text"), ("payload", None), ("payload", [1]),
    ("tensors", None), ("tensors", {}), ("tensors", b""),
]


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES, ids=[f"{f}={v!r}" for f, v in WRONG_TYPES])
def test_a_header_field_of_the_wrong_type_is_named(field, value):
    header = header_of()
    header[field] = value
    with pytest.raises(ProtocolError, match=f"header field '{field}' must be"):
        decode_with_header(header)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, -1, True, 1.0, "1", None], ids=repr)
def test_a_schema_version_other_than_this_one_is_refused(version):
    header = header_of()
    header["schema_version"] = version
    with pytest.raises(ProtocolError, match="schema version .* is not supported"):
        decode_with_header(header)


@pytest.mark.parametrize("field", ["kind", "message_id"])
def test_an_empty_kind_or_message_id_is_refused(field):
    header = header_of()
    header[field] = ""
    with pytest.raises(ProtocolError, match=f"'{field}'.* must not be empty"):
        decode_with_header(header)


@pytest.mark.parametrize("sent_at", [math.nan, math.inf, -math.inf], ids=repr)
def test_a_non_finite_send_time_is_refused(sent_at):
    header = header_of()
    header["sent_at"] = sent_at
    with pytest.raises(ProtocolError, match="'sent_at' must be finite"):
        decode_with_header(header)


def test_a_nan_deadline_is_refused():
    header = header_of()
    header["deadline"] = math.nan
    with pytest.raises(ProtocolError, match="deadline"):
        decode_with_header(header)


@pytest.mark.parametrize("credits", [[], [1], [1, 2, 3], [-1, 0], [0, -5], [1.0, 2], [True, 1], ["1", 2], [None, 1]],
                         ids=repr)
def test_bad_credits_are_refused(credits):
    header = header_of()
    header["credits"] = credits
    with pytest.raises(ProtocolError, match="'credits'"):
        decode_with_header(header)


def test_credits_up_to_the_largest_msgpack_integer_are_accepted():
    header = header_of()
    header["credits"] = [0, 2**64 - 1]
    assert decode_with_header(header).credits == (0, 2**64 - 1)


# ----------------------------------------------------------------- tensor descriptors
def header_with_descriptors(*descriptors: list) -> dict:
    """A header whose payload is the list of the tensors these descriptors describe."""
    header = header_of()
    header["tensors"] = list(descriptors)
    header["payload"] = pack([msgpack.ExtType(1, index.to_bytes(4, "little")) for index in range(len(descriptors))])
    return header


def test_descriptor_count_must_match_the_tensor_frames():
    with pytest.raises(ProtocolError, match="describes 1 tensors but the message has 2 tensor frames"):
        decode_with_header(header_with_descriptors(["uint8", [1], 1, "torch"]), b"x", b"y")
    with pytest.raises(ProtocolError, match="describes 0 tensors but the message has 1 tensor frames"):
        decode_with_header(header_of(), b"x")
    with pytest.raises(ProtocolError, match="describes 1 tensors but the message has 0 tensor frames"):
        decode_with_header(header_with_descriptors(["uint8", [1], 1, "torch"]))


@pytest.mark.parametrize("descriptor", [["uint8", [1], 1], ["uint8", [1], 1, "torch", 0], "uint8", None, {}],
                         ids=["three", "five", "string", "nil", "map"])
def test_a_descriptor_of_the_wrong_arity_is_refused(descriptor):
    with pytest.raises(ProtocolError, match=r"tensor descriptor 0 must be \[dtype, shape, frame, array\]"):
        decode_with_header(header_with_descriptors(descriptor), b"x")


@pytest.mark.parametrize("dtype", ["float128", "qint8", "Float32", "", "<f4"])
def test_an_unknown_torch_dtype_is_refused(dtype):
    with pytest.raises(ProtocolError, match="tensor descriptor 0: unknown torch dtype"):
        decode_with_header(header_with_descriptors([dtype, [1], 1, "torch"]), b"x")


@pytest.mark.parametrize("dtype", ["O", "<U4", "S3", "V8", "f4,i4", "(2,)f4", "M8[s]", "m8", "<M8[ns]"])
def test_a_numpy_dtype_that_is_not_plain_numbers_is_refused(dtype):
    with pytest.raises(ProtocolError, match="tensor descriptor 0: numpy dtype .* is not a plain"):
        decode_with_header(header_with_descriptors([dtype, [0], 1, "numpy"]), b"")


@pytest.mark.parametrize("dtype", ["not-a-dtype", "float99", "[('a','<f4')]", "i3"])
def test_an_unparseable_numpy_dtype_is_refused(dtype):
    with pytest.raises(ProtocolError, match="tensor descriptor 0: unknown numpy dtype"):
        decode_with_header(header_with_descriptors([dtype, [1], 1, "numpy"]), b"x")


@pytest.mark.parametrize(("dtype", "array"), [(5, "torch"), ("float32", "jax"), ("float32", None), (None, "numpy")],
                         ids=repr)
def test_a_descriptor_needs_a_string_dtype_and_a_known_array_type(dtype, array):
    with pytest.raises(ProtocolError, match="tensor descriptor 0: needs a string dtype and array type"):
        decode_with_header(header_with_descriptors([dtype, [1], 1, array]), b"x")


@pytest.mark.parametrize("shape", [[-1], [2, -3], [1.5], [True], ["2"], [None], "2", 2, None, [[2]]], ids=repr)
def test_a_shape_that_is_not_non_negative_integers_is_refused(shape):
    with pytest.raises(ProtocolError, match="tensor descriptor 0: shape must be a list"):
        decode_with_header(header_with_descriptors(["uint8", shape, 1, "torch"]), b"xx")


def test_a_rank_above_the_maximum_is_refused_and_the_maximum_is_accepted():
    too_deep = header_with_descriptors(["uint8", [1] * (MAX_TENSOR_RANK + 1), 1, "torch"])
    with pytest.raises(ProtocolError, match=f"at most {MAX_TENSOR_RANK}"):
        decode_with_header(too_deep, b"x")
    deepest = header_with_descriptors(["uint8", [1] * MAX_TENSOR_RANK, 1, "torch"])
    assert decode_with_header(deepest, b"x").nbytes > 0


@pytest.mark.parametrize("frame", [0, 2, -1, True, 1.0, "1", None], ids=repr)
def test_a_frame_index_outside_the_tensor_frames_is_refused(frame):
    with pytest.raises(ProtocolError, match=r"tensor descriptor 0: frame index .* is outside 1\.\.1"):
        decode_with_header(header_with_descriptors(["uint8", [1], frame, "torch"]), b"x")


def test_two_descriptors_on_one_frame_are_refused():
    header = header_with_descriptors(["uint8", [1], 1, "torch"], ["uint8", [1], 1, "torch"])
    with pytest.raises(ProtocolError, match="two tensor descriptors point at the same frame"):
        decode_with_header(header, b"x", b"y")


@pytest.mark.parametrize(("descriptor", "frame", "needed"),
                         [(["float32", [2, 2], 1, "torch"], b"x" * 15, 16),
                          (["float32", [2, 2], 1, "torch"], b"x" * 17, 16),
                          (["<c16", [3], 1, "numpy"], b"x" * 47, 48),
                          (["float32", [0], 1, "torch"], b"x", 0),
                          (["int64", [], 1, "torch"], b"", 8)],
                         ids=["short", "long", "numpy", "empty-shape-nonempty-frame", "scalar-empty-frame"])
def test_a_frame_whose_size_does_not_match_its_descriptor_is_refused(descriptor, frame, needed):
    with pytest.raises(ProtocolError, match=f"needs {needed} bytes but frame 1 holds {len(frame)}"):
        decode_with_header(header_with_descriptors(descriptor), frame)


@pytest.mark.parametrize("array", ["torch", "numpy"])
@pytest.mark.parametrize("shape", [[2**40, 2**40], [2**64 - 1] * MAX_TENSOR_RANK, [3, 2**63]],
                         ids=["2^40x2^40", "max", "2^63"])
def test_a_huge_claimed_shape_is_refused_by_its_size(shape, array):
    dtype = "float32" if array == "torch" else "<f4"
    with pytest.raises(ProtocolError, match="claims more than"):
        decode_with_header(header_with_descriptors([dtype, shape, 1, array]), b"xxxx")


@pytest.mark.parametrize("array", ["torch", "numpy"])
@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**64 - 1], [0, 2**62, 4], [0, 2**40, 2**40]], ids=str)
def test_an_empty_tensor_with_a_huge_dimension_is_refused_with_a_protocol_error(shape, array):
    dtype = "float32" if array == "torch" else "<f4"
    with pytest.raises(ProtocolError):
        decode_with_header(header_with_descriptors([dtype, shape, 1, array]), b"")


@pytest.mark.parametrize("array", ["torch", "numpy"])
def test_a_writable_non_contiguous_frame_is_refused_or_copied(array):
    dtype = "uint8" if array == "torch" else "|u1"
    header = header_with_descriptors([dtype, [4], 1, array])
    strided = memoryview(bytearray(b"a_b_c_d_"))[::2]
    try:
        (received,) = decode_with_header(header, strided).payload
    except ProtocolError:
        return
    assert bytes(np.asarray(received)) == b"abcd"


def test_a_read_only_non_contiguous_frame_is_refused():
    header = header_with_descriptors(["uint8", [4], 1, "torch"])
    with pytest.raises(ProtocolError, match="contiguous"):
        decode_with_header(header, memoryview(b"a_b_c_d_")[::2])


# ----------------------------------------------------------------- the payload
def test_a_payload_referring_to_a_missing_tensor_is_refused():
    header = header_of()
    header["payload"] = pack([msgpack.ExtType(1, (0).to_bytes(4, "little"))])
    with pytest.raises(ProtocolError, match="payload refers to tensor 0 but the message carries 0"):
        decode_with_header(header)


def test_a_tensor_reference_of_the_wrong_length_is_refused():
    header = header_of(torch.ones(1))
    header["payload"] = pack(msgpack.ExtType(1, b"\x00\x00"))
    with pytest.raises(ProtocolError, match="tensor reference must be 4 bytes, got 2"):
        decode_with_header(header, torch.ones(1).numpy().tobytes())


@pytest.mark.parametrize("code", [0, 2, 5, 127, -2, -128])
def test_an_unknown_extension_type_in_the_payload_is_refused(code):
    header = header_of()
    fixext4 = b"\xd6" + code.to_bytes(1, "little", signed=True) + b"\x00\x00\x00\x00"
    header["payload"] = b"\x81\xa1x" + fixext4  # {"x": ext(code, 4 bytes)}
    with pytest.raises(ProtocolError, match=f"unknown msgpack extension type {code} in payload"):
        decode_with_header(header)


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\xa3ab", b"\xa2\xff\xfe"], ids=repr)
def test_a_payload_that_is_not_msgpack_is_refused(payload):
    header = header_of()
    header["payload"] = payload
    with pytest.raises(ProtocolError, match="malformed msgpack"):
        decode_with_header(header)


def test_a_payload_nested_beyond_msgpacks_depth_limit_is_refused():
    header = header_of()
    header["payload"] = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(ProtocolError, match="malformed msgpack"):
        decode_with_header(header)


def test_a_payload_nested_too_deep_to_encode_is_refused():
    nested: list = []
    for _ in range(10_000):
        nested = [nested]
    with pytest.raises(ProtocolError):
        encode_envelope(make_envelope(nested))

"""Bucket planning, packing and the packer -> sender hand-off of the weight channel.

Expected layouts are written out by hand; packed tensors are compared byte for byte.
"""

import threading
import time

import pytest
import torch

from protocols.weights import BucketSpec, TensorSpec
from runtime.weights.layout import (
    LayoutError,
    TensorMeta,
    allocate,
    check_layout,
    dtype_name,
    parse_dtype,
    plan_buckets,
    total_bytes,
    unpack,
)
from runtime.weights.publisher import BucketStream, WeightsError, pack

F32, BF16 = torch.float32, torch.bfloat16
CPU = torch.device("cpu")


def meta(name, *shape, dtype=F32):
    return TensorMeta(name, dtype, shape)


def layout(buckets):
    """Each bucket as (dtype, numel, [(name, shape, offset), ...])."""
    return [(b.dtype, b.numel, [(t.name, tuple(t.shape), t.offset) for t in b.tensors]) for b in buckets]


def raw_bytes(tensor):
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def wait_blocked(thread):
    thread.join(0.05)
    assert thread.is_alive(), "the thread should be blocked"


# ---- plan_buckets -------------------------------------------------------------------


def test_tensors_that_fit_share_one_bucket_at_consecutive_offsets():
    metas = [meta("a", 2, 3), meta("b", 4), meta("c")]
    assert layout(plan_buckets(metas, bucket_bytes=1024)) == [
        ("float32", 11, [("a", (2, 3), 0), ("b", (4,), 6), ("c", (), 10)]),
    ]


def test_a_tensor_that_does_not_fit_closes_the_bucket():
    # 16 bytes hold 4 float32 elements.
    metas = [meta("w1", 2), meta("w2", 1), meta("w3", 3), meta("w4", 2, 2), meta("w5")]
    assert layout(plan_buckets(metas, bucket_bytes=16)) == [
        ("float32", 3, [("w1", (2,), 0), ("w2", (1,), 2)]),
        ("float32", 3, [("w3", (3,), 0)]),
        ("float32", 4, [("w4", (2, 2), 0)]),  # exactly full
        ("float32", 1, [("w5", (), 0)]),
    ]


def test_a_tensor_larger_than_a_bucket_gets_a_bucket_of_its_own():
    metas = [meta("small", 2), meta("big", 10), meta("after", 1)]
    assert layout(plan_buckets(metas, bucket_bytes=16)) == [
        ("float32", 2, [("small", (2,), 0)]),
        ("float32", 10, [("big", (10,), 0)]),
        ("float32", 1, [("after", (1,), 0)]),
    ]


def test_interleaved_dtypes_get_per_dtype_buckets_in_the_order_of_their_last_tensor():
    # 16 bytes: 4 float32 or 8 bfloat16 elements. Buckets open as F1, B1, F2, B2 and
    # are closed as F1, B1, then F2, B2 at the end, but complete (last tensor packed)
    # at positions 0, 3, 2, 4: the packer finishes them as F1, F2, B1, B2.
    metas = [
        meta("x", 3),  # 0: opens F1
        meta("y", 4, dtype=BF16),  # 1: opens B1
        meta("z", 3),  # 2: closes F1, opens F2
        meta("u", 4, dtype=BF16),  # 3: fills B1
        meta("v", 1, dtype=BF16),  # 4: closes B1, opens B2
    ]
    assert layout(plan_buckets(metas, bucket_bytes=16)) == [
        ("float32", 3, [("x", (3,), 0)]),
        ("float32", 3, [("z", (3,), 0)]),
        ("bfloat16", 8, [("y", (4,), 0), ("u", (4,), 4)]),
        ("bfloat16", 1, [("v", (1,), 0)]),
    ]


def test_zero_element_and_scalar_tensors_are_laid_out():
    metas = [meta("a", 2), meta("empty", 0, 3), meta("scalar"), meta("b", 1)]
    assert layout(plan_buckets(metas, bucket_bytes=16)) == [
        ("float32", 4, [("a", (2,), 0), ("empty", (0, 3), 2), ("scalar", (), 2), ("b", (1,), 3)]),
    ]


def test_a_duplicate_name_is_refused_by_name():
    metas = [meta("w", 1), meta("other", 1), meta("w", 2, dtype=BF16)]
    with pytest.raises(LayoutError, match="'w' appears twice"):
        plan_buckets(metas, bucket_bytes=1024)


@pytest.mark.parametrize("bucket_bytes", [0, -1])
def test_a_bucket_size_that_is_not_positive_is_refused(bucket_bytes):
    with pytest.raises(LayoutError, match="positive"):
        plan_buckets([meta("w", 1)], bucket_bytes)


# ---- pack and unpack ----------------------------------------------------------------


def named_inputs():
    generator = torch.Generator().manual_seed(0)
    return [
        ("embed", torch.randn(3, 4, generator=generator)),
        ("norm", torch.randn(5, generator=generator).to(BF16)),
        ("steps", torch.tensor(-(2**40) + 7, dtype=torch.int64)),
        ("proj_t", torch.randn(4, 3, generator=generator).t()),  # non-contiguous
        ("gate", torch.tensor([float("nan"), -0.0, float("inf")], dtype=BF16)),
        ("ids", torch.arange(6, dtype=torch.int64).reshape(2, 3)),
        ("bias", torch.randn(2, generator=generator)),
    ]


def plan(named, bucket_bytes=16):
    return plan_buckets([TensorMeta(n, t.dtype, tuple(t.shape)) for n, t in named], bucket_bytes)


def assert_unpacked_equal(named, buckets, flats):
    received = [(name, view) for bucket, flat in zip(buckets, flats) for name, view in unpack(bucket, flat)]
    assert [name for name, _ in received] == [t.name for b in buckets for t in b.tensors]
    inputs = dict(named)
    for name, view in received:
        assert view.dtype == inputs[name].dtype and view.shape == inputs[name].shape, name
        assert torch.equal(raw_bytes(view), raw_bytes(inputs[name])), name


def test_fresh_buckets_taken_from_the_stream_unpack_to_the_inputs_bit_for_bit():
    named = named_inputs()
    buckets = plan(named)
    assert len(buckets) > 3
    stream = BucketStream(None)
    seconds, copied = pack(named, buckets, None, stream, CPU)
    assert isinstance(seconds, float) and copied == len(named)
    deadline = time.monotonic() + 1.0
    assert_unpacked_equal(named, buckets, [stream.take(i, deadline) for i in range(len(buckets))])


@pytest.mark.parametrize("with_stream", [True, False])
def test_preallocated_buffers_are_filled_and_are_what_the_stream_hands_out(with_stream):
    named = named_inputs()
    buckets = plan(named)
    buffers = [allocate(bucket) for bucket in buckets]
    stream = BucketStream(None) if with_stream else None
    pack(named, buckets, buffers, stream, CPU)
    if stream is not None:
        deadline = time.monotonic() + 1.0
        handed = [stream.take(i, deadline) for i in range(len(buffers))]
        assert all(piece.data_ptr() == buffer.data_ptr() and piece.numel() == buffer.numel() for piece, buffer in zip(handed, buffers))
    assert_unpacked_equal(named, buckets, buffers)


def test_without_buffers_or_stream_pack_only_walks_the_tensors():
    named = named_inputs()
    seconds, copied = pack(named, plan(named), None, None, CPU)
    assert isinstance(seconds, float) and copied == 0


def test_a_consumer_taking_buckets_in_order_never_deadlocks_the_bounded_packer():
    named = named_inputs() + [(f"extra{i}", torch.full((3,), float(i))) for i in range(6)]
    buckets = plan(named, bucket_bytes=8)
    assert len(buckets) > 5
    stream = BucketStream(capacity=2)
    received, errors = [], []
    deadline = time.monotonic() + 2.0

    def consume():
        try:
            received.extend(stream.take(i, deadline) for i in range(len(buckets)))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    consumer = threading.Thread(target=consume, daemon=True)
    producer = threading.Thread(target=pack, args=(named, buckets, None, stream, CPU), daemon=True)
    consumer.start()
    producer.start()
    consumer.join(3.0)
    producer.join(1.0)
    stream.close()  # releases a stuck packer, should the assertions below fail
    assert not errors
    assert not consumer.is_alive() and not producer.is_alive()
    assert_unpacked_equal(named, buckets, received)


# ---- BucketStream -------------------------------------------------------------------


def test_take_raises_timeout_past_its_deadline():
    stream = BucketStream(None)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="piece 0"):
        stream.take(0, started + 0.05)
    assert time.monotonic() - started >= 0.05
    with pytest.raises(TimeoutError):
        stream.take(0, started - 1.0)


def test_take_after_close_raises_even_for_a_bucket_put_before():
    stream = BucketStream(None)
    stream.put(0, torch.zeros(1))
    stream.close()
    with pytest.raises(WeightsError, match="closed"):
        stream.take(0, time.monotonic() + 1.0)


def test_close_releases_a_producer_blocked_at_capacity_and_later_puts_return_at_once():
    stream = BucketStream(capacity=1)
    stream.put(0, torch.zeros(1))
    producer = threading.Thread(target=stream.put, args=(1, torch.zeros(1)), daemon=True)
    producer.start()
    wait_blocked(producer)
    stream.close()
    producer.join(1.0)
    assert not producer.is_alive()
    late = threading.Thread(target=lambda: [stream.put(i, torch.zeros(1)) for i in range(2, 5)], daemon=True)
    late.start()
    late.join(1.0)
    assert not late.is_alive()


# ---- check_layout, sizes and dtype names --------------------------------------------


def bucket(dtype, numel, *tensors):
    return BucketSpec(dtype, numel, [TensorSpec(name, shape, offset) for name, shape, offset in tensors])


MODEL_SHAPES = {"a": (2, 3), "b": (4,), "c": ()}


def test_a_matching_layout_is_accepted_whatever_its_dtypes():
    # The model here could be bfloat16 while the trainer announces float32: loading
    # casts each tensor, so only names, shapes and offsets must agree.
    check_layout([bucket("float32", 10, ("a", (2, 3), 0), ("b", (4,), 6)), bucket("bfloat16", 1, ("c", (), 0))], MODEL_SHAPES)


def test_a_layout_that_does_not_fit_the_model_names_every_problem():
    buckets = [bucket("float32", 12, ("a", (2, 3), 0), ("b", (2, 2), 6), ("ghost", (1,), 10)), bucket("float32", 2, ("c", (), 1))]
    with pytest.raises(LayoutError) as raised:
        check_layout(buckets, MODEL_SHAPES)
    message = str(raised.value)
    assert "b: shape (2, 2), the model has (4,)" in message
    assert "ghost: not a tensor of this model" in message
    assert "c: offset 1, expected 0" in message
    assert "says 12 elements, its tensors fill 11" in message
    assert "a:" not in message  # "a" fits


def test_an_unknown_bucket_dtype_is_refused():
    with pytest.raises(LayoutError, match="'float99'"):
        check_layout([bucket("float99", 1, ("c", (), 0))], MODEL_SHAPES)


def test_total_bytes_sums_each_bucket_at_its_itemsize():
    buckets = [bucket("float32", 3), bucket("bfloat16", 5), bucket("int64", 2)]
    assert total_bytes(buckets) == 3 * 4 + 5 * 2 + 2 * 8
    assert total_bytes([]) == 0


@pytest.mark.parametrize(("dtype", "name"), [(F32, "float32"), (torch.half, "float16"), (BF16, "bfloat16"), (torch.long, "int64")])
def test_dtype_names_round_trip(dtype, name):
    assert dtype_name(dtype) == name
    assert parse_dtype(name) is dtype


@pytest.mark.parametrize("name", ["float99", "Tensor", "nn", ""])
def test_a_name_that_is_not_a_dtype_is_refused(name):
    with pytest.raises(LayoutError, match="not a torch dtype"):
        parse_dtype(name)

"""Pieces, packing and what trainer rank 0 keeps (runtime/weights/layout.py, packing.py,
retention.py): the piece order written out by hand, pieces handed over while their
bucket is still being packed, a model moved into its buckets, and deltas that bring a
receiver's copy to the new version bit for bit."""

from __future__ import annotations

import time

import pytest
import torch

from protocols.weights import BucketSpec, PieceSpec, PublishReport, TensorSpec
from runtime.compute import ComputeWorker
from runtime.weights import delta
from runtime.weights.layout import LayoutError, TensorMeta, check_pieces, plan_buckets, plan_pieces
from runtime.weights.packing import BucketStream, InPlace, Packer, named_tensors, pack, tensor_metas
from runtime.weights.publisher import publish_metrics
from runtime.weights.retention import Retention

F32, BF16 = torch.float32, torch.bfloat16
CPU = torch.device("cpu")


def pieces_of(order: list[PieceSpec]) -> list[tuple[int, int, int]]:
    return [(piece.bucket, piece.start, piece.numel) for piece in order]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


# ---- plan_pieces and check_pieces ---------------------------------------------------


def test_pieces_are_listed_in_the_order_the_packer_fills_them() -> None:
    metas = [TensorMeta("x", F32, (6,)), TensorMeta("y", BF16, (8,)), TensorMeta("z", F32, (2,))]
    buckets = plan_buckets(metas, bucket_bytes=1024)
    assert [(b.dtype, b.numel) for b in buckets] == [("bfloat16", 8), ("float32", 8)]  # y's bucket completes first
    # 8-byte pieces: 2 float32 or 4 bfloat16 elements. x fills float32 [0, 6), y all of
    # bfloat16, z the rest of float32.
    assert pieces_of(plan_pieces(metas, buckets, piece_bytes=8)) == [
        (1, 0, 2), (1, 2, 2), (1, 4, 2),
        (0, 0, 4), (0, 4, 4),
        (1, 6, 2),
    ]
    assert pieces_of(plan_pieces(metas, buckets, piece_bytes=1 << 20)) == [(0, 0, 8), (1, 0, 8)]


def test_a_piece_size_below_one_element_still_cuts_whole_elements() -> None:
    metas = [TensorMeta("x", F32, (3,))]
    assert pieces_of(plan_pieces(metas, plan_buckets(metas, 1024), piece_bytes=1)) == [(0, 0, 1), (0, 1, 1), (0, 2, 1)]


def bucket(numel: int) -> BucketSpec:
    return BucketSpec("float32", numel, [TensorSpec("t", (numel,), 0)])


@pytest.mark.parametrize(("pieces", "problem"), [
    ([PieceSpec(0, 0, 2), PieceSpec(0, 3, 1)], "does not follow"),
    ([PieceSpec(0, 0, 2), PieceSpec(0, 1, 3)], "does not follow"),
    ([PieceSpec(1, 0, 4)], "names bucket 1"),
    ([PieceSpec(0, 0, 3)], "do not cover"),
    ([PieceSpec(0, 0, 4), PieceSpec(0, 4, 0)], "does not follow"),
])
def test_pieces_that_do_not_tile_the_buckets_are_refused(pieces: list[PieceSpec], problem: str) -> None:
    with pytest.raises(LayoutError, match=problem):
        check_pieces([bucket(4)], pieces)


# ---- the packer ---------------------------------------------------------------------


def test_a_piece_goes_to_the_sender_before_the_rest_of_its_bucket_is_packed() -> None:
    named = [("a", torch.arange(4.0)), ("b", torch.arange(4.0, 8.0))]
    metas = tensor_metas(named)
    buckets = plan_buckets(metas, 1024)
    order = plan_pieces(metas, buckets, piece_bytes=8)
    stream = BucketStream(None)
    packer = Packer(buckets, order, None, stream, CPU)
    packer.add("a", named[0][1])
    soon = time.monotonic() + 0.05
    assert [stream.take(i, soon).tolist() for i in (0, 1)] == [[0.0, 1.0], [2.0, 3.0]]
    with pytest.raises(TimeoutError, match="piece 2"):
        stream.take(2, soon)
    packer.add("b", named[1][1])
    assert stream.take(3, soon).tolist() == [6.0, 7.0]


def apply_pieces(stream: BucketStream, order: list[PieceSpec], copy: list[torch.Tensor]) -> int:
    """A receiver's side: apply every piece to `copy`; returns the bytes that travelled."""
    nbytes = 0
    for index, piece in enumerate(order):
        item = stream.take(index, time.monotonic() + 1.0)
        target = copy[piece.bucket][piece.start : piece.start + piece.numel]
        kind, count = item.header.tolist()
        nbytes += item.nbytes
        if kind == delta.FULL:
            target.copy_(item.payload)
        elif item.payload is not None:
            delta.apply(kind, count, item.payload, target)
    return nbytes


def sparse_step(named: list[tuple[str, torch.Tensor]], generator: torch.Generator, share: float) -> None:
    for _, tensor in named:
        flip = torch.rand(tensor.shape, generator=generator) < share
        tensor[flip] += 1


def test_deltas_against_the_buffers_being_overwritten_rebuild_every_version_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    named = [("w1", torch.randn(40, 30, generator=generator).to(BF16)), ("w2", torch.randn(700, generator=generator).to(BF16)),
             ("n", torch.ones(30, dtype=F32))]
    metas = tensor_metas(named)
    buckets = plan_buckets(metas, 2048)
    order = plan_pieces(metas, buckets, piece_bytes=512)
    buffers = [torch.empty(b.numel, dtype=getattr(torch, b.dtype)) for b in buckets]
    pack(named, buckets, buffers, None, CPU, order)
    receiver = [buffer.clone() for buffer in buffers]  # caught up with the full version
    kinds = set()
    for version, share in enumerate([0.001, 0.01, 0.2, 1.0, 0.0]):
        sparse_step(named, generator, share)
        stream = BucketStream(None)
        pack(named, buckets, buffers, stream, CPU, order, is_delta=True)
        sent = apply_pieces(stream, order, receiver)
        assert all(same_bits(mine, theirs) for mine, theirs in zip(receiver, buffers)), version
        kinds.add(sent < sum(b.numel() * b.element_size() for b in buffers))
    assert kinds == {True, False}  # the sparse versions were smaller as deltas; the dense one travelled whole


def test_deltas_against_a_kept_copy_patch_it_to_the_new_version() -> None:
    generator = torch.Generator().manual_seed(1)
    named = [("w", torch.randn(1000, generator=generator).to(BF16))]
    metas = tensor_metas(named)
    buckets = plan_buckets(metas, 4096)
    order = plan_pieces(metas, buckets, piece_bytes=256)
    live = [torch.empty(b.numel, dtype=BF16) for b in buckets]
    pack(named, buckets, live, None, CPU, order)
    kept = [buffer.clone() for buffer in live]
    receiver = [buffer.clone() for buffer in live]
    for _ in range(3):
        sparse_step(named, generator, 0.02)
        stream = BucketStream(None)
        pack(named, buckets, live, stream, CPU, order, is_delta=True, previous=kept)
        apply_pieces(stream, order, receiver)
        assert same_bits(receiver[0], live[0]) and same_bits(kept[0], live[0])


def tiny_model(dtype: torch.dtype = BF16) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 50))
    model.register_buffer("scale", torch.ones(16))
    return model.to(dtype)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    ids = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(seed))
    logits = model(ids).float()
    torch.nn.functional.cross_entropy(logits.view(-1, 50), ids.view(-1)).backward()
    optimizer.step()
    optimizer.zero_grad()


def layout_of(model: torch.nn.Module, send_dtype: torch.dtype | None = None):  # type: ignore[no-untyped-def]
    named = named_tensors(model)
    metas = tensor_metas(named, send_dtype)
    buckets = plan_buckets(metas, 1 << 20)
    return named, buckets, plan_pieces(metas, buckets, 1 << 20)


def test_a_moved_model_trains_in_its_buckets_and_later_publications_copy_nothing() -> None:
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    parameters = list(model.parameters())
    named, buckets, order = layout_of(model)
    live = [torch.empty(b.numel, dtype=BF16) for b in buckets]
    moving = InPlace(model)
    assert pack(named, buckets, live, None, CPU, order, in_place=moving)[1] == len(named)  # copied once, then moved
    assert list(model.parameters()) == parameters  # the same Parameter objects, now views of the buckets
    start, end = live[0].data_ptr(), live[0].data_ptr() + live[0].numel() * 2
    assert all(start <= tensor.data_ptr() < end for tensor in model.state_dict().values())
    assert all(same_bits(before[name], tensor) for name, tensor in model.state_dict().items())

    train_step(model, optimizer, seed=0)
    named, buckets2, order = layout_of(model)
    assert buckets2 == buckets
    assert pack(named, buckets, live, None, CPU, order, in_place=moving)[1] == 0
    received = dict(named_tensors(model))
    for spec in buckets[0].tensors:  # the buckets are the trained weights
        view = live[0][spec.offset : spec.offset + received[spec.name].numel()].view(spec.shape)
        assert same_bits(view, received[spec.name])
    assert any(not same_bits(before[name], tensor) for name, tensor in received.items())


def test_tied_weights_move_once_and_the_second_name_is_copied() -> None:
    model = tiny_model()
    model[3].weight = model[0].weight  # the output head shares the embedding
    named, buckets, order = layout_of(model)
    live = [torch.empty(b.numel, dtype=BF16) for b in buckets]
    moving = InPlace(model)
    pack(named, buckets, live, None, CPU, order, in_place=moving)
    assert model[3].weight is model[0].weight
    named, _, _ = layout_of(model)
    assert pack(named, buckets, live, None, CPU, order, in_place=moving)[1] == 1


def test_a_model_cast_for_the_transfer_stays_where_it_is_and_is_copied_each_time() -> None:
    model = tiny_model(F32)
    pointers = [tensor.data_ptr() for tensor in model.state_dict().values()]
    named, buckets, order = layout_of(model, BF16)
    live = [torch.empty(b.numel, dtype=BF16) for b in buckets]
    moving = InPlace(model)
    for _ in range(2):
        assert pack(named, buckets, live, None, CPU, order, in_place=moving)[1] == len(named)
    assert [tensor.data_ptr() for tensor in model.state_dict().values()] == pointers
    slot = next(spec for spec in buckets[0].tensors if spec.name == "0.weight")
    weight = live[0][slot.offset : slot.offset + 50 * 16].view(50, 16)
    assert same_bits(weight, model[0].weight.detach().to(BF16))


async def test_a_moved_model_is_kept_as_a_snapshot_copied_after_the_publication() -> None:
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    compute = ComputeWorker("test")
    retention = Retention(keep=True, delta=True, in_place=True)
    try:
        for version in (1, 2, 3):
            named, buckets, order = layout_of(model)
            plan = retention.plan(model, None, buckets, CPU, published=version - 1)
            assert plan.base == (None if version == 1 else version - 1)
            is_delta = plan.base is not None
            if is_delta:
                assert plan.previous is not None
                retention.patching(plan)
            pack(named, buckets, plan.buffers, None, CPU, order, is_delta, plan.previous if is_delta else None, plan.in_place)
            retention.published(plan, version, order, patched=is_delta, compute=compute)
            kept = retention.retained
            assert kept is not None and kept.version == version
            if kept.ready is not None:
                await kept.ready
            assert kept.buffers is not plan.buffers
            assert same_bits(kept.buffers[0], plan.buffers[0])
            train_step(model, optimizer, seed=version)
            assert not same_bits(kept.buffers[0], plan.buffers[0])  # training moved on; the kept version did not
    finally:
        compute.shutdown()


def test_a_publication_report_becomes_weights_metrics() -> None:
    report = PublishReport(7, 0, ["generator-0", "generator-1"], {}, [], 1000, 2, 0.1, 0.25, pause_s=0.01,
                           sent_bytes=120, delta_share=0.9)
    assert publish_metrics(report) == {
        "weights/version": 7.0, "weights/sync_s": 0.25, "weights/generators": 2.0,
        "weights/sent_bytes": 120.0, "weights/delta_share": 0.9, "weights/pause_s": 0.01,
    }

"""`Batch`: construction checks, row selection, splitting and padding, concatenation, and
the wire form."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from protocols.batch import Batch, BatchError
from tests.unit.protocols.payloads import round_trip


def make_batch(size: int = 5) -> Batch:
    """Rows are recognisable: row i has ids [i, 10 + i], score i / 2 and prompt 'p{i}'."""
    rows = torch.arange(size)
    return Batch(
        tensors={"ids": torch.stack([rows, rows + 10], dim=1), "score": rows.float() / 2},
        columns={"prompt": [f"p{i}" for i in range(size)]},
    )


def row_ids(batch: Batch) -> list[int]:
    """Which original rows a derived batch holds (checked to agree across all columns)."""
    from_ids = batch["ids"][:, 0].tolist()
    assert batch["ids"][:, 1].tolist() == [i + 10 for i in from_ids]
    assert batch["score"].tolist() == [i / 2 for i in from_ids]
    assert batch["prompt"] == [f"p{i}" for i in from_ids]
    assert len(batch) == len(from_ids)
    return from_ids


def assert_same_batch(actual: Batch, expected: Batch) -> None:
    assert len(actual) == len(expected)
    assert list(actual.tensors) == list(expected.tensors) and list(actual.columns) == list(expected.columns)
    for name, tensor in expected.tensors.items():
        assert_close(actual.tensors[name], tensor, rtol=0, atol=0)
    assert actual.columns == expected.columns


# ----------------------------------------------------------------- construction
def test_a_batch_knows_its_size_names_and_columns():
    batch = make_batch(3)
    assert len(batch) == 3
    assert batch.names() == ["ids", "score", "prompt"]
    assert "ids" in batch and "prompt" in batch and "missing" not in batch
    assert batch["prompt"] == ["p0", "p1", "p2"]
    assert "size=3" in repr(batch) and "ids: torch.int64 [3, 2]" in repr(batch)


def test_asking_for_a_missing_column_lists_the_columns_there_are():
    with pytest.raises(KeyError, match=r"no column 'nope'; it has \['ids', 'prompt', 'score'\]"):
        make_batch()["nope"]


def test_columns_that_disagree_on_rows_are_refused_naming_each_length():
    with pytest.raises(BatchError, match="columns disagree on the number of rows: a=3, b=2"):
        Batch(tensors={"a": torch.zeros(3), "b": torch.zeros(2, 4)})
    with pytest.raises(BatchError, match="a=3, text=4"):
        Batch(tensors={"a": torch.zeros(3)}, columns={"text": ["w", "x", "y", "z"]})


def test_a_zero_dimensional_tensor_column_is_refused():
    with pytest.raises(BatchError, match="tensor column 'loss' is 0-d"):
        Batch(tensors={"loss": torch.tensor(1.0)})


def test_a_name_used_for_both_kinds_of_column_is_refused():
    with pytest.raises(BatchError, match=r"names \['x'\] are both tensor and non-tensor columns"):
        Batch(tensors={"x": torch.zeros(2)}, columns={"x": [1, 2]})


@pytest.mark.parametrize("value", [[1, 2], (1, 2), "ab", None], ids=repr)
def test_a_tensor_column_that_is_not_a_tensor_is_refused(value):
    with pytest.raises(BatchError, match="tensor column 'x' holds"):
        Batch(tensors={"x": value})


def test_an_explicit_size_must_agree_with_the_columns():
    with pytest.raises(BatchError, match="size=4 was given but the columns have 3 rows"):
        Batch(tensors={"x": torch.zeros(3)}, size=4)
    assert len(Batch(tensors={"x": torch.zeros(3)}, size=3)) == 3


def test_a_batch_without_columns_takes_its_size_from_the_argument():
    assert len(Batch()) == 0
    assert len(Batch(size=4)) == 4
    with pytest.raises(BatchError, match="size must be non-negative"):
        Batch(size=-1)


def test_columns_are_copied_into_lists():
    source = ("a", "b")
    batch = Batch(columns={"text": source})
    assert batch["text"] == ["a", "b"] and type(batch["text"]) is list


# ----------------------------------------------------------------- select
@pytest.mark.parametrize(
    ("index", "expected"),
    [
        ([3, 0, 3], [3, 0, 3]),
        ([-1, -5], [4, 0]),
        ([], []),
        (slice(1, None, 2), [1, 3]),
        (slice(None, None, -1), [4, 3, 2, 1, 0]),
        (slice(10, 20), []),
        (torch.tensor([4, 1]), [4, 1]),
        (torch.tensor([[2], [-2]]), [2, 3]),
        (torch.tensor(2), [2]),
        (torch.tensor([True, False, False, True, True]), [0, 3, 4]),
        (torch.zeros(5, dtype=torch.bool), []),
        (range(2, 4), [2, 3]),
    ],
    ids=["list", "negative", "empty-list", "slice", "reversed", "slice-past-end", "long-tensor", "2d-tensor",
         "0d-tensor", "bool-mask", "all-false-mask", "range"],
)
def test_select_picks_rows_in_the_order_given(index, expected):
    assert row_ids(make_batch(5).select(index)) == expected


@pytest.mark.parametrize("index", [[5], [-6], [0, 99], torch.tensor([7])], ids=repr)
def test_select_refuses_a_row_index_out_of_range(index):
    with pytest.raises(BatchError, match=r"row index -?\d+ is out of range for a batch of 5 rows"):
        make_batch(5).select(index)


@pytest.mark.parametrize("mask", [torch.ones(4, dtype=torch.bool), torch.ones(5, 1, dtype=torch.bool),
                                  torch.ones(6, dtype=torch.bool)], ids=["short", "2d", "long"])
def test_select_refuses_a_mask_of_the_wrong_shape(mask):
    with pytest.raises(BatchError, match=r"boolean mask has shape .*, expected \[5\]"):
        make_batch(5).select(mask)


def test_select_on_an_empty_batch():
    empty = make_batch(0)
    assert len(empty.select([])) == 0
    with pytest.raises(BatchError, match="out of range for a batch of 0 rows"):
        empty.select([0])


def test_select_copies_the_rows():
    batch = make_batch(3)
    picked = batch.select([0])
    picked["score"][0] = 100.0
    assert batch["score"][0].item() == 0.0


# ----------------------------------------------------------------- split, pad
@pytest.mark.parametrize("size", range(0, 10))
@pytest.mark.parametrize("chunks", [1, 2, 3, 4, 7, 12])
def test_split_gives_near_equal_consecutive_pieces_that_concatenate_to_the_original(size, chunks):
    batch = make_batch(size)

    pieces = batch.split(chunks)

    sizes = [len(piece) for piece in pieces]
    assert len(pieces) == chunks
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the first pieces are the larger ones
    assert_same_batch(Batch.concat(pieces), batch)


def test_split_into_more_chunks_than_rows_leaves_empty_pieces_at_the_end():
    pieces = make_batch(2).split(4)
    assert [row_ids(piece) for piece in pieces] == [[0], [1], [], []]
    assert pieces[3]["ids"].shape == (0, 2) and pieces[3]["ids"].dtype == torch.int64


@pytest.mark.parametrize("chunks", [0, -1])
def test_split_needs_at_least_one_chunk(chunks):
    with pytest.raises(BatchError, match=f"cannot split into {chunks} chunks"):
        make_batch().split(chunks)


def test_split_by_size_gives_mini_batches_with_a_smaller_last_one():
    pieces = make_batch(7).split_by_size(3)
    assert [row_ids(piece) for piece in pieces] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [row_ids(piece) for piece in make_batch(6).split_by_size(3)] == [[0, 1, 2], [3, 4, 5]]
    assert make_batch(0).split_by_size(3) == []
    with pytest.raises(BatchError, match="chunk_size must be at least 1, got 0"):
        make_batch().split_by_size(0)


def test_pad_to_multiple_repeats_the_first_rows():
    padded, padding = make_batch(3).pad_to_multiple(4)
    assert padding == 1
    assert row_ids(padded) == [0, 1, 2, 0]


def test_pad_to_multiple_cycles_through_the_rows_when_more_padding_than_rows_is_needed():
    padded, padding = make_batch(2).pad_to_multiple(7)
    assert padding == 5
    assert row_ids(padded) == [0, 1, 0, 1, 0, 1, 0]


def test_pad_to_multiple_returns_the_batch_itself_when_already_a_multiple():
    batch = make_batch(6)
    assert batch.pad_to_multiple(3) == (batch, 0)
    assert batch.pad_to_multiple(1) == (batch, 0)
    with pytest.raises(BatchError, match="multiple must be at least 1, got 0"):
        batch.pad_to_multiple(0)


def test_an_empty_batch_is_already_a_multiple_and_needs_no_padding():
    # Zero rows is a multiple of anything, so the "cannot pad an empty batch" error is never reached.
    empty = make_batch(0)
    assert empty.pad_to_multiple(4) == (empty, 0)
    pieces, padding = empty.split_padded(3)
    assert padding == 0 and [len(piece) for piece in pieces] == [0, 0, 0]


@pytest.mark.parametrize(("size", "chunks"), [(7, 3), (6, 3), (1, 4), (5, 5), (3, 8)])
def test_split_padded_gives_equal_pieces_and_unpad_restores_the_batch(size, chunks):
    batch = make_batch(size)

    pieces, padding = batch.split_padded(chunks)

    assert len(pieces) == chunks
    assert len({len(piece) for piece in pieces}) == 1
    assert padding == -size % chunks
    assert_same_batch(Batch.concat(pieces).unpad(padding), batch)


def test_unpad_refuses_more_padding_than_rows():
    with pytest.raises(BatchError, match="cannot remove 4 padding rows from a batch of 3"):
        make_batch(3).unpad(4)
    with pytest.raises(BatchError, match="cannot remove -1 padding rows"):
        make_batch(3).unpad(-1)
    assert len(make_batch(3).unpad(3)) == 0


# ----------------------------------------------------------------- repeat, concat
def test_repeat_interleaved_keeps_copies_of_a_row_adjacent():
    assert row_ids(make_batch(3).repeat(2)) == [0, 0, 1, 1, 2, 2]


def test_repeat_tiled_repeats_the_whole_batch():
    assert row_ids(make_batch(3).repeat(2, interleave=False)) == [0, 1, 2, 0, 1, 2]


def test_repeat_needs_a_positive_count():
    assert row_ids(make_batch(2).repeat(1)) == [0, 1]
    with pytest.raises(BatchError, match="times must be at least 1, got 0"):
        make_batch().repeat(0)


def test_concat_joins_rows_in_order():
    first, second = make_batch(5).select([0, 1]), make_batch(5).select([4])
    assert row_ids(Batch.concat([first, second, first])) == [0, 1, 4, 0, 1]


def test_concat_of_batches_without_columns_adds_their_sizes():
    assert len(Batch.concat([Batch(size=2), Batch(size=3)])) == 5


def test_concat_refuses_a_dtype_mismatch_naming_the_column():
    other = make_batch(2).with_columns(score=torch.zeros(2, dtype=torch.float64))
    expected = r"column 'score': batch 1 is torch.float64 \[\] per row, batch 0 is torch.float32"
    with pytest.raises(BatchError, match=expected):
        Batch.concat([make_batch(2), other])


def test_concat_refuses_a_row_shape_mismatch_naming_the_column():
    other = make_batch(2).with_columns(ids=torch.zeros(2, 3, dtype=torch.int64))
    expected = r"column 'ids': batch 1 is torch.int64 \[3\] per row, batch 0 is torch.int64 \[2\]"
    with pytest.raises(BatchError, match=expected):
        Batch.concat([make_batch(2), other])


@pytest.mark.parametrize("other", [make_batch(2).without("prompt"), make_batch(2).with_columns(extra=[1, 2]),
                                   make_batch(2).with_columns(prompt=torch.zeros(2))],
                         ids=["missing", "extra", "moved-to-tensor"])
def test_concat_refuses_different_column_sets_naming_them(other):
    with pytest.raises(BatchError, match=r"batch 1 has columns \[.*\], batch 0 has \['ids', 'prompt', 'score'\]"):
        Batch.concat([make_batch(2), other])


def test_concat_needs_a_batch():
    with pytest.raises(BatchError, match="at least one batch"):
        Batch.concat([])


# ----------------------------------------------------------------- columns and rows
def test_with_columns_adds_and_replaces_columns_by_kind():
    batch = make_batch(2).with_columns(reward=torch.tensor([1.0, -1.0]), source=("a", "b"), score=["x", "y"])
    assert list(batch.tensors) == ["ids", "reward"]
    assert list(batch.columns) == ["prompt", "source", "score"]
    assert batch["source"] == ["a", "b"] and batch["score"] == ["x", "y"]
    assert "score" in make_batch(2).tensors  # the original is unchanged


def test_with_columns_refuses_a_column_of_the_wrong_length():
    with pytest.raises(BatchError, match="disagree"):
        make_batch(2).with_columns(reward=torch.zeros(3))


def test_with_columns_on_a_batch_without_columns_keeps_its_size():
    with pytest.raises(BatchError):
        Batch(size=5).with_columns(a=[1, 2])


def test_without_drops_columns_and_keeps_the_size():
    batch = make_batch(3).without("ids", "prompt")
    assert batch.names() == ["score"]
    assert len(make_batch(3).without("ids", "score", "prompt")) == 3
    with pytest.raises(KeyError, match=r"no columns \['nope'\]"):
        make_batch(3).without("ids", "nope")


def test_rows_yields_each_row_as_a_dict():
    rows = list(make_batch(2).rows())
    assert [sorted(row) for row in rows] == [["ids", "prompt", "score"]] * 2
    assert rows[1]["ids"].tolist() == [1, 11] and rows[1]["score"].item() == 0.5 and rows[1]["prompt"] == "p1"
    assert list(Batch(size=3).rows()) == [{}, {}, {}]


# ----------------------------------------------------------------- wire
def test_a_batch_inside_a_payload_round_trips():
    batch = make_batch(4).with_columns(meta=[{"k": i} for i in range(4)])

    received = round_trip({"step": 3, "batch": batch})

    assert received["step"] == 3
    assert_same_batch(Batch.from_wire(received["batch"]), batch)


def test_a_batch_without_columns_round_trips_its_size():
    assert len(Batch.from_wire(round_trip(Batch(size=7)))) == 7


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ([1, 2], "exactly 'tensors', 'columns' and 'size'"),
        ({"tensors": {}, "columns": {}}, "exactly"),
        ({"tensors": {}, "columns": {}, "size": 0, "extra": 1}, "exactly"),
        ({"tensors": [], "columns": {}, "size": 0}, "'tensors' must map column names"),
        ({"tensors": {1: torch.zeros(1)}, "columns": {}, "size": 1}, "'tensors' must map column names"),
        ({"tensors": {}, "columns": {"a": "xy"}, "size": 2}, "'columns' must map column names to lists"),
        ({"tensors": {}, "columns": {2: [1]}, "size": 1}, "'columns' must map"),
        ({"tensors": {}, "columns": {}, "size": True}, "'size' must be an integer"),
        ({"tensors": {}, "columns": {}, "size": 2.0}, "'size' must be an integer"),
        ({"tensors": {}, "columns": {}, "size": -3}, "non-negative"),
        ({"tensors": {"x": [1, 2]}, "columns": {}, "size": 2}, "tensor column 'x' holds list"),
        ({"tensors": {"x": torch.zeros(2)}, "columns": {}, "size": 3}, "size=3 was given but the columns have 2"),
        ({"tensors": {"x": torch.tensor(1)}, "columns": {}, "size": 1}, "0-d"),
    ],
    ids=["list", "missing-key", "extra-key", "tensors-list", "int-tensor-name", "column-string", "int-column-name",
         "bool-size", "float-size", "negative-size", "non-tensor", "size-mismatch", "0-d"],
)
def test_from_wire_refuses_a_malformed_batch(wire, message):
    with pytest.raises(BatchError, match=message):
        Batch.from_wire(wire)

"""`Batch`: named tensor columns that share dimension 0, plus non-tensor columns.

A batch is what roles pass each other: prompts, responses, log-probs, values,
rewards. Tensor columns (``input_ids [B, T]``, ``rewards [B]``) share their first
dimension B; non-tensor columns (``prompt_text``, ``data_source``) are Python
lists of length B. Every operation returns a new Batch and checks its inputs:
mismatched lengths, names or shapes raise `BatchError` naming the column.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch


class BatchError(ValueError):
    """A batch operation got inputs that do not fit together; the text says which column."""


Index = Sequence[int] | slice | torch.Tensor


class Batch:
    """Named columns sharing dimension 0.

    Args:
        tensors: name -> tensor with at least one dimension; all share ``shape[0]``.
        columns: name -> list of Python values (strings, ids, dicts), one per row.
        size: the row count, only needed when the batch has no columns at all.
    """

    __slots__ = ("tensors", "columns", "size")

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
        size: int | None = None,
    ) -> None:
        self.tensors: dict[str, torch.Tensor] = dict(tensors or {})
        self.columns: dict[str, list[Any]] = {name: list(values) for name, values in (columns or {}).items()}
        both = self.tensors.keys() & self.columns.keys()
        if both:
            raise BatchError(f"names {sorted(both)} are both tensor and non-tensor columns; rename one")
        lengths: dict[str, int] = {}
        for name, tensor in self.tensors.items():
            if not isinstance(tensor, torch.Tensor):
                raise BatchError(f"tensor column {name!r} holds {type(tensor).__name__}, not a torch.Tensor")
            if tensor.dim() == 0:
                raise BatchError(f"tensor column {name!r} is 0-d; a column needs a row dimension (use .reshape(1))")
            lengths[name] = tensor.shape[0]
        for name, values in self.columns.items():
            lengths[name] = len(values)
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{name}={length}" for name, length in lengths.items())
            raise BatchError(f"columns disagree on the number of rows: {detail}")
        inferred = next(iter(lengths.values()), None)
        if inferred is None:
            inferred = size if size is not None else 0
        elif size is not None and size != inferred:
            raise BatchError(f"size={size} was given but the columns have {inferred} rows")
        if inferred < 0:
            raise BatchError(f"size must be non-negative, got {inferred}")
        self.size: int = inferred

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return self.size

    def __contains__(self, name: str) -> bool:
        return name in self.tensors or name in self.columns

    def __getitem__(self, name: str) -> torch.Tensor | list[Any]:
        if name in self.tensors:
            return self.tensors[name]
        if name in self.columns:
            return self.columns[name]
        raise KeyError(f"batch has no column {name!r}; it has {sorted(self.names())}")

    def names(self) -> list[str]:
        return [*self.tensors, *self.columns]

    def __repr__(self) -> str:
        tensors = ", ".join(f"{n}: {t.dtype} {list(t.shape)}" for n, t in self.tensors.items())
        columns = ", ".join(self.columns)
        return f"Batch(size={self.size}, tensors=[{tensors}], columns=[{columns}])"

    def with_columns(self, **values: torch.Tensor | Sequence[Any]) -> Batch:
        """A batch with these columns added or replaced (tensors by type, the rest as lists)."""
        tensors, columns = dict(self.tensors), dict(self.columns)
        for name, value in values.items():
            tensors.pop(name, None)
            columns.pop(name, None)
            if isinstance(value, torch.Tensor):
                tensors[name] = value
            else:
                columns[name] = list(value)
        return Batch(tensors, columns, size=self.size if not self.tensors and not self.columns else None)

    def without(self, *names: str) -> Batch:
        """A batch without these columns."""
        missing = [name for name in names if name not in self]
        if missing:
            raise KeyError(f"batch has no columns {missing}; it has {sorted(self.names())}")
        tensors = {n: t for n, t in self.tensors.items() if n not in names}
        columns = {n: c for n, c in self.columns.items() if n not in names}
        return Batch(tensors, columns, size=self.size)

    def to(self, device: torch.device | str) -> Batch:
        return Batch({n: t.to(device) for n, t in self.tensors.items()}, self.columns, size=self.size)

    # ------------------------------------------------------------ reshaping
    def select(self, index: Index) -> Batch:
        """Rows picked by a list of indices, a slice, an index tensor or a boolean mask."""
        if isinstance(index, slice):
            rows = list(range(self.size))[index]
        elif isinstance(index, torch.Tensor):
            if index.dtype == torch.bool:
                if index.shape != (self.size,):
                    raise BatchError(f"boolean mask has shape {list(index.shape)}, expected [{self.size}]")
                rows = index.nonzero().flatten().tolist()
            else:
                rows = index.flatten().tolist()
        else:
            rows = [int(i) for i in index]
        for row in rows:
            if not -self.size <= row < self.size:
                raise BatchError(f"row index {row} is out of range for a batch of {self.size} rows")
        rows = [row % self.size for row in rows] if self.size else rows
        row_tensor = torch.tensor(rows, dtype=torch.long)
        tensors = {n: t.index_select(0, row_tensor.to(t.device)) for n, t in self.tensors.items()}
        columns = {n: [c[row] for row in rows] for n, c in self.columns.items()}
        return Batch(tensors, columns, size=len(rows))

    def split(self, chunks: int) -> list[Batch]:
        """`chunks` consecutive pieces whose sizes differ by at most one (the first ones larger).

        With fewer rows than chunks, the last pieces are empty; use `split_padded` to
        give every piece the same size instead.
        """
        if chunks < 1:
            raise BatchError(f"cannot split into {chunks} chunks; need at least 1")
        base, extra = divmod(self.size, chunks)
        sizes = [base + (1 if i < extra else 0) for i in range(chunks)]
        return self._split_sizes(sizes)

    def split_by_size(self, chunk_size: int) -> list[Batch]:
        """Consecutive pieces of `chunk_size` rows (the last may be smaller): mini-batches."""
        if chunk_size < 1:
            raise BatchError(f"chunk_size must be at least 1, got {chunk_size}")
        full, rest = divmod(self.size, chunk_size)
        return self._split_sizes([chunk_size] * full + ([rest] if rest else []))

    def split_padded(self, chunks: int) -> tuple[list[Batch], int]:
        """Pad to a multiple of `chunks` (see `pad_to_multiple`), then split evenly.

        Returns:
            (pieces of equal size, number of padding rows added at the end).
        """
        padded, padding = self.pad_to_multiple(chunks)
        return padded.split(chunks), padding

    def _split_sizes(self, sizes: list[int]) -> list[Batch]:
        pieces, start = [], 0
        for size in sizes:
            pieces.append(self.select(slice(start, start + size)) if size else self._empty())
            start += size
        return pieces

    def _empty(self) -> Batch:
        tensors = {n: t[:0] for n, t in self.tensors.items()}
        columns = {n: [] for n in self.columns}
        return Batch(tensors, columns, size=0)

    def pad_to_multiple(self, multiple: int) -> tuple[Batch, int]:
        """Append rows so the size is a multiple of `multiple`.

        Padding rows repeat the batch's first rows in order (cycling if needed), so they
        are valid inputs to any model; `unpad` removes them again.

        Returns:
            (padded batch, number of padding rows).
        """
        if multiple < 1:
            raise BatchError(f"multiple must be at least 1, got {multiple}")
        padding = -self.size % multiple
        if padding == 0:
            return self, 0
        if self.size == 0:
            raise BatchError("cannot pad an empty batch: there is no row to repeat")
        rows = list(range(self.size)) + [i % self.size for i in range(padding)]
        return self.select(rows), padding

    def unpad(self, padding: int) -> Batch:
        """Drop the last `padding` rows added by `pad_to_multiple`."""
        if not 0 <= padding <= self.size:
            raise BatchError(f"cannot remove {padding} padding rows from a batch of {self.size}")
        return self.select(slice(0, self.size - padding))

    def repeat(self, times: int, interleave: bool = True) -> Batch:
        """Each row `times` times.

        With ``interleave=True`` copies of a row are adjacent (``[a, a, b, b]``), the layout of
        GRPO groups; otherwise the whole batch is tiled (``[a, b, a, b]``).
        """
        if times < 1:
            raise BatchError(f"times must be at least 1, got {times}")
        if interleave:
            rows = [row for row in range(self.size) for _ in range(times)]
        else:
            rows = [row for _ in range(times) for row in range(self.size)]
        return self.select(rows)

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """Rows of all batches in order; they must have the same columns, dtypes and row shapes."""
        if not batches:
            raise BatchError("concat needs at least one batch")
        first = batches[0]
        for position, batch in enumerate(batches[1:], start=1):
            if batch.tensors.keys() != first.tensors.keys() or batch.columns.keys() != first.columns.keys():
                raise BatchError(
                    f"batch {position} has columns {sorted(batch.names())}, batch 0 has {sorted(first.names())}"
                )
            for name, tensor in batch.tensors.items():
                reference = first.tensors[name]
                if tensor.dtype != reference.dtype or tensor.shape[1:] != reference.shape[1:]:
                    raise BatchError(
                        f"column {name!r}: batch {position} is {tensor.dtype} {list(tensor.shape[1:])} per row, "
                        f"batch 0 is {reference.dtype} {list(reference.shape[1:])}"
                    )
        tensors = {name: torch.cat([b.tensors[name] for b in batches]) for name in first.tensors}
        columns = {name: [v for b in batches for v in b.columns[name]] for name in first.columns}
        return Batch(tensors, columns, size=sum(b.size for b in batches))

    def rows(self) -> Iterator[dict[str, Any]]:
        """Each row as a dict (tensor columns give their row slice)."""
        for row in range(self.size):
            yield {**{n: t[row] for n, t in self.tensors.items()}, **{n: c[row] for n, c in self.columns.items()}}

    # ------------------------------------------------------------------ wire
    def __wire__(self) -> dict[str, Any]:
        return {"tensors": self.tensors, "columns": self.columns, "size": self.size}

    @classmethod
    def from_wire(cls, value: Any) -> Batch:
        """Rebuild a batch from its wire form; raises BatchError on a malformed one."""
        if not isinstance(value, dict) or value.keys() != {"tensors", "columns", "size"}:
            raise BatchError("a batch on the wire is a map with exactly 'tensors', 'columns' and 'size'")
        tensors, columns, size = value["tensors"], value["columns"], value["size"]
        if not isinstance(tensors, dict) or not all(isinstance(k, str) for k in tensors):
            raise BatchError("batch 'tensors' must map column names to tensors")
        if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, list) for k, v in columns.items()):
            raise BatchError("batch 'columns' must map column names to lists")
        if not isinstance(size, int) or isinstance(size, bool):
            raise BatchError("batch 'size' must be an integer")
        return cls(tensors, columns, size=size)

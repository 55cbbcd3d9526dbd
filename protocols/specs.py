"""What a message's tensors must look like, checked before any handler sees them.

A field annotated ``torch.Tensor`` accepts any tensor; a handler that multiplies it
or feeds it to a model then fails on a dtype or rank it never expected, and for a
tell a failed handler crashes the actor. So message types say what they take::

    @message("pipeline.item")
    class Item:  # producer -> stage
        index: int
        values: Annotated[torch.Tensor, TensorSpec(FLOATING, ndim=2)]

    @message("rl.train")
    class Train:  # controller -> trainer ranks
        batch: Annotated[Batch, TRAIN_BATCH]

and decoding (`protocols.messages.from_payload`) refuses anything else with a
`ProtocolError` naming the field: the asker gets it as a reply, a tell is logged
and dropped, and the handler never runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from protocols.errors import ProtocolError

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
NUMBER = (torch.bool, *INTEGER, *FLOATING)
"""Dtype sets for `TensorSpec` (masks may be any of NUMBER)."""


@dataclass(frozen=True)
class TensorSpec:
    """The dtypes and shape a tensor must have.

    Attributes:
        dtypes: the dtypes accepted (empty: any).
        ndim: the number of dimensions (None: any).
        like: in a `BatchSpec`, the name of another tensor column this one must have
            the same shape as (``response_mask`` is ``like="response_ids"``).
    """

    dtypes: tuple[torch.dtype, ...] = ()
    ndim: int | None = None
    like: str | None = None

    def check(self, tensor: torch.Tensor, path: str) -> None:
        """ProtocolError naming `path` unless `tensor` fits (its type was checked already)."""
        if self.dtypes and tensor.dtype not in self.dtypes:
            names = ", ".join(str(dtype).removeprefix("torch.") for dtype in self.dtypes)
            raise ProtocolError(f"field {path}: expected a tensor of dtype {names}, got {str(tensor.dtype).removeprefix('torch.')}")
        if self.ndim is not None and tensor.dim() != self.ndim:
            raise ProtocolError(f"field {path}: expected a {self.ndim}-d tensor, got shape {list(tensor.shape)}")


@dataclass(frozen=True)
class BatchSpec:
    """The columns a `Batch` field must (or may) hold, and what each must look like.

    Attributes:
        tensors: tensor columns that must be there.
        optional: tensor columns checked when they are there.
        columns: non-tensor columns that must be there, each with the type hint of one
            row's value (``{"prompt_ids": list[int]}``), checked row by row.
    """

    tensors: Mapping[str, TensorSpec] = field(default_factory=dict)
    optional: Mapping[str, TensorSpec] = field(default_factory=dict)
    columns: Mapping[str, Any] = field(default_factory=dict)

    def check_tensors(self, tensors: Mapping[str, torch.Tensor], path: str) -> None:
        """ProtocolError naming the column unless the batch's tensor columns fit."""
        missing = sorted(name for name in self.tensors if name not in tensors)
        if missing:
            raise ProtocolError(f"field {path}: missing tensor columns {missing}")
        for name, spec in (*self.tensors.items(), *self.optional.items()):
            tensor = tensors.get(name)
            if tensor is None:
                continue
            spec.check(tensor, f"{path}.tensors[{name!r}]")
            if spec.like is not None and spec.like in tensors and tensors[spec.like].shape != tensor.shape:
                raise ProtocolError(
                    f"field {path}.tensors[{name!r}]: shape {list(tensor.shape)} differs from "
                    f"{spec.like!r}'s {list(tensors[spec.like].shape)}"
                )


TOKEN_IDS = TensorSpec(INTEGER, ndim=2)
PROMPT_TENSORS = {
    "prompt_ids": TOKEN_IDS,
    "prompt_mask": TensorSpec(NUMBER, ndim=2, like="prompt_ids"),
}
RESPONSE_TENSORS = {
    "response_ids": TOKEN_IDS,
    "response_mask": TensorSpec(NUMBER, ndim=2, like="response_ids"),
}
PER_TOKEN = TensorSpec(FLOATING, ndim=2, like="response_ids")
"""A float per response token: log-probs, advantages, returns, values."""
MULTI_TURN_TENSORS = {"response_attention_mask": TensorSpec(NUMBER, ndim=2, like="response_ids")}
"""What a multi-turn row adds: the response tokens read, observations included (protocols.rl.Column)."""

PROMPTS_BATCH = BatchSpec(columns={"prompt_ids": list[int]})
"""What a generator is asked to sample from."""
SEQUENCES_BATCH = BatchSpec(tensors={**PROMPT_TENSORS, **RESPONSE_TENSORS}, optional=MULTI_TURN_TENSORS)
"""Prompts and responses as token tensors: what a forward pass needs."""
ROLLOUTS_BATCH = BatchSpec(
    tensors={**PROMPT_TENSORS, **RESPONSE_TENSORS, "behavior_logprobs": PER_TOKEN,
             "version": TensorSpec(INTEGER, ndim=1)},
    optional=MULTI_TURN_TENSORS,
)
TRAIN_BATCH = BatchSpec(
    tensors={**PROMPT_TENSORS, **RESPONSE_TENSORS, "advantages": PER_TOKEN},
    optional={**MULTI_TURN_TENSORS, **{name: PER_TOKEN for name in (
        "old_logprobs", "behavior_logprobs", "ref_logprobs", "importance_weights", "values", "returns",
    )}},
)

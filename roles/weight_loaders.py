"""Loaders for the weight channel's generators (see runtime/weights/receiver.py).

A generator hands `WeightReceiver` a callable that takes ``(name, full tensor)``
pairs. `runtime.weights.receiver.ModelLoader` covers a whole transformers model;
these two cover the other cases:

* `ShardedLoader`: a tensor-parallel rank holding only its slice of each weight
  slices every full tensor itself (`roles.weight_naming.shard_tensor`) and copies it in;
* `VllmLoader`: a vLLM model receives the full tensors under Hugging Face names and
  its own ``load_weights`` fuses and slices them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from roles.weight_naming import (
    DEFAULT_VOCAB_PAD_TO,
    HeadGeometry,
    check_tp_layout,
    shard_tensor,
)

Named = Iterable[tuple[str, torch.Tensor]]


class ShardedLoader:
    """Copies this tensor-parallel rank's slice of each full tensor into `targets`
    (name -> the rank's tensor, e.g. a sharded model's state dict)."""

    def __init__(
        self, targets: dict[str, torch.Tensor], geometry: HeadGeometry, tp_rank: int, tp_size: int,
        vocab_pad_to: int = DEFAULT_VOCAB_PAD_TO,
    ) -> None:
        check_tp_layout(geometry, tp_rank, tp_size)
        self.targets = targets
        self.geometry = geometry
        self.tp_rank = tp_rank
        self.tp_size = tp_size
        self.vocab_pad_to = vocab_pad_to

    def __call__(self, named: Named) -> None:
        with torch.no_grad():
            for name, full in named:
                target = self.targets.get(name)
                if target is None:
                    raise KeyError(f"{name} is not a tensor of this tensor-parallel rank's model")
                part = shard_tensor(name, full, self.geometry, self.tp_rank, self.tp_size, self.vocab_pad_to)
                if part.shape != target.shape:
                    raise ValueError(f"{name}: rank {self.tp_rank} of {self.tp_size} holds {tuple(target.shape)}, "
                                     f"the slice is {tuple(part.shape)}")
                target.copy_(part)


class VllmLoader:
    """Hands full, Hugging Face-named tensors to a vLLM model's ``load_weights``
    (the model object vLLM runs on this worker), which fuses and slices them."""

    def __init__(self, model: object) -> None:
        if not hasattr(model, "load_weights"):
            raise TypeError(f"{type(model).__name__} has no load_weights: pass the vLLM model, not the engine")
        self.model = model

    def __call__(self, named: Named) -> None:
        self.model.load_weights(weights=iter(list(named)))  # type: ignore[attr-defined]

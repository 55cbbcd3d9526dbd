"""Names and tensor-parallel slices of actor weights, as a vLLM-style generator loads them.

Trainer ranks publish full (unsharded) weights under their Hugging Face transformers
names, e.g. `model.layers.0.self_attn.q_proj.weight`. A generator that runs the model
tensor-parallel (TP) the way vLLM does needs two things for each of them:

* Its vLLM name. vLLM fuses q/k/v into one `qkv_proj` and gate/up into one
  `gate_up_proj`, and fills a fused parameter one part at a time, naming the part by a
  shard id. `hf_to_vllm_qwen2` gives both.
* The slice its TP rank holds. `shard_tensor` cuts one full tensor and `shard_for_rank`
  cuts a stream of them, following vLLM's layout:

    partition    HF parameters                              TP rank r of tp_size holds
    column       q_proj, gate_proj, up_proj (weight, bias)  dim 0, part r of tp_size equal parts
    kv heads     k_proj, v_proj (weight, bias)              dim 0, the key/value heads of rank r
    row          o_proj.weight, down_proj.weight            dim 1, part r of tp_size equal parts
    vocab        embed_tokens.weight, lm_head.weight        dim 0 of the zero-padded vocab, part r
    replicated   anything else (norms, row biases, ...)     the whole tensor

Key/value heads: with tp_size <= num_key_value_heads each rank holds
num_key_value_heads // tp_size whole heads. With more ranks than key/value heads vLLM
replicates them: rank r holds the one head r * num_key_value_heads // tp_size, so each
head is shared by tp_size // num_key_value_heads consecutive ranks.

Vocab: the rows are padded with zeros up to a multiple of `vocab_pad_to` (vLLM pads to
64 by default), and the padded rows are split evenly, so the last ranks may get zero rows.

Rules match a name on its last two components (module, parameter), so they hold for
Qwen2 and for the Llama family, which use the same module names. A name no rule knows is
replicated: a full copy is always right for a replicated parameter, and a parallel one the
table misses shows up as a shape mismatch when the generator loads it, not as a wrong slice.

Slices are `narrow` views that share the full tensor's storage; row slices are therefore
not contiguous (call `.contiguous()` before handing one to a transport that needs it).
The only copies are vocab parts that include padding rows. Slices are detached from autograd.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_VOCAB_PAD_TO = 64
"""vLLM's default: embedding and lm_head rows are padded to a multiple of this."""


@dataclass(frozen=True)
class VllmTarget:
    """Where one Hugging Face tensor goes in a vLLM model.

    Attributes:
        name: the vLLM parameter name, e.g. "model.layers.0.self_attn.qkv_proj.weight".
        shard: the part of a fused vLLM parameter the tensor fills: "q", "k" or "v" in
            `qkv_proj`, 0 (gate) or 1 (up) in `gate_up_proj`; None when the parameter is
            not fused and the tensor fills all of it. This is the `loaded_shard_id` that
            vLLM's weight loaders take.
    """

    name: str
    shard: str | int | None = None


# HF module name -> (vLLM fused module name, shard id inside it).
_QWEN2_FUSED_MODULES: dict[str, tuple[str, str | int]] = {
    "q_proj": ("qkv_proj", "q"),
    "k_proj": ("qkv_proj", "k"),
    "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


def hf_to_vllm_qwen2(name: str) -> VllmTarget:
    """Maps a Hugging Face Qwen2 (or Llama-family) parameter name to its vLLM target.

    "model.layers.0.self_attn.k_proj.bias" -> VllmTarget("model.layers.0.self_attn.qkv_proj.bias", "k")
    "model.layers.0.mlp.up_proj.weight"    -> VllmTarget("model.layers.0.mlp.gate_up_proj.weight", 1)
    any other name                         -> VllmTarget(name, None)
    """
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in _QWEN2_FUSED_MODULES:
        fused_module, shard = _QWEN2_FUSED_MODULES[parts[-2]]
        return VllmTarget(".".join([*parts[:-2], fused_module, parts[-1]]), shard)
    return VllmTarget(name)


@dataclass(frozen=True)
class HeadGeometry:
    """A model's attention heads, which fix how q/k/v split across TP ranks.

    Attributes:
        num_attention_heads: query heads.
        num_key_value_heads: key/value heads; equal to num_attention_heads without
            grouped-query attention, and always a divisor of it.
        head_dim: features per head.
    """

    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        for field in ("num_attention_heads", "num_key_value_heads", "head_dim"):
            if getattr(self, field) < 1:
                raise ValueError(f"HeadGeometry.{field} must be >= 1, got {getattr(self, field)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"HeadGeometry: num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; each key/value head serves a whole "
                "group of query heads"
            )

    @classmethod
    def from_config(cls, config: Any) -> HeadGeometry:
        """Reads a transformers config (Qwen2Config, LlamaConfig, ...).

        Without `num_key_value_heads` the model has one key/value head per query head;
        without `head_dim` a head has hidden_size // num_attention_heads features.
        """
        num_attention_heads = config.num_attention_heads
        num_key_value_heads = getattr(config, "num_key_value_heads", None) or num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_attention_heads
        return cls(num_attention_heads, num_key_value_heads, head_dim)


class _Partition(enum.Enum):
    COLUMN = "column"
    QUERY_HEADS = "query heads"
    KEY_VALUE_HEADS = "key/value heads"
    ROW = "row"
    VOCAB = "vocab"
    REPLICATED = "replicated"


# (HF module name, parameter name) -> partition; anything absent is replicated.
_PARTITIONS: dict[tuple[str, str], _Partition] = {
    ("q_proj", "weight"): _Partition.QUERY_HEADS,
    ("q_proj", "bias"): _Partition.QUERY_HEADS,
    ("k_proj", "weight"): _Partition.KEY_VALUE_HEADS,
    ("k_proj", "bias"): _Partition.KEY_VALUE_HEADS,
    ("v_proj", "weight"): _Partition.KEY_VALUE_HEADS,
    ("v_proj", "bias"): _Partition.KEY_VALUE_HEADS,
    ("gate_proj", "weight"): _Partition.COLUMN,
    ("gate_proj", "bias"): _Partition.COLUMN,
    ("up_proj", "weight"): _Partition.COLUMN,
    ("up_proj", "bias"): _Partition.COLUMN,
    ("o_proj", "weight"): _Partition.ROW,
    ("down_proj", "weight"): _Partition.ROW,
    ("embed_tokens", "weight"): _Partition.VOCAB,
    ("lm_head", "weight"): _Partition.VOCAB,
}


def _partition_of(name: str) -> _Partition:
    module, _, parameter = name.rpartition(".")
    return _PARTITIONS.get((module.rpartition(".")[2], parameter), _Partition.REPLICATED)


def check_tp_layout(geometry: HeadGeometry, tp_rank: int, tp_size: int) -> None:
    """Raises ValueError unless vLLM can run a model of this geometry on tp_size ranks."""
    if tp_size < 1:
        raise ValueError(f"tp_size must be >= 1, got {tp_size}")
    if not 0 <= tp_rank < tp_size:
        raise ValueError(f"tp_rank={tp_rank} is outside [0, tp_size={tp_size})")
    if geometry.num_attention_heads % tp_size:
        raise ValueError(
            f"num_attention_heads={geometry.num_attention_heads} is not divisible by "
            f"tp_size={tp_size}; query heads split evenly, so choose a tp_size that divides "
            f"{geometry.num_attention_heads}"
        )
    kv_heads = geometry.num_key_value_heads
    if tp_size % kv_heads and kv_heads % tp_size:
        raise ValueError(
            f"num_key_value_heads={kv_heads} and tp_size={tp_size}: one must divide the other "
            "(key/value heads are split when tp_size divides them and replicated when they "
            "divide tp_size)"
        )


def shard_tensor(
    name: str,
    full: torch.Tensor,
    geometry: HeadGeometry,
    tp_rank: int,
    tp_size: int,
    vocab_pad_to: int = DEFAULT_VOCAB_PAD_TO,
) -> torch.Tensor:
    """Returns the slice of one full weight that TP rank `tp_rank` holds.

    Args:
        name: the Hugging Face parameter name; its last two components pick the rule
            (see the module docstring).
        full: the unsharded tensor, any dtype and device. Column and vocab weights are
            [out_features, in_features] or [vocab, hidden]; row weights [out, in]; biases [out].
        geometry: the model's attention heads.
        tp_rank: this generator rank, in [0, tp_size).
        tp_size: generator ranks in the tensor-parallel group.
        vocab_pad_to: embed_tokens and lm_head rows are zero-padded to a multiple of this
            before the split; the padded count must be divisible by tp_size.

    Returns:
        The rank's slice, same dtype and device: a view of `full` except for vocab parts
        that contain padding rows.

    Raises:
        ValueError: for a layout vLLM cannot run (see `check_tp_layout`), a split
            dimension not divisible by tp_size, or q/k/v rows that disagree with `geometry`.
    """
    check_tp_layout(geometry, tp_rank, tp_size)
    full = full.detach()
    partition = _partition_of(name)
    if partition is _Partition.QUERY_HEADS:
        _require_rows(name, full, geometry.num_attention_heads * geometry.head_dim, "num_attention_heads")
        return _split_evenly(name, full, 0, tp_rank, tp_size)
    if partition is _Partition.KEY_VALUE_HEADS:
        return _key_value_heads_slice(name, full, geometry, tp_rank, tp_size)
    if partition is _Partition.COLUMN:
        return _split_evenly(name, full, 0, tp_rank, tp_size)
    if partition is _Partition.ROW:
        return _split_evenly(name, full, 1, tp_rank, tp_size)
    if partition is _Partition.VOCAB:
        return _vocab_slice(name, full, tp_rank, tp_size, vocab_pad_to)
    return full


def shard_for_rank(
    named: Iterable[tuple[str, torch.Tensor]],
    geometry: HeadGeometry,
    tp_rank: int,
    tp_size: int,
    vocab_pad_to: int = DEFAULT_VOCAB_PAD_TO,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (hf_name, this rank's slice) for every full tensor in `named`, in order.

    The layout is checked when this is called, before the first tensor is read; each
    tensor is then cut by `shard_tensor` as it is consumed.
    """
    check_tp_layout(geometry, tp_rank, tp_size)
    return (
        (name, shard_tensor(name, full, geometry, tp_rank, tp_size, vocab_pad_to))
        for name, full in named
    )


def _require_dims(name: str, full: torch.Tensor, dims: int) -> None:
    if full.dim() < dims:
        raise ValueError(f"{name}: expected at least {dims} dimension(s), got shape {tuple(full.shape)}")


def _require_rows(name: str, full: torch.Tensor, expected: int, heads_field: str) -> None:
    _require_dims(name, full, 1)
    if full.shape[0] != expected:
        raise ValueError(
            f"{name}: dim 0 has {full.shape[0]} rows but {heads_field} * head_dim = {expected}; "
            "the HeadGeometry does not describe this model"
        )


def _split_evenly(name: str, full: torch.Tensor, dim: int, tp_rank: int, tp_size: int) -> torch.Tensor:
    _require_dims(name, full, dim + 1)
    size = full.shape[dim]
    if size % tp_size:
        raise ValueError(
            f"{name}: dim {dim} has size {size}, which is not divisible by tp_size={tp_size}"
        )
    part = size // tp_size
    return full.narrow(dim, tp_rank * part, part)


def _key_value_heads_slice(
    name: str, full: torch.Tensor, geometry: HeadGeometry, tp_rank: int, tp_size: int
) -> torch.Tensor:
    kv_heads = geometry.num_key_value_heads
    _require_rows(name, full, kv_heads * geometry.head_dim, "num_key_value_heads")
    heads_per_rank = max(1, kv_heads // tp_size)
    # One formula for both cases: r * heads_per_rank when ranks split the heads, and
    # the shared head r // (tp_size // kv_heads) when ranks replicate them.
    first_head = tp_rank * kv_heads // tp_size
    return full.narrow(0, first_head * geometry.head_dim, heads_per_rank * geometry.head_dim)


def _vocab_slice(name: str, full: torch.Tensor, tp_rank: int, tp_size: int, pad_to: int) -> torch.Tensor:
    if pad_to < 1:
        raise ValueError(f"vocab_pad_to must be >= 1, got {pad_to}")
    _require_dims(name, full, 1)
    vocab = full.shape[0]
    padded_vocab = -(-vocab // pad_to) * pad_to
    if padded_vocab % tp_size:
        raise ValueError(
            f"{name}: {vocab} vocabulary rows padded to a multiple of vocab_pad_to={pad_to} "
            f"make {padded_vocab}, which is not divisible by tp_size={tp_size}; "
            "use a vocab_pad_to that is a multiple of tp_size"
        )
    part = padded_vocab // tp_size
    start = tp_rank * part
    real_rows = max(0, min(part, vocab - start))
    if real_rows == part:
        return full.narrow(0, start, part)
    # This part reaches into the padding: only here does a copy happen.
    shard = full.new_zeros((part, *full.shape[1:]))
    if real_rows:
        shard[:real_rows] = full.narrow(0, start, real_rows)
    return shard

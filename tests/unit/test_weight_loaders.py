"""The generator-side loaders in roles/weight_loaders.py, on a tiny Qwen2 built from a config."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from roles.weight_loaders import ShardedLoader, VllmLoader
from roles.weight_naming import HeadGeometry

CONFIG = Qwen2Config(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
)


@pytest.fixture(scope="module")
def full() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {name: tensor.detach().clone() for name, tensor in Qwen2ForCausalLM(CONFIG).state_dict().items()}


def empty_rank(full: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """A rank's model, built by hand: head_dim 8, 2 KV heads, vocab padded to 128."""
    shapes = {}
    for name, tensor in full.items():
        shape = list(tensor.shape)
        if any(part in name for part in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            shape[0] //= 2
        elif "o_proj.weight" in name or "down_proj.weight" in name:
            shape[1] //= 2
        elif "embed_tokens" in name or "lm_head" in name:
            shape[0] = 64
        shapes[name] = shape
    return {name: torch.full(shape, float("nan")) for name, shape in shapes.items()}


@pytest.mark.parametrize("rank", [0, 1])
def test_a_tensor_parallel_rank_loads_its_slices(full: dict[str, torch.Tensor], rank: int) -> None:
    targets = empty_rank(full, rank)
    ShardedLoader(targets, HeadGeometry.from_config(CONFIG), rank, 2)(full.items())
    layer = "model.layers.0."
    rows = slice(16 * rank, 16 * rank + 16)
    assert torch.equal(targets[layer + "self_attn.q_proj.weight"], full[layer + "self_attn.q_proj.weight"][rows])
    assert torch.equal(targets[layer + "self_attn.k_proj.bias"], full[layer + "self_attn.k_proj.bias"][8 * rank : 8 * rank + 8])
    assert torch.equal(targets[layer + "self_attn.o_proj.weight"], full[layer + "self_attn.o_proj.weight"][:, rows])
    assert torch.equal(targets[layer + "mlp.down_proj.weight"], full[layer + "mlp.down_proj.weight"][:, 32 * rank : 32 * rank + 32])
    assert torch.equal(targets[layer + "input_layernorm.weight"], full[layer + "input_layernorm.weight"])
    head = targets["lm_head.weight"]
    if rank == 0:
        assert torch.equal(head, full["lm_head.weight"][:64])
    else:  # vocab rows 64..95, then 32 padding rows of zeros
        assert torch.equal(head[:32], full["lm_head.weight"][64:]) and torch.equal(head[32:], torch.zeros(32, 32))
    assert not any(torch.isnan(tensor).any() for tensor in targets.values())


def test_a_rank_with_other_shapes_or_names_is_refused(full: dict[str, torch.Tensor]) -> None:
    geometry = HeadGeometry.from_config(CONFIG)
    targets = empty_rank(full, 0)
    name = "model.layers.0.self_attn.q_proj.weight"
    targets[name] = torch.zeros(8, 32)
    with pytest.raises(ValueError, match="q_proj.weight: rank 0 of 2 holds \\(8, 32\\), the slice is \\(16, 32\\)"):
        ShardedLoader(targets, geometry, 0, 2)([(name, full[name])])
    with pytest.raises(KeyError, match="model.extra.weight"):
        ShardedLoader(targets, geometry, 0, 2)([("model.extra.weight", torch.zeros(1))])
    with pytest.raises(ValueError):
        ShardedLoader(targets, geometry, 2, 2)


def test_the_vllm_loader_needs_a_model_with_load_weights() -> None:
    with pytest.raises(TypeError, match="no load_weights"):
        VllmLoader(object())


def test_the_vllm_loader_hands_over_full_tensors_under_their_names(full: dict[str, torch.Tensor]) -> None:
    # vLLM cannot run on these machines; this stands in for its model's load_weights contract
    class Model:
        def load_weights(self, weights):  # type: ignore[no-untyped-def]
            self.seen = list(weights)

    model = Model()
    VllmLoader(model)(iter(full.items()))
    assert [name for name, _ in model.seen] == list(full)
    assert all(tensor is full[name] for name, tensor in model.seen)


def test_the_real_vllm_model_class_loads_hf_names() -> None:
    vllm_qwen2 = pytest.importorskip("vllm.model_executor.models.qwen2", reason="vLLM is an optional extra")
    assert hasattr(vllm_qwen2.Qwen2ForCausalLM, "load_weights")

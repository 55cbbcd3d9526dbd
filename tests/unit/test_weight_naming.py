"""Hugging Face -> vLLM weight names, and the slice of each weight a TP generator rank holds.

Expected slices are written out by hand as row/column ranges of small arange tensors.
"""

import pytest
import torch
import transformers
from torch.testing import assert_close

from roles.weight_naming import (
    DEFAULT_VOCAB_PAD_TO,
    HeadGeometry,
    VllmTarget,
    check_tp_layout,
    hf_to_vllm_qwen2,
    shard_for_rank,
    shard_tensor,
)

# 4 query heads and 2 key/value heads of 2 features each: hidden size 8.
GEOMETRY = HeadGeometry(num_attention_heads=4, num_key_value_heads=2, head_dim=2)
LAYER = "model.layers.0"


def arange(*shape, dtype=torch.float32):
    return torch.arange(torch.Size(shape).numel()).reshape(shape).to(dtype)


def shares_storage(part, full):
    return part.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()


# ---- names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hf_name", "expected"),
    [
        (f"{LAYER}.self_attn.q_proj.weight", VllmTarget(f"{LAYER}.self_attn.qkv_proj.weight", "q")),
        (f"{LAYER}.self_attn.k_proj.weight", VllmTarget(f"{LAYER}.self_attn.qkv_proj.weight", "k")),
        (f"{LAYER}.self_attn.v_proj.weight", VllmTarget(f"{LAYER}.self_attn.qkv_proj.weight", "v")),
        (f"{LAYER}.self_attn.q_proj.bias", VllmTarget(f"{LAYER}.self_attn.qkv_proj.bias", "q")),
        (f"{LAYER}.self_attn.k_proj.bias", VllmTarget(f"{LAYER}.self_attn.qkv_proj.bias", "k")),
        (f"{LAYER}.self_attn.v_proj.bias", VllmTarget(f"{LAYER}.self_attn.qkv_proj.bias", "v")),
        (f"{LAYER}.mlp.gate_proj.weight", VllmTarget(f"{LAYER}.mlp.gate_up_proj.weight", 0)),
        (f"{LAYER}.mlp.up_proj.weight", VllmTarget(f"{LAYER}.mlp.gate_up_proj.weight", 1)),
        (f"{LAYER}.self_attn.o_proj.weight", VllmTarget(f"{LAYER}.self_attn.o_proj.weight", None)),
        (f"{LAYER}.mlp.down_proj.weight", VllmTarget(f"{LAYER}.mlp.down_proj.weight", None)),
        (f"{LAYER}.input_layernorm.weight", VllmTarget(f"{LAYER}.input_layernorm.weight", None)),
        (
            f"{LAYER}.post_attention_layernorm.weight",
            VllmTarget(f"{LAYER}.post_attention_layernorm.weight", None),
        ),
        ("model.embed_tokens.weight", VllmTarget("model.embed_tokens.weight", None)),
        ("model.norm.weight", VllmTarget("model.norm.weight", None)),
        ("lm_head.weight", VllmTarget("lm_head.weight", None)),
    ],
)
def test_qwen2_names_map_to_vllm_fused_parameters_and_shard_ids(hf_name, expected):
    assert hf_to_vllm_qwen2(hf_name) == expected


def test_layer_index_in_a_name_is_kept():
    assert hf_to_vllm_qwen2("model.layers.27.self_attn.v_proj.bias") == VllmTarget(
        "model.layers.27.self_attn.qkv_proj.bias", "v"
    )


def test_unfused_target_has_no_shard_by_default():
    assert VllmTarget("lm_head.weight").shard is None


# ---- column: q_proj, gate_proj, up_proj -------------------------------------------------


@pytest.mark.parametrize(
    ("tp_size", "tp_rank", "rows"),
    [
        (1, 0, slice(0, 8)),
        (2, 0, slice(0, 4)),
        (2, 1, slice(4, 8)),
        (4, 0, slice(0, 2)),
        (4, 1, slice(2, 4)),
        (4, 2, slice(4, 6)),
        (4, 3, slice(6, 8)),
    ],
)
@pytest.mark.parametrize("parameter", ["weight", "bias"])
def test_query_projection_splits_rows_by_query_heads(tp_size, tp_rank, rows, parameter):
    full = arange(8, 8) if parameter == "weight" else arange(8)

    part = shard_tensor(f"{LAYER}.self_attn.q_proj.{parameter}", full, GEOMETRY, tp_rank, tp_size)

    assert_close(part, full[rows])


@pytest.mark.parametrize(
    ("tp_size", "tp_rank", "rows"),
    [
        (1, 0, slice(0, 12)),
        (2, 0, slice(0, 6)),
        (2, 1, slice(6, 12)),
        (4, 0, slice(0, 3)),
        (4, 1, slice(3, 6)),
        (4, 2, slice(6, 9)),
        (4, 3, slice(9, 12)),
    ],
)
@pytest.mark.parametrize("module", ["gate_proj", "up_proj"])
def test_gate_and_up_projections_split_rows_evenly(tp_size, tp_rank, rows, module):
    full = arange(12, 8)

    part = shard_tensor(f"{LAYER}.mlp.{module}.weight", full, GEOMETRY, tp_rank, tp_size)

    assert_close(part, full[rows])


# ---- key/value heads ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tp_size", "tp_rank", "rows"),
    [
        (1, 0, slice(0, 4)),  # both heads
        (2, 0, slice(0, 2)),  # head 0
        (2, 1, slice(2, 4)),  # head 1
        (4, 0, slice(0, 2)),  # head 0, shared by ranks 0 and 1
        (4, 1, slice(0, 2)),
        (4, 2, slice(2, 4)),  # head 1, shared by ranks 2 and 3
        (4, 3, slice(2, 4)),
    ],
)
@pytest.mark.parametrize("module", ["k_proj", "v_proj"])
@pytest.mark.parametrize("parameter", ["weight", "bias"])
def test_key_value_projections_split_by_heads_and_replicate_when_ranks_outnumber_heads(
    tp_size, tp_rank, rows, module, parameter
):
    full = arange(4, 8) if parameter == "weight" else arange(4)

    part = shard_tensor(f"{LAYER}.self_attn.{module}.{parameter}", full, GEOMETRY, tp_rank, tp_size)

    assert_close(part, full[rows])


def test_with_more_heads_than_ranks_each_rank_holds_several_whole_key_value_heads():
    geometry = HeadGeometry(num_attention_heads=8, num_key_value_heads=4, head_dim=1)
    full = arange(4, 3)

    parts = [shard_tensor(f"{LAYER}.self_attn.k_proj.weight", full, geometry, rank, 2) for rank in range(2)]

    assert_close(parts[0], full[0:2])
    assert_close(parts[1], full[2:4])


# ---- row: o_proj, down_proj -----------------------------------------------------------


@pytest.mark.parametrize(
    ("tp_size", "tp_rank", "columns"),
    [
        (1, 0, slice(0, 8)),
        (2, 0, slice(0, 4)),
        (2, 1, slice(4, 8)),
        (4, 0, slice(0, 2)),
        (4, 1, slice(2, 4)),
        (4, 2, slice(4, 6)),
        (4, 3, slice(6, 8)),
    ],
)
def test_attention_output_projection_splits_columns(tp_size, tp_rank, columns):
    full = arange(8, 8)

    part = shard_tensor(f"{LAYER}.self_attn.o_proj.weight", full, GEOMETRY, tp_rank, tp_size)

    assert_close(part, full[:, columns])


@pytest.mark.parametrize(
    ("tp_size", "tp_rank", "columns"),
    [
        (1, 0, slice(0, 12)),
        (2, 0, slice(0, 6)),
        (2, 1, slice(6, 12)),
        (4, 0, slice(0, 3)),
        (4, 1, slice(3, 6)),
        (4, 2, slice(6, 9)),
        (4, 3, slice(9, 12)),
    ],
)
def test_down_projection_splits_columns(tp_size, tp_rank, columns):
    full = arange(8, 12)

    part = shard_tensor(f"{LAYER}.mlp.down_proj.weight", full, GEOMETRY, tp_rank, tp_size)

    assert_close(part, full[:, columns])


# ---- vocab: embed_tokens, lm_head -----------------------------------------------------


def zero_rows(count, width=3):
    return torch.zeros(count, width)


@pytest.mark.parametrize(
    ("tp_size", "tp_rank", "expected"),
    [
        # 10 rows padded to 12 (vocab_pad_to=4), split into tp_size parts.
        (1, 0, lambda full: torch.cat([full[0:10], zero_rows(2)])),
        (2, 0, lambda full: full[0:6]),
        (2, 1, lambda full: torch.cat([full[6:10], zero_rows(2)])),
        (4, 0, lambda full: full[0:3]),
        (4, 1, lambda full: full[3:6]),
        (4, 2, lambda full: full[6:9]),
        (4, 3, lambda full: torch.cat([full[9:10], zero_rows(2)])),
    ],
)
@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "lm_head.weight"])
def test_vocab_rows_are_zero_padded_then_split(tp_size, tp_rank, expected, name):
    full = arange(10, 3)

    part = shard_tensor(name, full, GEOMETRY, tp_rank, tp_size, vocab_pad_to=4)

    assert_close(part, expected(full))


def test_vocab_is_padded_to_a_multiple_of_64_by_default():
    full = arange(100, 3)

    parts = [shard_tensor("lm_head.weight", full, GEOMETRY, rank, 2) for rank in range(2)]

    assert DEFAULT_VOCAB_PAD_TO == 64
    assert_close(parts[0], full[0:64])
    assert_close(parts[1], torch.cat([full[64:100], zero_rows(28)]))


def test_a_rank_made_only_of_padding_gets_zeros():
    full = arange(2, 3)

    part = shard_tensor("lm_head.weight", full, GEOMETRY, 3, 4, vocab_pad_to=8)

    assert_close(part, zero_rows(2))


# ---- replicated -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        f"{LAYER}.input_layernorm.weight",
        f"{LAYER}.post_attention_layernorm.weight",
        "model.norm.weight",
        f"{LAYER}.self_attn.o_proj.bias",  # a row-parallel bias is added after the reduce
        f"{LAYER}.mlp.down_proj.bias",
        "visual.blocks.0.attn.proj.weight",  # unknown names are replicated
    ],
)
@pytest.mark.parametrize(("tp_size", "tp_rank"), [(1, 0), (2, 1), (4, 3)])
def test_norms_row_biases_and_unknown_names_are_replicated_without_a_copy(name, tp_size, tp_rank):
    full = arange(8)

    part = shard_tensor(name, full, GEOMETRY, tp_rank, tp_size)

    assert_close(part, full)
    assert shares_storage(part, full)


# ---- copies, dtypes, autograd ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        (f"{LAYER}.self_attn.q_proj.weight", (8, 8)),
        (f"{LAYER}.self_attn.k_proj.weight", (4, 8)),
        (f"{LAYER}.mlp.up_proj.weight", (12, 8)),
        (f"{LAYER}.self_attn.o_proj.weight", (8, 8)),
        (f"{LAYER}.mlp.down_proj.weight", (8, 12)),
        ("model.embed_tokens.weight", (128, 8)),  # already a multiple of 64: no padding
    ],
)
def test_slices_are_views_of_the_full_tensor(name, shape):
    full = arange(*shape)

    part = shard_tensor(name, full, GEOMETRY, 1, 2)

    assert shares_storage(part, full)


def test_column_slices_stay_contiguous():
    full = arange(12, 8)

    assert shard_tensor(f"{LAYER}.mlp.gate_proj.weight", full, GEOMETRY, 1, 2).is_contiguous()


def test_bfloat16_slices_keep_their_dtype_and_values():
    full = arange(8, 8, dtype=torch.bfloat16)
    vocab = arange(10, 3, dtype=torch.bfloat16)

    query = shard_tensor(f"{LAYER}.self_attn.q_proj.weight", full, GEOMETRY, 1, 2)
    output = shard_tensor(f"{LAYER}.self_attn.o_proj.weight", full, GEOMETRY, 1, 2)
    padded = shard_tensor("lm_head.weight", vocab, GEOMETRY, 1, 2, vocab_pad_to=4)

    assert query.dtype == output.dtype == padded.dtype == torch.bfloat16
    assert_close(query, full[4:8])
    assert_close(output, full[:, 4:8])
    assert_close(padded, torch.cat([vocab[6:10], torch.zeros(2, 3, dtype=torch.bfloat16)]))


def test_slices_of_a_parameter_are_detached():
    parameter = torch.nn.Parameter(arange(10, 3))

    padded = shard_tensor("lm_head.weight", parameter, GEOMETRY, 1, 2, vocab_pad_to=4)
    view = shard_tensor("lm_head.weight", parameter, GEOMETRY, 0, 2, vocab_pad_to=4)

    assert not padded.requires_grad
    assert not view.requires_grad


# ---- every rank together reproduces the full tensor ------------------------------------


@pytest.mark.parametrize("tp_size", [1, 2, 4])
@pytest.mark.parametrize(
    ("name", "full", "split_dim", "padded_full"),
    [
        (f"{LAYER}.self_attn.q_proj.weight", arange(8, 8), 0, arange(8, 8)),
        (f"{LAYER}.self_attn.q_proj.bias", arange(8), 0, arange(8)),
        (f"{LAYER}.mlp.gate_proj.weight", arange(12, 8), 0, arange(12, 8)),
        (f"{LAYER}.mlp.up_proj.weight", arange(12, 8), 0, arange(12, 8)),
        (f"{LAYER}.self_attn.o_proj.weight", arange(8, 8), 1, arange(8, 8)),
        (f"{LAYER}.mlp.down_proj.weight", arange(8, 12), 1, arange(8, 12)),
        ("model.embed_tokens.weight", arange(10, 3), 0, torch.cat([arange(10, 3), zero_rows(2)])),
        ("lm_head.weight", arange(12, 3), 0, arange(12, 3)),
    ],
)
def test_concatenating_every_ranks_slice_gives_back_the_padded_full_tensor(
    tp_size, name, full, split_dim, padded_full
):
    parts = [shard_tensor(name, full, GEOMETRY, rank, tp_size, vocab_pad_to=4) for rank in range(tp_size)]

    assert_close(torch.cat(parts, dim=split_dim), padded_full)


@pytest.mark.parametrize("tp_size", [1, 2])
def test_concatenating_key_value_slices_gives_back_the_full_tensor_when_heads_are_split(tp_size):
    full = arange(4, 8)

    parts = [shard_tensor(f"{LAYER}.self_attn.v_proj.weight", full, GEOMETRY, rank, tp_size) for rank in range(tp_size)]

    assert_close(torch.cat(parts), full)


# ---- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("tp_rank", "tp_size"), [(-1, 2), (2, 2), (5, 4)])
def test_a_rank_outside_the_group_is_rejected(tp_rank, tp_size):
    with pytest.raises(ValueError, match=rf"tp_rank={tp_rank} is outside \[0, tp_size={tp_size}\)"):
        shard_tensor("model.norm.weight", arange(8), GEOMETRY, tp_rank, tp_size)


def test_a_group_of_no_ranks_is_rejected():
    with pytest.raises(ValueError, match="tp_size must be >= 1, got 0"):
        shard_tensor("model.norm.weight", arange(8), GEOMETRY, 0, 0)


def test_query_heads_not_divisible_by_tp_size_are_rejected_for_every_tensor():
    with pytest.raises(ValueError, match="num_attention_heads=4 is not divisible by tp_size=3"):
        shard_tensor("model.norm.weight", arange(8), GEOMETRY, 0, 3)


@pytest.mark.parametrize(
    ("geometry", "tp_size"),
    [
        (HeadGeometry(num_attention_heads=12, num_key_value_heads=4, head_dim=2), 6),
        (HeadGeometry(num_attention_heads=6, num_key_value_heads=3, head_dim=2), 2),
    ],
)
def test_key_value_heads_and_tp_size_that_do_not_divide_one_another_are_rejected(geometry, tp_size):
    with pytest.raises(
        ValueError,
        match=f"num_key_value_heads={geometry.num_key_value_heads} and tp_size={tp_size}: one must divide the other",
    ):
        check_tp_layout(geometry, 0, tp_size)


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        (f"{LAYER}.mlp.gate_proj.weight", (6, 8), "gate_proj.weight: dim 0 has size 6,"),
        (f"{LAYER}.mlp.up_proj.weight", (10, 8), "up_proj.weight: dim 0 has size 10,"),
        (f"{LAYER}.mlp.down_proj.weight", (8, 6), "down_proj.weight: dim 1 has size 6,"),
        (f"{LAYER}.self_attn.o_proj.weight", (8, 10), "o_proj.weight: dim 1 has size 10,"),
    ],
)
def test_a_split_dimension_not_divisible_by_tp_size_is_named_with_its_numbers(name, shape, message):
    with pytest.raises(ValueError, match=message + " which is not divisible by tp_size=4"):
        shard_tensor(name, arange(*shape), GEOMETRY, 0, 4)


def test_a_padded_vocab_not_divisible_by_tp_size_is_rejected():
    message = "10 vocabulary rows .* vocab_pad_to=1 make 10, which is not divisible by tp_size=4"
    with pytest.raises(ValueError, match=message):
        shard_tensor("lm_head.weight", arange(10, 3), GEOMETRY, 0, 4, vocab_pad_to=1)


def test_a_vocab_padding_below_one_is_rejected():
    with pytest.raises(ValueError, match="vocab_pad_to must be >= 1, got 0"):
        shard_tensor("lm_head.weight", arange(10, 3), GEOMETRY, 0, 2, vocab_pad_to=0)


@pytest.mark.parametrize(
    ("name", "rows", "message"),
    [
        (f"{LAYER}.self_attn.q_proj.weight", 6, "dim 0 has 6 rows but num_attention_heads \\* head_dim = 8"),
        (f"{LAYER}.self_attn.k_proj.weight", 8, "dim 0 has 8 rows but num_key_value_heads \\* head_dim = 4"),
        (f"{LAYER}.self_attn.v_proj.bias", 2, "dim 0 has 2 rows but num_key_value_heads \\* head_dim = 4"),
    ],
)
def test_attention_rows_that_disagree_with_the_geometry_are_rejected(name, rows, message):
    full = arange(rows, 8) if name.endswith("weight") else arange(rows)

    with pytest.raises(ValueError, match=message):
        shard_tensor(name, full, GEOMETRY, 0, 2)


def test_a_row_parallel_weight_with_one_dimension_is_rejected():
    with pytest.raises(ValueError, match=r"down_proj.weight: expected at least 2 dimension\(s\), got shape \(8,\)"):
        shard_tensor(f"{LAYER}.mlp.down_proj.weight", arange(8), GEOMETRY, 0, 2)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((0, 1, 2), "num_attention_heads must be >= 1, got 0"),
        ((4, 0, 2), "num_key_value_heads must be >= 1, got 0"),
        ((4, 2, 0), "head_dim must be >= 1, got 0"),
        ((4, 3, 2), "num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
    ],
)
def test_an_impossible_head_geometry_is_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        HeadGeometry(*fields)


def test_shard_for_rank_checks_the_layout_before_reading_any_tensor():
    def never_read():
        raise AssertionError("the tensors were read before the layout was checked")
        yield  # pragma: no cover

    with pytest.raises(ValueError, match="tp_rank=2"):
        shard_for_rank(never_read(), GEOMETRY, 2, 2)


# ---- geometry from a transformers config ----------------------------------------------


def test_geometry_is_read_from_a_qwen2_config():
    config = transformers.Qwen2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2)

    assert HeadGeometry.from_config(config) == HeadGeometry(num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def test_an_explicit_head_dim_in_the_config_wins_over_hidden_size():
    config = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=4, head_dim=16)

    assert HeadGeometry.from_config(config).head_dim == 16


# ---- a real tiny Qwen2 -----------------------------------------------------------------

# Qwen2 with vocab 100 (padded to 128), hidden 32, 4 query heads and 2 key/value heads of
# 8 features, MLP 64: the shape each of 2 TP ranks holds, by name suffix.
TINY_QWEN2_TP2_SHAPES = {
    "model.embed_tokens.weight": (64, 32),
    "self_attn.q_proj.weight": (16, 32),
    "self_attn.q_proj.bias": (16,),
    "self_attn.k_proj.weight": (8, 32),
    "self_attn.k_proj.bias": (8,),
    "self_attn.v_proj.weight": (8, 32),
    "self_attn.v_proj.bias": (8,),
    "self_attn.o_proj.weight": (32, 16),
    "mlp.gate_proj.weight": (32, 32),
    "mlp.up_proj.weight": (32, 32),
    "mlp.down_proj.weight": (32, 32),
    "input_layernorm.weight": (32,),
    "post_attention_layernorm.weight": (32,),
    "model.norm.weight": (32,),
    "lm_head.weight": (64, 32),
}


@pytest.fixture(scope="module")
def tiny_qwen2():
    config = transformers.Qwen2Config(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    return config, transformers.Qwen2ForCausalLM(config)


def suffix_of(name):
    (suffix,) = [suffix for suffix in TINY_QWEN2_TP2_SHAPES if name == suffix or name.endswith("." + suffix)]
    return suffix


@pytest.mark.parametrize("tp_rank", [0, 1])
def test_every_tensor_of_a_tiny_qwen2_gets_its_tp2_shape(tiny_qwen2, tp_rank):
    config, model = tiny_qwen2
    state = model.state_dict()

    sharded = list(shard_for_rank(state.items(), HeadGeometry.from_config(config), tp_rank, 2))

    assert [name for name, _ in sharded] == list(state)
    assert {suffix_of(name) for name, _ in sharded} == set(TINY_QWEN2_TP2_SHAPES)
    for name, part in sharded:
        assert tuple(part.shape) == TINY_QWEN2_TP2_SHAPES[suffix_of(name)], name


def test_two_tiny_qwen2_ranks_together_hold_the_whole_model(tiny_qwen2):
    config, model = tiny_qwen2
    state = model.state_dict()
    geometry = HeadGeometry.from_config(config)
    rank0, rank1 = (dict(shard_for_rank(state.items(), geometry, rank, 2)) for rank in range(2))

    assert_close(torch.cat([rank0["lm_head.weight"], rank1["lm_head.weight"]])[:100], state["lm_head.weight"])
    assert_close(torch.cat([rank0["lm_head.weight"], rank1["lm_head.weight"]])[100:], torch.zeros(28, 32))
    layer = "model.layers.1"
    assert_close(
        torch.cat([rank0[f"{layer}.self_attn.o_proj.weight"], rank1[f"{layer}.self_attn.o_proj.weight"]], dim=1),
        state[f"{layer}.self_attn.o_proj.weight"],
    )
    assert_close(
        torch.cat([rank0[f"{layer}.self_attn.k_proj.bias"], rank1[f"{layer}.self_attn.k_proj.bias"]]),
        state[f"{layer}.self_attn.k_proj.bias"],
    )
    assert_close(rank0["model.norm.weight"], state["model.norm.weight"])
    assert_close(rank1["model.norm.weight"], state["model.norm.weight"])


def test_every_tiny_qwen2_name_maps_onto_the_vllm_parameter_set(tiny_qwen2):
    _, model = tiny_qwen2

    targets = {hf_to_vllm_qwen2(name).name for name in model.state_dict()}

    per_layer = {
        "self_attn.qkv_proj.weight",
        "self_attn.qkv_proj.bias",
        "self_attn.o_proj.weight",
        "mlp.gate_up_proj.weight",
        "mlp.down_proj.weight",
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
    }
    assert targets == {
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        *(f"model.layers.{layer}.{name}" for layer in range(2) for name in per_layer),
    }

"""LoRA (roles.lora, roles.lora_loading): the adapter names on the channel, a trainer
that trains and checkpoints the adapter alone, the reference from its base model, and
generators that apply received adapters by merging (without drift) or unmerged."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from protocols.rl import Train
from roles.lora import (
    LoraSettings,
    adapted_module,
    adapter_file_key,
    adapter_name_of_file_key,
    adapter_shapes,
    adapter_state,
    channel_name,
    trainable_state,
    wrap_model,
)
from roles.lora_loading import AdapterLoader, MergingLoader, merge_into
from roles.reference import Reference, ReferenceConfig
from roles.trainer import Trainer, TrainerConfig
from roles.update import Optimization
from tests.unit.test_generation import one_thread, tiny_model  # noqa: F401  one_thread: an autouse fixture
from tests.unit.test_token_batches import training_batch

SETTINGS = LoraSettings(r=4, alpha=8.0)


def lora_trainer(settings: LoraSettings = SETTINGS, lr: float = 0.05) -> Trainer:
    """A LoRA trainer on the tiny model, built in this process (no process group)."""
    trainer = Trainer("trainer-0", TrainerConfig(
        model="unused", lora=settings.model_dump(), update={"mini_batch_size": 8, "micro_batch_size": 8},
        optim={"lr": lr, "warmup_steps": 0, "grad_clip": None},
    ))
    trainer.model = wrap_model(tiny_model(), settings).train()
    trainer.optimization = Optimization.build(trainer.model, trainer.config.optim)
    return trainer


def train_once(trainer: Trainer, step: int = 1) -> None:
    batch = training_batch(tiny_model().config.vocab_size)
    trainer._train(Train(batch, step=step, temperature=1.0, kl_coef=0.0, old_logprobs="current"))


def logits(model: torch.nn.Module, seed: int = 3) -> torch.Tensor:
    ids = torch.randint(3, 64, (3, 9), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


# ------------------------------------------------------------------ names
def test_peft_state_names_map_to_adapter_names_and_base_weights_are_dropped():
    assert channel_name("base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight") == \
        "model.layers.0.mlp.up_proj.lora_B.weight"
    assert channel_name("base_model.model.model.layers.0.mlp.up_proj.base_layer.weight") is None
    assert channel_name("base_model.model.lm_head.weight") is None
    name = "model.layers.1.self_attn.q_proj.lora_A.weight"
    assert adapter_name_of_file_key(adapter_file_key(name)) == name
    assert adapted_module(name) == ("model.layers.1.self_attn.q_proj", "lora_A")
    with pytest.raises(ValueError, match="not an adapter name"):
        adapted_module("model.layers.1.self_attn.q_proj.weight")


def test_the_shapes_a_generator_expects_are_those_of_the_trainers_adapter():
    model = wrap_model(tiny_model(), SETTINGS)
    state = adapter_state(model)
    assert adapter_shapes(tiny_model().config, SETTINGS) == {name: tuple(t.shape) for name, t in state.items()}
    # all-linear: the seven projections of both layers, A and B each; never the output head
    assert len(state) == 2 * 7 * 2 and not any("lm_head" in name for name in state)
    assert state["model.layers.0.mlp.down_proj.lora_A.weight"].shape == (4, 64)
    assert state["model.layers.0.mlp.down_proj.lora_B.weight"].shape == (32, 4)


def test_named_target_modules_adapt_only_those():
    shapes = adapter_shapes(tiny_model().config, LoraSettings(r=2, target_modules=["q_proj", "v_proj"]))
    assert {adapted_module(name)[0].rpartition(".")[2] for name in shapes} == {"q_proj", "v_proj"}


# ------------------------------------------------------------------ the trainer
def test_a_lora_trainer_optimizes_the_adapter_alone_and_leaves_the_base_untouched():
    trainer = lora_trainer()
    try:
        optimized = {id(p) for group in trainer.optimization.optimizer.param_groups for p in group["params"]}
        adapter = {id(p) for name, p in trainer.model.named_parameters() if "lora_" in name}
        assert optimized == adapter
        base_before = {name: t.clone() for name, t in trainer.model.state_dict().items() if channel_name(name) is None}
        adapter_before = {name: t.clone() for name, t in adapter_state(trainer.model).items()}
        train_once(trainer)
        for name, tensor in trainer.model.state_dict().items():
            if channel_name(name) is None:
                assert torch.equal(tensor, base_before[name]), name
        changed = lambda: {name for name, t in adapter_state(trainer.model).items()  # noqa: E731
                           if not torch.equal(t, adapter_before[name])}
        assert changed() == {name for name in adapter_before if "lora_B" in name}  # A has no gradient while B = 0
        train_once(trainer, step=2)
        assert changed() == set(adapter_before)
    finally:
        trainer.compute.shutdown()


@pytest.mark.parametrize("loss", ["ppo", "gspo", "cispo"])
def test_every_policy_loss_trains_the_adapter_with_a_kl_loss_to_the_base(loss: str):
    trainer = Trainer("trainer-0", TrainerConfig(
        model="unused", lora=SETTINGS.model_dump(), policy_loss={"type": loss}, entropy_coef=0.01,
        update={"mini_batch_size": 4, "micro_batch_size": 2}, optim={"lr": 0.05, "warmup_steps": 0},
    ))
    try:
        trainer.model = wrap_model(tiny_model(), SETTINGS).train()
        trainer.optimization = Optimization.build(trainer.model, trainer.config.optim)
        batch = training_batch(tiny_model().config.vocab_size)
        batch = batch.with_columns(ref_logprobs=trainer._logprobs(batch, 1.0, base=True))
        before = {name: t.clone() for name, t in adapter_state(trainer.model).items()}
        stats = trainer._train(Train(batch, step=1, temperature=1.0, kl_coef=0.1, kl_estimator="k3"))
        assert all(torch.isfinite(torch.tensor(value)) for value in stats.values()), stats
        assert 0.0 <= stats["train/kl_loss"] < 0.1  # k3 to the base: zero at first, small after one step
        assert any(not torch.equal(t, before[name]) for name, t in adapter_state(trainer.model).items())
    finally:
        trainer.compute.shutdown()


def test_base_model_logprobs_with_the_adapter_disabled_equal_a_reference_on_the_base():
    trainer = lora_trainer()
    reference = Reference("reference-0", ReferenceConfig(model="unused"))
    try:
        train_once(trainer)
        reference.model = tiny_model().eval()
        batch = training_batch(tiny_model().config.vocab_size)
        base = trainer._logprobs(batch, 0.9, base=True)
        torch.testing.assert_close(base, reference._logprobs(batch, 0.9), rtol=0, atol=1e-6)
        assert not torch.allclose(trainer._logprobs(batch, 0.9), base, atol=1e-4)  # the adapter is on otherwise
    finally:
        trainer.compute.shutdown()
        reference.compute.shutdown()


def test_a_lora_checkpoint_holds_the_adapter_and_its_optimizer_state_and_resumes(tmp_path: Path):
    import torch.distributed.checkpoint as dcp

    trainer, resumed = lora_trainer(), lora_trainer()
    try:
        train_once(trainer)
        trainer._save(tmp_path)
        saved = dcp.FileSystemReader(str(tmp_path / "trainer")).read_metadata().state_dict_metadata
        model_keys = {key.removeprefix("model.") for key in saved if key.startswith("model.")}
        assert model_keys == set(trainable_state(trainer.model))
        assert all(channel_name(key) is not None for key in model_keys)  # no base weight in the checkpoint
        resumed._load(tmp_path)
        for name, tensor in adapter_state(trainer.model).items():
            assert torch.equal(adapter_state(resumed.model)[name], tensor), name
        # the optimizer state came back too: one more identical step keeps them identical
        train_once(trainer, step=2)
        train_once(resumed, step=2)
        for name, tensor in adapter_state(trainer.model).items():
            torch.testing.assert_close(adapter_state(resumed.model)[name], tensor, rtol=0, atol=1e-7)
    finally:
        trainer.compute.shutdown()
        resumed.compute.shutdown()


# ------------------------------------------------------------------ generators
def trained_adapters(versions: int) -> tuple[Trainer, list[dict[str, torch.Tensor]]]:
    trainer = lora_trainer()
    adapters = []
    for step in range(1, versions + 1):
        train_once(trainer, step)
        adapters.append({name: t.clone() for name, t in adapter_state(trainer.model).items()})
    return trainer, adapters


def test_a_merging_generator_computes_what_the_trainers_adapter_model_does():
    trainer, (adapter,) = trained_adapters(1)
    try:
        generator = tiny_model()
        MergingLoader(generator, SETTINGS)(adapter.items())
        torch.testing.assert_close(logits(generator), logits(trainer.model), rtol=1e-5, atol=1e-5)
    finally:
        trainer.compute.shutdown()


def test_merging_version_after_version_is_bit_identical_to_a_fresh_merge_of_the_last():
    trainer, adapters = trained_adapters(4)
    trainer.compute.shutdown()
    generator, fresh = tiny_model(), tiny_model()
    loader = MergingLoader(generator, SETTINGS)
    for adapter in adapters:
        loader(adapter.items())
    MergingLoader(fresh, SETTINGS)(adapters[-1].items())
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(generator.state_dict()[name], tensor), name


def test_an_adapter_missing_half_of_a_module_is_refused_before_anything_merges():
    trainer, (adapter,) = trained_adapters(1)
    trainer.compute.shutdown()
    generator = tiny_model()
    before = copy.deepcopy(generator.state_dict())
    partial = {name: t for name, t in adapter.items() if name != "model.layers.1.mlp.up_proj.lora_B.weight"}
    with pytest.raises(ValueError, match="lacks lora_A or lora_B .* model.layers.1.mlp.up_proj"):
        MergingLoader(generator, SETTINGS)(partial.items())
    assert all(torch.equal(generator.state_dict()[name], t) for name, t in before.items())


def test_an_unmerged_generator_computes_what_the_trainers_adapter_model_does():
    trainer, (adapter,) = trained_adapters(1)
    try:
        loader = AdapterLoader(tiny_model(), SETTINGS)
        assert loader.expected == adapter_shapes(tiny_model().config, SETTINGS)
        loader(adapter.items())
        torch.testing.assert_close(logits(loader.model), logits(trainer.model), rtol=1e-5, atol=1e-5)
    finally:
        trainer.compute.shutdown()


def test_merge_is_base_plus_scaled_b_times_a_in_the_weights_dtype():
    base = torch.randn(5, 3)
    a, b = torch.randn(2, 3), torch.randn(5, 2)
    weight = torch.empty(5, 3)
    merge_into(weight, base, a, b, 4.0)
    torch.testing.assert_close(weight, base + 4.0 * b @ a)
    low = torch.empty(5, 3, dtype=torch.bfloat16)
    merge_into(low, base.bfloat16(), a, b, 4.0)
    torch.testing.assert_close(low, (base.bfloat16().float() + 4.0 * b @ a).bfloat16())

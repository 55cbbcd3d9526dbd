"""Adapter-only weight sync between real role processes: a LoRA trainer (roles.trainer)
publishes its adapter to LoRA generators (roles.generator), one merging it into its
weights and one, started late, running it unmerged. Both sample with exactly the
policy the trainer holds: base weights from the model directory plus the adapter of
the newest version. The trainer's log-probs with the adapter disabled are a separate
reference process's (roles.reference on the same base)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from protocols.batch import Batch
from protocols.rl import ComputeLogProbs, Generate, LogProbs, Rollouts, Sampling, Train
from protocols.weights import PublishReport, PublishWeights
from roles.lora import LoraSettings, adapter_shapes
from runtime.settings import RuntimeSettings
from tests.component.test_registry import Watcher
from tests.unit.test_generation import model_dir, tiny_model  # noqa: F401 - model_dir is a fixture
from tests.unit.test_token_batches import training_batch

pytestmark = pytest.mark.timeout(300)

SETTINGS = RuntimeSettings(heartbeat_interval_s=0.3, heartbeat_timeout_s=3.0)
LORA = {"r": 4, "alpha": 8.0}
CHANNEL = {"announce_timeout_s": 10, "ready_timeout_s": 30, "transfer_timeout_s": 30, "commit_timeout_s": 30}
GREEDY = Sampling(n=1, temperature=1.0, top_p=1.0, top_k=1, max_new_tokens=5, stop=(), seed=0, ignore_eos=True)


async def test_generators_merging_or_not_and_a_late_joiner_sample_with_the_trainers_adapter(
        spawn: Any, run_here: Any, model_dir: Path) -> None:
    registry = await spawn("runtime.registry:Registry", "registry", settings=SETTINGS)
    driver = Watcher("driver", settings=SETTINGS)
    await run_here(driver, registry=registry.endpoint)
    common = {"registry": registry.endpoint, "settings": SETTINGS, "ready_timeout": 180}
    await spawn("roles.trainer:Trainer", "trainer-0", **common, config={
        "model": str(model_dir), "lora": LORA, "channel": CHANNEL,
        "optim": {"lr": 0.05, "warmup_steps": 0}, "update": {"mini_batch_size": 8, "micro_batch_size": 8}})
    generator = {"model": str(model_dir), "lora": LORA, "channel": CHANNEL}
    await spawn("roles.generator:Generator", "generator-0", **common, config=generator)
    await spawn("roles.reference:Reference", "reference-0", **common, config={"model": str(model_dir)})

    batch = training_batch(tiny_model().config.vocab_size)
    for step in (1, 2):
        await driver.ask("trainer-0", Train(batch, step=step, temperature=1.0, kl_coef=0.0, old_logprobs="current"), timeout=120)
        report: PublishReport = await driver.ask("trainer-0", PublishWeights(), timeout=120)
        assert report.version == step and report.committed == ["generator-0"]
    shapes = adapter_shapes(tiny_model().config, LoraSettings(**LORA))
    assert report.sent_bytes == 4 * sum(math.prod(shape) for shape in shapes.values())  # float32 A and B only

    # a late joiner is caught up: its base from the model directory, the adapter of version 2 over the channel
    await spawn("roles.generator:Generator", "generator-1", instance=1, **common,
                config={**generator, "lora_mode": "unmerged"})
    prompts = Batch(columns={"prompt_ids": [[5, 9, 12, 7], [3, 30, 41], [11, 2, 8, 19, 25]]})
    merged, unmerged = await asyncio.gather(*(driver.ask(name, Generate(prompts, GREEDY), timeout=120)
                                              for name in ("generator-0", "generator-1")))
    assert isinstance(merged, Rollouts) and merged.version == unmerged.version == 2
    assert torch.equal(merged.batch.tensors["response_ids"], unmerged.batch.tensors["response_ids"])
    for rollouts in (merged, unmerged):
        policy: LogProbs = await driver.ask("trainer-0", ComputeLogProbs(rollouts.batch, 1.0), timeout=120)
        base: LogProbs = await driver.ask("trainer-0", ComputeLogProbs(rollouts.batch, 1.0, base=True), timeout=120)
        mask = rollouts.batch.tensors["response_mask"]
        behavior = rollouts.batch.tensors["behavior_logprobs"]
        torch.testing.assert_close(behavior * mask, policy.logprobs * mask, rtol=0, atol=1e-4)
        assert (behavior - base.logprobs).mul(mask).abs().max() > 1e-3  # it is not the base model's
        reference: LogProbs = await driver.ask("reference-0", ComputeLogProbs(rollouts.batch, 1.0), timeout=120)
        torch.testing.assert_close(base.logprobs * mask, reference.logprobs * mask, rtol=0, atol=1e-5)

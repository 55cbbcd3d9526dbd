"""The update loop the trainer and the critic share (roles.update): gradient accumulation
over micro-batches gives the whole mini-batch loss's gradient, the logged numbers are
the mini-batch's token means, and the schedule and clipping follow hand-computed values."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from protocols.batch import Batch
from roles.update import (
    MicroBatch,
    MicroBatchLoss,
    OptimConfig,
    Optimization,
    UpdateConfig,
    clip_gradients,
    lr_factor,
    run_update,
)

FEATURES = 3


def regression_batch(lengths: list[int], width: int = 5) -> Batch:
    """Rows of per-token features [N, T, F] and targets [N, T], `lengths[i]` valid tokens each."""
    generator = torch.Generator().manual_seed(0)
    rows = len(lengths)
    mask = torch.zeros(rows, width)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1.0
    return Batch(tensors={
        "features": torch.randn(rows, width, FEATURES, generator=generator),
        "targets": torch.randn(rows, width, generator=generator),
        "response_mask": mask,
    })


def token_mean_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Squared error averaged over the batch's valid tokens."""
    t = batch.tensors
    errors = (model(t["features"]).squeeze(-1) - t["targets"]) ** 2
    return (errors * t["response_mask"]).sum() / t["response_mask"].sum()


def regression_loss(model: torch.nn.Module):  # type: ignore[no-untyped-def]
    def loss(micro: MicroBatch) -> MicroBatchLoss:
        value = token_mean_loss(model, micro.batch)
        return MicroBatchLoss(value, micro.token_share, {"loss": micro.token_share * float(value.detach())})
    return loss


@pytest.mark.parametrize("micro_batches", [{"micro_batch_size": 1}, {"micro_batch_size": 2}, {"micro_batch_size": 4},
                                           {"max_tokens_per_micro_batch": 4}, {"max_tokens_per_micro_batch": 9}])
def test_gradients_accumulated_over_micro_batches_are_the_whole_mini_batchs(micro_batches: dict[str, int]):
    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURES, 1)
    untouched = copy.deepcopy(model)
    batch = regression_batch([5, 1, 3, 2, 4, 1])  # micro-batches of unequal token counts
    optimization = Optimization.build(model, OptimConfig(lr=1e-3, grad_clip=None))
    update = UpdateConfig(ppo_epochs=1, mini_batch_size=6, **micro_batches)

    result = run_update(optimization, batch, update, step=0, loss=regression_loss(model),
                        micro_batch_order=lambda mini: torch.arange(mini.size - 1, -1, -1))

    whole = token_mean_loss(untouched, batch)
    whole.backward()
    for accumulated, expected in zip(model.parameters(), untouched.parameters()):
        torch.testing.assert_close(accumulated.grad, expected.grad, rtol=1e-6, atol=1e-7)
    assert result.optimizer_steps == 1
    assert result.stats["loss"] == pytest.approx(float(whole.detach()), rel=1e-6)
    gradient_norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in untouched.parameters()))
    assert result.stats["train/grad_norm"] == pytest.approx(gradient_norm, rel=1e-5)


def test_each_epoch_makes_one_optimizer_step_per_mini_batch_and_steps_the_schedule():
    model = torch.nn.Linear(FEATURES, 1)
    optimization = Optimization.build(model, OptimConfig(lr=0.1, warmup_steps=10))
    update = UpdateConfig(ppo_epochs=2, mini_batch_size=4, micro_batch_size=3)

    result = run_update(optimization, regression_batch([2, 2, 2, 2, 2, 2]), update, step=7,
                        loss=regression_loss(model), grad_norm_name="train/critic_grad_norm")

    assert result.optimizer_steps == 4  # 6 rows in mini-batches of 4 and 2, twice
    assert set(result.stats) == {"loss", "train/critic_grad_norm"}
    assert optimization.scheduler.get_last_lr()[0] == pytest.approx(0.1 * 5 / 10)  # warm-up step 4 of 10


def test_the_shuffle_depends_only_on_the_seed_the_step_and_the_epoch():
    def orders(step: int) -> list[list[float]]:
        seen: list[list[float]] = []
        model = torch.nn.Linear(FEATURES, 1)

        def loss(micro: MicroBatch) -> MicroBatchLoss:
            seen.append(micro.batch.tensors["targets"][:, 0].tolist())
            return regression_loss(model)(micro)

        run_update(Optimization.build(model, OptimConfig()), regression_batch([1, 2, 3, 4]),
                   UpdateConfig(mini_batch_size=4, micro_batch_size=4), step, loss)
        return seen

    assert orders(3) == orders(3)
    assert orders(3) != orders(4)


def test_the_learning_rate_warms_up_linearly_then_decays_on_a_cosine():
    optim = OptimConfig(warmup_steps=4, schedule="cosine", total_steps=14, min_lr_ratio=0.1)
    assert [lr_factor(optim, step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(optim, 4) == pytest.approx(1.0)
    assert lr_factor(optim, 9) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cos(pi / 2) = 0
    assert lr_factor(optim, 14) == pytest.approx(0.1) and lr_factor(optim, 100) == pytest.approx(0.1)
    assert lr_factor(OptimConfig(), 500) == 1.0


def test_clipping_scales_the_gradient_to_the_norm_and_returns_the_norm_before():
    model = torch.nn.Linear(2, 1, bias=False)
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    assert clip_gradients(model, 1.0) == pytest.approx(5.0)
    torch.testing.assert_close(model.weight.grad, torch.tensor([[0.6, 0.8]]))
    assert clip_gradients(model, None) == pytest.approx(1.0)  # no clipping: the norm only

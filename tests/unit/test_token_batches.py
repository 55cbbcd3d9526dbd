"""Micro-batches by a budget of padded tokens (roles.micro_batches): how rows are grouped
(hand-computed), and that the grouping changes the work, never the numbers: the
trainer's accumulated gradient and logged stats equal the whole mini-batch's in every
loss aggregation mode, and the no-gradient passes (old log-probs, reference, critic
values) give every row the result it gets under fixed-row micro-batches."""

from __future__ import annotations

import copy

import pytest
import torch

from protocols.batch import Batch
from protocols.rl import Train
from roles.algorithms import LOSS_AGG_MODES
from roles.critic import Critic, CriticConfig, ValueModel
from roles.logprobs import rollout_logprobs
from roles.micro_batches import by_length, padded_tokens, per_row, row_extents, token_budget_split
from roles.reference import Reference, ReferenceConfig
from roles.trainer import Trainer, TrainerConfig
from roles.update import MicroBatch, MicroBatchLoss, Optimization, accumulate_gradient
from tests.unit.test_batch_logprobs import rollout_batch
from tests.unit.test_generation import one_thread, tiny_model  # noqa: F401  one_thread: an autouse fixture


def masks(prompt_lengths: list[int], response_lengths: list[int], prompt_width: int = 6, response_width: int = 10) -> Batch:
    """Only the masks of rows left-padded to `prompt_width` and right-padded to `response_width`."""
    batch = rollout_batch(prompt_lengths, response_lengths, prompt_width, response_width, vocab=50)
    return Batch(tensors={"prompt_mask": batch.tensors["prompt_mask"], "response_mask": batch.tensors["response_mask"]})


def rows_of(pieces: list[Batch], batch: Batch) -> list[list[int]]:
    """Each piece's rows as indices of `batch` (rows are told apart by their masks)."""
    keys = [tuple(batch.tensors["response_mask"][row].tolist()) + tuple(batch.tensors["prompt_mask"][row].tolist())
            for row in range(batch.size)]
    return [[keys.index(tuple(piece.tensors["response_mask"][row].tolist()) + tuple(piece.tensors["prompt_mask"][row].tolist()))
             for row in range(piece.size)] for piece in pieces]


def test_padded_tokens_are_rows_times_the_widest_prompt_and_the_longest_response():
    batch = masks([2, 4, 1], [3, 1, 5])  # prompts left-padded to 6, responses right-padded to 10
    prompt, response = row_extents(batch)
    assert prompt.tolist() == [2, 4, 1] and response.tolist() == [3, 1, 5]
    assert padded_tokens(batch) == 3 * (4 + 5)
    assert padded_tokens(batch.select([0])) == 2 + 3


def test_a_micro_batch_takes_rows_until_one_more_would_exceed_the_budget():
    batch = masks([2, 2, 2, 2, 2], [1, 2, 3, 5, 8])
    # [0, 1, 2]: 3 x (2 + 3) = 15 <= 16, with row 3: 4 x 7 = 28; [3]: 7, with row 4: 2 x 10 = 20; [4]: 10
    assert rows_of(token_budget_split(batch, 16), batch) == [[0, 1, 2], [3], [4]]
    assert rows_of(token_budget_split(batch, 28), batch) == [[0, 1, 2, 3], [4]]
    assert rows_of(token_budget_split(batch, 1000), batch) == [[0, 1, 2, 3, 4]]


def test_a_row_longer_than_the_budget_is_a_micro_batch_of_its_own():
    batch = masks([1, 1, 3], [1, 2, 9], prompt_width=3)
    assert rows_of(token_budget_split(batch, 6), batch) == [[0, 1], [2]]  # row 2 alone costs 12
    assert rows_of(token_budget_split(batch, 1), batch) == [[0], [1], [2]]


def test_an_all_masked_response_costs_its_prompt_and_one_response_column():
    batch = masks([3, 1], [0, 2], prompt_width=4)
    prompt, response = row_extents(batch)
    assert prompt.tolist() == [3, 1] and response.tolist() == [0, 2]
    assert padded_tokens(batch.select([0])) == 3 + 1
    assert rows_of(token_budget_split(batch, 4), batch) == [[0], [1]]


def test_an_empty_batch_has_no_micro_batches():
    assert token_budget_split(masks([1], [1]).select([]), 8) == []


def test_per_row_results_come_back_in_the_batchs_row_order():
    batch = masks([2, 1, 3, 1], [5, 1, 2, 4])
    seen: list[int] = []

    def response_tokens(micro: Batch) -> torch.Tensor:
        seen.append(micro.size)
        return micro.tensors["response_mask"].sum(dim=1)

    result = per_row(response_tokens, batch, micro_batch_size=3, max_tokens=10)
    torch.testing.assert_close(result, torch.tensor([5.0, 1.0, 2.0, 4.0]))
    assert by_length(batch).tolist() == [1, 2, 3, 0] and seen == [2, 1, 1]
    # [1, 2]: 2 x (3 + 2) = 10; with row 3: 3 x (3 + 4) = 21; [3]: 5, with row 0: 2 x (2 + 5) = 14


def training_batch(vocab: int) -> Batch:
    """Eight rollout rows whose response lengths differ by up to 9x, one fully masked,
    with old log-probs, reference log-probs and advantages."""
    batch = rollout_batch([3, 5, 1, 4, 2, 6, 2, 3], [9, 1, 4, 2, 0, 7, 3, 1], prompt_width=7, response_width=11,
                          vocab=vocab)
    generator = torch.Generator().manual_seed(1)
    mask = batch.tensors["response_mask"]
    noise = lambda: -1 - torch.rand(mask.shape, generator=generator)  # noqa: E731
    advantages = torch.randn(batch.size, 1, generator=generator).expand_as(mask).contiguous()
    return batch.with_columns(old_logprobs=noise() * mask, ref_logprobs=noise() * mask, advantages=advantages * mask)


def trained(mode: str, update: dict, batch: Batch) -> tuple[dict[str, float], list[torch.Tensor]]:
    """One optimizer step of a trainer on the tiny model: its stats and the gradient it accumulated."""
    trainer = Trainer("trainer-0", TrainerConfig(
        model="unused", update={"mini_batch_size": batch.size, **update}, optim={"grad_clip": None},
        policy_loss={"loss_agg_mode": mode, "clip_ratio_low": 0.1, "clip_ratio_high": 0.1}, entropy_coef=0.01,
    ))
    try:
        trainer.model = tiny_model().train()
        trainer.optimization = Optimization.build(trainer.model, trainer.config.optim)
        stats = trainer._train(Train(batch, step=0, temperature=0.9, kl_coef=0.1, kl_estimator="k3"))
    finally:
        trainer.compute.shutdown()
    return stats, [parameter.grad.clone() for parameter in trainer.model.parameters()]


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_the_gradient_and_stats_under_a_token_budget_are_those_of_the_whole_mini_batch(mode: str):
    batch = training_batch(tiny_model().config.vocab_size)
    whole_stats, whole_gradient = trained(mode, {"micro_batch_size": batch.size}, batch)
    # 12 padded tokens: micro-batches of 2, 2, 1, 1, 1 rows, and the row of 6 + 7 tokens alone over the budget
    budget_stats, budget_gradient = trained(mode, {"max_tokens_per_micro_batch": 12}, batch)
    for budgeted, whole in zip(budget_gradient, whole_gradient):
        torch.testing.assert_close(budgeted, whole, rtol=1e-4, atol=1e-6)
    assert budget_stats.keys() == whole_stats.keys()
    for name, value in whole_stats.items():
        assert budget_stats[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_the_logged_kl_loss_under_a_token_budget_is_the_whole_mini_batchs(mode: str):
    batch = training_batch(tiny_model().config.vocab_size)
    whole_stats, _ = trained(mode, {"micro_batch_size": batch.size}, batch)
    budget_stats, _ = trained(mode, {"max_tokens_per_micro_batch": 12}, batch)
    assert budget_stats["train/kl_loss"] == pytest.approx(whole_stats["train/kl_loss"], rel=1e-4)


def test_padding_micro_batches_of_a_rank_that_cut_fewer_add_nothing_to_the_gradient_or_the_stats():
    """With several FSDP ranks a rank runs padding micro-batches up to the most any rank
    cut (roles.update): they must leave its gradient and its numbers as they were."""
    batch = training_batch(tiny_model().config.vocab_size)
    request = Train(batch, step=0, temperature=0.9, kl_coef=0.1, kl_estimator="k3")
    outcomes = []
    for padding in (0, 3):
        trainer = Trainer("trainer-0", TrainerConfig(model="unused", update={"mini_batch_size": 8, "max_tokens_per_micro_batch": 12},
                                                     optim={"grad_clip": None}, entropy_coef=0.01))
        try:
            trainer.model = tiny_model().train()
            trainer.optimization = Optimization.build(trainer.model, trainer.config.optim)
            losses: list[float] = []

            def loss(micro: MicroBatch) -> MicroBatchLoss:
                losses.append(micro.token_share)
                return trainer._micro_batch_loss(micro, request)

            stats = accumulate_gradient(trainer.optimization, batch.select(by_length(batch)), 8, loss, max_tokens=12,
                                        group_count=lambda count: count + padding)  # noqa: B023 - called at once
        finally:
            trainer.compute.shutdown()
        outcomes.append((stats, [parameter.grad.clone() for parameter in trainer.model.parameters()], losses))
    (stats, gradient, losses), (padded_stats, padded_gradient, padded_losses) = outcomes
    assert len(losses) == 6 and padded_losses == losses + [0.0, 0.0, 0.0]  # three forwards more, of no weight
    for padded, plain in zip(padded_gradient, gradient):
        torch.testing.assert_close(padded, plain, rtol=0, atol=0)
    assert padded_stats == stats


def test_the_trainers_micro_batches_stay_within_the_budget():
    batch = training_batch(tiny_model().config.vocab_size)
    sizes: list[int] = []
    trainer = Trainer("trainer-0", TrainerConfig(model="unused", update={"mini_batch_size": 8, "max_tokens_per_micro_batch": 12}))
    try:
        trainer.model = tiny_model().train()
        trainer.model.register_forward_pre_hook(
            lambda _, args, kwargs: sizes.append(kwargs["input_ids"].numel()), with_kwargs=True)
        trainer.optimization = Optimization.build(trainer.model, trainer.config.optim)
        trainer._train(Train(batch, step=0, temperature=1.0, kl_coef=0.0))
    finally:
        trainer.compute.shutdown()
    assert sorted(sizes) == [6, 6, 8, 12, 12, 13]  # the 13: one row of 6 + 7 tokens, alone over the budget


def test_old_and_reference_logprobs_under_a_budget_are_each_rows_fixed_row_ones():
    model = tiny_model().eval()
    batch = training_batch(model.config.vocab_size)
    by_rows = rollout_logprobs(model, batch, 0.8, micro_batch_size=3, device="cpu")
    by_tokens = rollout_logprobs(model, batch, 0.8, micro_batch_size=3, device="cpu", max_tokens_per_micro_batch=20)
    torch.testing.assert_close(by_tokens, by_rows, rtol=1e-5, atol=1e-5)
    reference = Reference("reference-0", ReferenceConfig(model="unused", max_tokens_per_micro_batch=20))
    trainer = Trainer("trainer-0", TrainerConfig(model="unused", update={"max_tokens_per_micro_batch": 20}))
    try:
        reference.model = trainer.model = model
        assert torch.equal(reference._logprobs(batch, 0.8), trainer._logprobs(batch, 0.8))
    finally:
        reference.compute.shutdown()
        trainer.compute.shutdown()


def test_critic_values_and_gradient_under_a_budget_are_those_of_fixed_rows():
    batch = training_batch(tiny_model().config.vocab_size)
    batch = batch.with_columns(values=batch.tensors["old_logprobs"] * 0.3, returns=batch.tensors["ref_logprobs"] * 0.5)
    results = []
    for update in ({"micro_batch_size": 8}, {"max_tokens_per_micro_batch": 20}):
        critic = Critic("critic-0", CriticConfig(model="unused", update={"mini_batch_size": 8, **update}, optim={"grad_clip": None}))
        try:
            torch.manual_seed(0)
            critic.model = ValueModel(tiny_model()).train()
            torch.nn.init.normal_(critic.model.head.weight, std=0.1)  # zero-initialised: values would all be 0
            critic.optimization = Optimization.build(critic.model, critic.config.optim)
            values = critic._values(batch)
            stats = critic._train(Train(batch, step=0, temperature=1.0, kl_coef=0.0))
            results.append((values, stats, [copy.deepcopy(p.grad) for p in critic.model.parameters()]))
        finally:
            critic.compute.shutdown()
    (values, stats, gradient), (budget_values, budget_stats, budget_gradient) = results
    assert values.abs().sum() > 0
    torch.testing.assert_close(budget_values, values, rtol=1e-5, atol=1e-6)
    assert budget_stats == pytest.approx(stats, rel=1e-4)
    for budgeted, whole in zip(budget_gradient, gradient):
        torch.testing.assert_close(budgeted, whole, rtol=1e-4, atol=1e-6)

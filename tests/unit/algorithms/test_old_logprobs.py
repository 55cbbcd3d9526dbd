"""roles/algorithms/old_logprobs.py: one rule for which log-probs are "old"."""

import pytest
import torch

from roles.algorithms import (
    check_old_logprob_source,
    old_logprob_source,
    optimizer_steps_per_update,
    policy_logprobs_before_update,
    ppo_policy_loss,
    select_old_logprobs,
)


@pytest.mark.parametrize(
    ("rows", "ranks", "ppo_epochs", "mini_batch_size", "steps"),
    [
        (32, 1, 1, 32, 1),   # one mini-batch holds the batch
        (32, 1, 1, 64, 1),   # a mini-batch larger than the batch
        (32, 1, 1, 16, 2),
        (33, 1, 1, 16, 3),   # the last mini-batch is short
        (32, 1, 2, 32, 2),   # a second epoch is a second step
        (32, 2, 1, 32, 1),   # 16 rows per rank, mini-batches of 16 per rank
        (31, 2, 1, 32, 1),   # 16 rows per rank after padding
        (32, 4, 1, 2, 8),    # mini_batch_size below ranks: one row per rank and step
    ],
)
def test_optimizer_steps_per_update_count_epochs_times_mini_batches_per_rank(rows, ranks, ppo_epochs, mini_batch_size, steps):
    assert optimizer_steps_per_update(rows, ranks, ppo_epochs, mini_batch_size) == steps


def test_optimizer_steps_refuse_an_empty_batch_naming_the_field():
    with pytest.raises(ValueError, match="rows"):
        optimizer_steps_per_update(0, 1, 1, 32)


@pytest.mark.parametrize(
    ("recompute", "optimizer_steps", "source"),
    [
        ("auto", 1, "current"),      # on-policy single step: the ratio is exactly 1, no extra forward
        ("auto", 2, "recomputed"),   # a second step sees changed weights: old must be taken before
        ("always", 1, "recomputed"),
        ("always", 4, "recomputed"),
        ("never", 1, "behavior"),
        ("never", 4, "behavior"),
    ],
)
def test_old_logprob_source_skips_the_recomputation_only_for_a_single_optimizer_step(recompute, optimizer_steps, source):
    assert old_logprob_source(recompute, optimizer_steps) == source


def test_an_unknown_setting_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="recompute_logprobs"):
        old_logprob_source("sometimes", 1)  # type: ignore[arg-type]


def test_the_update_refuses_its_own_logprobs_as_old_ones_over_several_optimizer_steps():
    check_old_logprob_source("current", 1)
    check_old_logprob_source("recomputed", 4)
    check_old_logprob_source("behavior", 4)
    with pytest.raises(ValueError, match="takes 2 optimizer steps .* set the controller's recompute_logprobs to always"):
        check_old_logprob_source("current", 2)


COLUMNS = {"old_logprobs": torch.tensor([[-1.0, -2.0]]), "behavior_logprobs": torch.tensor([[-1.5, -2.5]])}


def test_current_old_logprobs_are_the_updates_own_detached_so_the_ratio_is_exactly_one():
    current = torch.tensor([[-0.7, -0.2]], requires_grad=True)
    old = select_old_logprobs("current", COLUMNS, current)

    assert not old.requires_grad
    torch.testing.assert_close(old, current.detach())
    loss = ppo_policy_loss(current, old, torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0, 1.0]]))
    assert float(loss.clip_fraction) == 0.0 and float(loss.approx_kl) == 0.0
    loss.loss.backward()  # the gradient of ratio * A at ratio 1 is A: -(1, -1) / 2 per token, token-mean
    torch.testing.assert_close(current.grad, torch.tensor([[-0.5, 0.5]]))


@pytest.mark.parametrize(("source", "column"), [("recomputed", "old_logprobs"), ("behavior", "behavior_logprobs")])
def test_recomputed_and_behavior_old_logprobs_are_the_batch_columns(source, column):
    assert select_old_logprobs(source, COLUMNS, torch.zeros(1, 2)) is COLUMNS[column]


def test_a_missing_column_is_named():
    with pytest.raises(ValueError, match="old_logprobs"):
        select_old_logprobs("recomputed", {"behavior_logprobs": torch.zeros(1, 2)}, torch.zeros(1, 2))


@pytest.mark.parametrize(("source", "column"), [("recomputed", "old_logprobs"), ("current", "behavior_logprobs"),
                                                ("behavior", "behavior_logprobs")])
def test_the_controller_takes_the_recomputed_logprobs_else_the_generators_for_the_kl(source, column):
    assert policy_logprobs_before_update(source, COLUMNS) is COLUMNS[column]

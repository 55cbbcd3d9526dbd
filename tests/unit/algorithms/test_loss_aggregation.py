"""Loss aggregation modes on sequences of unequal length."""

import pytest
import torch
from torch.testing import assert_close

from roles.algorithms import LOSS_AGG_MODES, PolicyLossConfig, aggregate_loss, micro_batch_weight

NAN = float("nan")
# Row 0: three valid tokens with losses 1, 2, 3; row 1: one valid token with loss 4.
# Padding holds NaN to show it never leaks into the result.
PER_TOKEN_LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, NAN]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 2.5),  # (1 + 2 + 3 + 4) / 4 tokens
        ("seq-mean-token-sum", 5.0),  # (6 + 4) / 2 sequences
        ("seq-mean-token-mean", 3.0),  # (6/3 + 4/1) / 2
        ("seq-mean-token-sum-norm", 10.0 / 6.0),  # (6/3 + 4/3) / 2, normaliser T = 3
        ("token-sum", 10.0),  # 1 + 2 + 3 + 4
        ("token-sum-norm", 10.0 / 3.0),  # (1 + 2 + 3 + 4) / T, no mean over the 2 sequences (verl)
    ],
)
def test_aggregation_modes_weigh_short_and_long_sequences_differently(mode, expected):
    assert_close(aggregate_loss(PER_TOKEN_LOSS, MASK, mode), torch.tensor(expected))


def test_sum_norm_uses_the_given_loss_scale_factor():
    # (6/10 + 4/10) / 2 = 0.5
    loss = aggregate_loss(PER_TOKEN_LOSS, MASK, "seq-mean-token-sum-norm", loss_scale_factor=10.0)

    assert_close(loss, torch.tensor(0.5))


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_sequence_without_valid_tokens_is_left_out(mode):
    with_empty_row = torch.cat([PER_TOKEN_LOSS, torch.full((1, 3), 7.0)])
    mask_with_empty_row = torch.cat([MASK, torch.zeros(1, 3, dtype=MASK.dtype)])

    loss = aggregate_loss(with_empty_row, mask_with_empty_row, mode)

    assert_close(loss, aggregate_loss(PER_TOKEN_LOSS, MASK, mode))


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_batch_without_valid_tokens_gives_zero_loss_and_zero_gradient(mode):
    per_token_loss = torch.ones(2, 3, requires_grad=True)

    loss = aggregate_loss(per_token_loss, torch.zeros(2, 3), mode)
    loss.backward()

    assert_close(loss, torch.tensor(0.0))
    assert_close(per_token_loss.grad, torch.zeros(2, 3))


def test_token_mean_gives_every_valid_token_the_same_gradient_weight():
    per_token_loss = torch.zeros(2, 3, requires_grad=True)

    aggregate_loss(per_token_loss, MASK, "token-mean").backward()

    assert_close(per_token_loss.grad, torch.tensor([[0.25, 0.25, 0.25], [0.25, 0.0, 0.0]]))


def test_seq_mean_token_mean_gives_every_sequence_the_same_gradient_weight():
    per_token_loss = torch.zeros(2, 3, requires_grad=True)

    aggregate_loss(per_token_loss, MASK, "seq-mean-token-mean").backward()

    assert_close(per_token_loss.grad, torch.tensor([[1 / 6, 1 / 6, 1 / 6], [0.5, 0.0, 0.0]]))


def test_token_sum_norm_uses_the_given_loss_scale_factor():
    # (1 + 2 + 3 + 4) / 4 = 2.5
    loss = aggregate_loss(PER_TOKEN_LOSS, MASK, "token-sum-norm", loss_scale_factor=4.0)

    assert_close(loss, torch.tensor(2.5))


def test_token_sum_gives_every_valid_token_a_gradient_of_one():
    per_token_loss = torch.zeros(2, 3, requires_grad=True)

    aggregate_loss(per_token_loss, MASK, "token-sum").backward()

    assert_close(per_token_loss.grad, torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("mode", ["token-sum", "token-sum-norm"])
def test_policy_loss_config_accepts_the_token_sum_modes(mode):
    assert PolicyLossConfig(loss_agg_mode=mode).model_dump()["loss_agg_mode"] == mode


# A mini-batch of four rows split into micro-batches of rows [0, 1] and [2, 3]; row 3 has no valid token.
MINI_LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [5.0, 6.0, 0.0], [9.0, 9.0, 9.0]])
MINI_MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize(
    ("mode", "first_weight", "second_weight"),
    [
        ("token-mean", 4 / 6, 2 / 6),  # valid tokens: 4 and 2 of 6
        ("seq-mean-token-sum", 2 / 3, 1 / 3),  # sequences with a valid token: 2 and 1 of 3
        ("seq-mean-token-mean", 2 / 3, 1 / 3),
        ("seq-mean-token-sum-norm", 2 / 3, 1 / 3),
        ("token-sum", 1.0, 1.0),
        ("token-sum-norm", 1.0, 1.0),
    ],
)
def test_micro_batch_weights_add_up_to_the_mini_batch_loss(mode, first_weight, second_weight):
    first = micro_batch_weight(mode, MINI_MASK[:2], MINI_MASK)
    second = micro_batch_weight(mode, MINI_MASK[2:], MINI_MASK)

    accumulated = first * aggregate_loss(MINI_LOSS[:2], MINI_MASK[:2], mode) + second * aggregate_loss(
        MINI_LOSS[2:], MINI_MASK[2:], mode
    )

    assert (first, second) == pytest.approx((first_weight, second_weight))
    assert_close(accumulated, aggregate_loss(MINI_LOSS, MINI_MASK, mode))


def test_micro_batch_weight_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown loss_agg_mode 'mean'"):
        micro_batch_weight("mean", MASK, MASK)


def test_unknown_mode_lists_the_known_modes():
    with pytest.raises(ValueError, match="unknown loss_agg_mode 'mean'; choose one of 'token-mean'"):
        aggregate_loss(PER_TOKEN_LOSS, MASK, "mean")


def test_non_positive_loss_scale_factor_is_rejected():
    with pytest.raises(ValueError, match="loss_scale_factor must be > 0"):
        aggregate_loss(PER_TOKEN_LOSS, MASK, "seq-mean-token-sum-norm", loss_scale_factor=0.0)

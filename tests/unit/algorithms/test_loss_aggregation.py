"""Loss aggregation modes on sequences of unequal length."""

import pytest
import torch
from torch.testing import assert_close

from roles.algorithms import LOSS_AGG_MODES, aggregate_loss

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


def test_unknown_mode_lists_the_known_modes():
    with pytest.raises(ValueError, match="unknown loss_agg_mode 'mean'; choose one of 'token-mean'"):
        aggregate_loss(PER_TOKEN_LOSS, MASK, "mean")


def test_non_positive_loss_scale_factor_is_rejected():
    with pytest.raises(ValueError, match="loss_scale_factor must be > 0"):
        aggregate_loss(PER_TOKEN_LOSS, MASK, "seq-mean-token-sum-norm", loss_scale_factor=0.0)

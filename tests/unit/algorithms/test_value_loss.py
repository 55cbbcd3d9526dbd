"""Clipped value loss for the critic."""

import pytest
import torch
from torch.testing import assert_close

from roles.algorithms import ValueLossConfig, clipped_value_loss

# eps_v = 0.2:
#   t  V    V_old  R    V_clip  (V-R)^2  (V_clip-R)^2  0.5*max
#   0  1.0  0.5    1.2  0.7     0.04     0.25          0.125  clipped
#   1  0.6  0.5    0.0  0.6     0.36     0.36          0.18
#   2  0.0  0.5    0.0  0.3     0.0      0.09          0.045  clipped
#   3  2.0  0.5    1.0  0.7     1.0      0.09          0.5
VALUES = torch.tensor([[1.0, 0.6, 0.0, 2.0]])
OLD_VALUES = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
RETURNS = torch.tensor([[1.2, 0.0, 0.0, 1.0]])
MASK = torch.ones(1, 4)


def test_value_loss_matches_hand_worked_example():
    # (0.125 + 0.18 + 0.045 + 0.5) / 4 = 0.2125; 2 of 4 tokens clipped
    values = VALUES.clone().requires_grad_(True)

    result = clipped_value_loss(values, OLD_VALUES, RETURNS, MASK, clip_range_value=0.2)
    result.loss.backward()

    assert_close(result.loss, torch.tensor(0.2125))
    assert_close(result.clip_fraction, torch.tensor(0.5))
    # unclipped tokens: (V - R) / 4 -> [0, 0.15, 0, 0.25]; clipped tokens: 0
    assert_close(values.grad, torch.tensor([[0.0, 0.15, 0.0, 0.25]]))


def test_value_loss_without_clipping_is_half_squared_error():
    # 0.5 * (0.04 + 0.36 + 0 + 1) / 4 = 0.175
    result = clipped_value_loss(VALUES, OLD_VALUES, RETURNS, MASK, clip_range_value=None)

    assert_close(result.loss, torch.tensor(0.175))
    assert_close(result.clip_fraction, torch.tensor(0.0))


def test_value_loss_ignores_masked_tokens():
    # only tokens 1 and 3 count: (0.18 + 0.5) / 2 = 0.34, neither clipped
    mask = torch.tensor([[0, 1, 0, 1]])

    result = clipped_value_loss(VALUES, OLD_VALUES, RETURNS, mask)

    assert_close(result.loss, torch.tensor(0.34))
    assert_close(result.clip_fraction, torch.tensor(0.0))


def test_value_loss_config_applies_as_keyword_arguments():
    config = ValueLossConfig(clip_range_value=0.2, loss_agg_mode="seq-mean-token-sum")

    result = clipped_value_loss(VALUES, OLD_VALUES, RETURNS, MASK, **config.model_dump())

    assert_close(result.loss, torch.tensor(0.85))


def test_non_positive_value_clip_range_is_rejected():
    with pytest.raises(ValueError, match="clip_range_value must be > 0, got 0.0; pass None"):
        clipped_value_loss(VALUES, OLD_VALUES, RETURNS, MASK, clip_range_value=0.0)

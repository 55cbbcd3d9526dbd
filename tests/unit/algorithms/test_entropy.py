"""Entropy and token log-probs from logits, stable for -inf and huge logits."""

import math

import pytest
import torch
from torch.testing import assert_close

from roles.algorithms import entropy_from_logits, logprobs_from_logits

# logits [0, ln 3] -> p = [0.25, 0.75]
# H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335
TWO_TOKEN_ENTROPY = 0.562335


def test_entropy_matches_hand_worked_example():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])

    assert_close(entropy_from_logits(logits), torch.tensor([[TWO_TOKEN_ENTROPY]]))


def test_entropy_of_uniform_logits_is_log_vocabulary_size():
    assert_close(entropy_from_logits(torch.zeros(2, 3, 8)), torch.full((2, 3), math.log(8.0)))


def test_entropy_matches_torch_categorical_on_random_logits():
    logits = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))

    expected = torch.distributions.Categorical(logits=logits).entropy()

    assert_close(entropy_from_logits(logits), expected)


def test_entropy_ignores_minus_inf_logits_in_value_and_gradient():
    logits = torch.tensor([[[0.0, math.log(3.0), float("-inf")]]], requires_grad=True)

    entropy = entropy_from_logits(logits)
    entropy.sum().backward()

    assert_close(entropy, torch.tensor([[TWO_TOKEN_ENTROPY]]))
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0, 2] == 0.0


def test_entropy_is_finite_for_huge_logits():
    logits = torch.tensor([[[1e30, 0.0], [3e38, 3e38]]], requires_grad=True)

    entropy = entropy_from_logits(logits)
    entropy.sum().backward()

    assert_close(entropy, torch.tensor([[0.0, math.log(2.0)]]))
    assert torch.isfinite(logits.grad).all()


def test_entropy_is_shift_invariant_for_large_offsets():
    logits = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.float64)

    assert_close(entropy_from_logits(logits + 1e6), entropy_from_logits(logits))


def test_logprobs_match_hand_worked_example():
    # log p(token 1) = ln 0.75 = -0.287682; log p(token 0) = ln 0.25 = -1.386294
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])

    logprobs = logprobs_from_logits(logits, torch.tensor([[1, 0]]))

    assert_close(logprobs, torch.tensor([[-0.287682, -1.386294]]))


def test_logprobs_equal_log_softmax_gather():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=generator) * 10
    token_ids = torch.randint(0, 11, (3, 5), generator=generator)

    expected = torch.log_softmax(logits, dim=-1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)

    assert_close(logprobs_from_logits(logits, token_ids), expected)


def test_logprobs_are_finite_for_huge_logits_and_minus_inf_elsewhere():
    logits = torch.tensor([[[1e30, 0.0, float("-inf")]]])

    assert_close(logprobs_from_logits(logits, torch.tensor([[0]])), torch.tensor([[0.0]]))


def test_logprobs_reject_token_ids_of_the_wrong_shape():
    with pytest.raises(ValueError, match="token_ids must have shape \\(1, 2\\)"):
        logprobs_from_logits(torch.zeros(1, 2, 4), torch.zeros(1, 3, dtype=torch.long))


def test_logprobs_reject_float_token_ids():
    with pytest.raises(ValueError, match="token_ids must be integers"):
        logprobs_from_logits(torch.zeros(1, 2, 4), torch.zeros(1, 2))

"""The KL numbers the controller logs (k1 and k3, per token and per sequence) and the share
of groups without reward variance, on hand-computed batches."""

import math

import pytest
import torch

from roles.algorithms import kl_metrics, zero_variance_share


def test_kl_metrics_per_token_and_per_sequence_by_hand() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, 0.0, 0.0]])
    reference = torch.tensor([[-1.5, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    k3_first, k3_second = math.exp(-0.5) + 0.5 - 1, math.exp(0.5) - 0.5 - 1  # r - log r - 1, log r = ref - policy
    numbers = kl_metrics(logprobs, reference, mask)
    assert numbers["train/kl_k1_token"] == pytest.approx((0.5 + 0.0 - 0.5) / 3)
    assert numbers["train/kl_k1_seq"] == pytest.approx((0.5 + -0.5) / 2)
    assert numbers["train/kl_k3_token"] == pytest.approx((k3_first + k3_second) / 3)
    assert numbers["train/kl_k3_seq"] == pytest.approx((k3_first + k3_second) / 2)


def test_per_sequence_kl_is_per_token_kl_times_the_length() -> None:
    logprobs = torch.full((4, 10), -1.0)
    reference = torch.full((4, 10), -1.2)
    numbers = kl_metrics(logprobs, reference, torch.ones(4, 10))
    assert numbers["train/kl_k1_seq"] == pytest.approx(10 * numbers["train/kl_k1_token"])
    assert numbers["train/kl_k3_seq"] == pytest.approx(10 * numbers["train/kl_k3_token"])


def test_kl_metrics_ignore_padding_and_refuse_mismatched_shapes() -> None:
    padded = kl_metrics(torch.tensor([[-1.0, 5.0]]), torch.tensor([[-2.0, -9.0]]), torch.tensor([[1, 0]]))
    assert padded["train/kl_k1_token"] == pytest.approx(1.0) and padded["train/kl_k1_seq"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        kl_metrics(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


def test_identical_policies_have_zero_kl() -> None:
    logprobs = torch.log(torch.rand(3, 5))
    assert all(value == 0.0 for value in kl_metrics(logprobs, logprobs.clone(), torch.ones(3, 5)).values())


def test_zero_variance_share_counts_groups_of_two_or_more() -> None:
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 0.5, 0.5, 0.5])
    groups = ["a", "a", "b", "b", "c", "d", "d", "d"]
    assert zero_variance_share(scores, groups) == pytest.approx(2 / 3)  # a and d of a, b, d; c has one sample
    assert zero_variance_share(torch.tensor([3.0]), ["x"]) == 0.0
    assert zero_variance_share(torch.tensor([]), []) == 0.0
    with pytest.raises(ValueError, match="one id per sequence"):
        zero_variance_share(torch.tensor([1.0, 2.0]), ["a"])

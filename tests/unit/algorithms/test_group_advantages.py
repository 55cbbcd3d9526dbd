"""GRPO, Dr.GRPO and RLOO: group-relative advantages from per-response scores."""

import pytest
import torch
from torch.testing import assert_close

from roles.algorithms import compute_grpo_advantages, compute_rloo_advantages, group_stats

# Six responses in three groups, not contiguous, given as string ids:
#   group "a": rows 0, 2, 4 with scores [2, 1, 3]  mean 2
#   group "b": rows 1, 3    with scores [0, 5]     mean 2.5
#   group "c": row 5        with score  4          (size 1)
SCORES = torch.tensor([2.0, 0.0, 1.0, 5.0, 3.0, 4.0])
GROUP_IDS = ["a", "b", "a", "b", "a", "c"]
ONE_TOKEN = torch.ones(6, 1)


def test_grpo_matches_hand_worked_example_with_unbiased_std():
    # a: deviations [0, -1, 1], unbiased std = sqrt(2 / 2) = 1         -> [0, -1, 1]
    # b: deviations [-2.5, 2.5], unbiased std = sqrt(12.5 / 1) = 3.5355 -> [-0.70711, 0.70711]
    # c: size 1 -> 0
    advantages = compute_grpo_advantages(SCORES, GROUP_IDS, ONE_TOKEN)

    assert_close(advantages[:, 0], torch.tensor([0.0, -0.70711, -1.0, 0.70711, 1.0, 0.0]), rtol=0, atol=1e-5)


def test_grpo_with_biased_std_divides_by_group_size():
    # a: std = sqrt(2 / 3) = 0.81650 -> [0, -1.22474, 1.22474];  b: std = 2.5 -> [-1, 1]
    advantages = compute_grpo_advantages(SCORES, GROUP_IDS, ONE_TOKEN, unbiased_std=False)

    assert_close(advantages[:, 0], torch.tensor([0.0, -1.0, -1.22474, 1.0, 1.22474, 0.0]), rtol=0, atol=1e-5)


def test_drgrpo_only_subtracts_the_group_mean():
    advantages = compute_grpo_advantages(SCORES, GROUP_IDS, ONE_TOKEN, normalize_by_std=False)

    assert_close(advantages[:, 0], torch.tensor([0.0, -2.5, -1.0, 2.5, 1.0, 0.0]))


def test_grpo_accepts_integer_tensor_group_ids():
    from_strings = compute_grpo_advantages(SCORES, GROUP_IDS, ONE_TOKEN)

    from_tensor = compute_grpo_advantages(SCORES, torch.tensor([7, 3, 7, 3, 7, 11]), ONE_TOKEN)

    assert_close(from_tensor, from_strings)


def test_grpo_group_of_equal_scores_gets_zero_not_nan():
    advantages = compute_grpo_advantages(torch.tensor([1.0, 1.0, 1.0]), [0, 0, 0], torch.ones(3, 2))

    assert_close(advantages, torch.zeros(3, 2))


def test_grpo_broadcasts_to_valid_tokens_only():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])

    advantages = compute_grpo_advantages(torch.tensor([1.0, 0.0]), [0, 0], mask)

    # std = sqrt(0.5) = 0.70711, deviations +-0.5 -> +-0.70711
    assert_close(advantages, torch.tensor([[0.70711, 0.70711, 0.0], [-0.70711, 0.0, 0.0]]), rtol=0, atol=1e-5)


def test_rloo_matches_hand_worked_example():
    # a: 2 - (1+3)/2 = 0;  1 - (2+3)/2 = -1.5;  3 - (2+1)/2 = 1.5
    # b: 0 - 5 = -5;  5 - 0 = 5;  c: size 1 -> 0
    advantages = compute_rloo_advantages(SCORES, GROUP_IDS, ONE_TOKEN)

    assert_close(advantages[:, 0], torch.tensor([0.0, -5.0, -1.5, 5.0, 1.5, 0.0]))


def test_rloo_equals_scaled_mean_centring():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(8, generator=generator)
    group_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])

    advantages = compute_rloo_advantages(scores, group_ids, torch.ones(8, 1))

    group_means = scores.view(2, 4).mean(dim=1).repeat_interleave(4)
    assert_close(advantages[:, 0], 4.0 / 3.0 * (scores - group_means))


def test_one_sample_group_gets_zero_by_default_in_every_group_estimator():
    # Row 5 (score 4) is alone in group "c".
    assert float(compute_grpo_advantages(SCORES, GROUP_IDS, ONE_TOKEN)[5, 0]) == 0.0
    assert float(compute_grpo_advantages(SCORES, GROUP_IDS, ONE_TOKEN, normalize_by_std=False)[5, 0]) == 0.0
    assert float(compute_rloo_advantages(SCORES, GROUP_IDS, ONE_TOKEN)[5, 0]) == 0.0


def test_grpo_one_sample_group_as_verl_is_the_score_over_one_plus_eps():
    # c: mean taken as 0, std as 1 -> 4 / (1 + 1e-6); groups a and b as in the unbiased example
    advantages = compute_grpo_advantages(SCORES, GROUP_IDS, ONE_TOKEN, one_sample_group="score")

    expected = torch.tensor([0.0, -0.70711, -1.0, 0.70711, 1.0, 4.0 / (1.0 + 1e-6)])
    assert_close(advantages[:, 0], expected, rtol=0, atol=1e-5)


def test_drgrpo_one_sample_group_as_verl_is_the_raw_score():
    advantages = compute_grpo_advantages(
        SCORES, GROUP_IDS, ONE_TOKEN, normalize_by_std=False, one_sample_group="score"
    )

    assert_close(advantages[:, 0], torch.tensor([0.0, -2.5, -1.0, 2.5, 1.0, 4.0]))


def test_rloo_one_sample_group_as_verl_has_a_zero_baseline():
    advantages = compute_rloo_advantages(SCORES, GROUP_IDS, ONE_TOKEN, one_sample_group="score")

    assert_close(advantages[:, 0], torch.tensor([0.0, -5.0, -1.5, 5.0, 1.5, 4.0]))


def test_one_sample_group_score_is_copied_onto_valid_tokens_only():
    # Two lone responses with scores 3 and -1; Dr.GRPO keeps the scores.
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])

    advantages = compute_grpo_advantages(
        torch.tensor([3.0, -1.0]), ["p", "q"], mask, normalize_by_std=False, one_sample_group="score"
    )

    assert_close(advantages, torch.tensor([[3.0, 3.0, 0.0], [-1.0, 0.0, 0.0]]))


def test_unknown_one_sample_group_choice_lists_the_choices():
    with pytest.raises(ValueError, match="one_sample_group must be one of 'zero', 'score', got 'mean'"):
        compute_rloo_advantages(SCORES, GROUP_IDS, ONE_TOKEN, one_sample_group="mean")


def test_group_stats_reports_each_rows_group():
    stats = group_stats(SCORES, GROUP_IDS)

    assert_close(stats.mean, torch.tensor([2.0, 2.5, 2.0, 2.5, 2.0, 4.0]))
    assert_close(stats.size, torch.tensor([3.0, 2.0, 3.0, 2.0, 3.0, 1.0]))
    assert_close(stats.std[5], torch.tensor(0.0))


def test_group_ids_of_wrong_length_are_rejected_with_the_counts():
    with pytest.raises(ValueError, match="group_ids has 2 entries but there are 6 scores"):
        compute_grpo_advantages(SCORES, ["a", "b"], ONE_TOKEN)


def test_float_group_ids_are_rejected():
    with pytest.raises(ValueError, match="group_ids must be an integer tensor"):
        compute_grpo_advantages(SCORES, torch.zeros(6), ONE_TOKEN)


def test_scores_with_a_token_dimension_are_rejected():
    with pytest.raises(ValueError, match="scores must have shape \\[B\\]"):
        compute_rloo_advantages(torch.zeros(6, 1), GROUP_IDS, ONE_TOKEN)

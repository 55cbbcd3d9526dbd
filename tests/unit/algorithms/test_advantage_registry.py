"""Choosing an advantage estimator by name or by config."""

import math

import pytest
import torch
import yaml
from pydantic import TypeAdapter, ValidationError
from torch.testing import assert_close

from roles.algorithms import (
    ADVANTAGE_ESTIMATOR_NAMES,
    AdvantageConfig,
    AdvantageInputs,
    GAEConfig,
    GRPOConfig,
    compute_advantages,
    compute_gae,
    compute_grpo_advantages,
    compute_reinforce_plus_plus_advantages,
    compute_reinforce_plus_plus_baseline_advantages,
    compute_rloo_advantages,
    get_advantage_estimator,
    reads_token_rewards,
)

CONFIG_ADAPTER = TypeAdapter(AdvantageConfig)

# Two prompts, two responses each; outcome scores sit on the last valid token.
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
REWARDS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
INPUTS = AdvantageInputs(token_level_rewards=REWARDS, response_mask=MASK, group_ids=[0, 0, 1, 1])


def test_every_documented_name_is_registered():
    assert ADVANTAGE_ESTIMATOR_NAMES == (
        "gae",
        "grpo",
        "drgrpo",
        "rloo",
        "reinforce_plus_plus",
        "reinforce_plus_plus_baseline",
    )
    for name in ADVANTAGE_ESTIMATOR_NAMES:
        assert callable(get_advantage_estimator(name))


def test_unknown_estimator_name_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'; choose one of 'gae', 'grpo'"):
        get_advantage_estimator("ppo")


def test_grpo_config_scores_are_the_masked_sum_of_token_rewards():
    result = compute_advantages(GRPOConfig(), INPUTS)

    expected = compute_grpo_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), [0, 0, 1, 1], MASK)
    assert_close(result.advantages, expected)
    assert_close(result.returns, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))


def test_grpo_config_reads_per_response_scores_as_given():
    # group 0: scores 1, 0 -> mean 0.5, unbiased std 0.70711 -> +-0.70711; group 1: equal -> 0
    inputs = AdvantageInputs(scores=torch.tensor([1.0, 0.0, 1.0, 1.0]), response_mask=MASK, group_ids=[0, 0, 1, 1])

    result = compute_advantages(GRPOConfig(), inputs)

    assert_close(result.advantages, torch.tensor([[0.70711, 0.70711, 0.70711], [-0.70711, -0.70711, 0.0],
                                                  [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), rtol=0, atol=1e-5)
    assert_close(result.returns, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))


def test_token_level_estimator_places_per_response_scores_on_the_last_valid_token():
    # scores [1, 0, 1, 1] on the last valid tokens are REWARDS: the same result as from REWARDS
    config = CONFIG_ADAPTER.validate_python({"type": "reinforce_plus_plus", "gamma": 0.5})
    from_scores = AdvantageInputs(scores=torch.tensor([1.0, 0.0, 1.0, 1.0]), response_mask=MASK)

    result = compute_advantages(config, from_scores)

    assert_close(result.returns[0], torch.tensor([0.25, 0.5, 1.0]))
    assert_close(result.advantages, compute_advantages(config, INPUTS).advantages)


@pytest.mark.parametrize(("name", "token_level"), [("gae", True), ("reinforce_plus_plus", True), ("grpo", False),
                                                   ("drgrpo", False), ("rloo", False),
                                                   ("reinforce_plus_plus_baseline", False)])
def test_reads_token_rewards_only_for_the_recursions_over_tokens(name, token_level):
    assert reads_token_rewards(name) is token_level


def test_advantage_inputs_take_the_rewards_in_exactly_one_form():
    with pytest.raises(ValueError, match="scores \\[B\\] or token_level_rewards \\[B, T\\], got both"):
        AdvantageInputs(scores=torch.zeros(4), token_level_rewards=REWARDS, response_mask=MASK)
    with pytest.raises(ValueError, match="got neither"):
        AdvantageInputs(response_mask=MASK)


def test_gae_config_defaults_to_whitened_advantages():
    values = torch.full((4, 3), 0.5)
    inputs = AdvantageInputs(token_level_rewards=REWARDS, response_mask=MASK, values=values)

    result = compute_advantages(GAEConfig(gamma=0.9, lam=0.95), inputs)

    expected = compute_gae(REWARDS, values, MASK, gamma=0.9, lam=0.95, whiten=True)
    assert_close(result.advantages, expected.advantages)
    assert_close(result.returns, expected.returns)


def test_each_group_config_runs_its_own_estimator_on_the_summed_scores():
    # scores = masked row sums of REWARDS = [1, 0, 1, 1], groups [0, 0, 1, 1]
    # drgrpo: [0.5, -0.5, 0, 0]; rloo: [1, -1, 0, 0] (group 0: 1 - 0, 0 - 1; group 1 equal)
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0])
    group_ids = [0, 0, 1, 1]
    expected_by_name = {
        "drgrpo": compute_grpo_advantages(scores, group_ids, MASK, normalize_by_std=False),
        "rloo": compute_rloo_advantages(scores, group_ids, MASK),
        "reinforce_plus_plus_baseline": compute_reinforce_plus_plus_baseline_advantages(scores, group_ids, MASK),
    }
    assert_close(expected_by_name["drgrpo"][:, 0], torch.tensor([0.5, -0.5, 0.0, 0.0]))
    assert_close(expected_by_name["rloo"][:, 0], torch.tensor([1.0, -1.0, 0.0, 0.0]))

    for name, expected in expected_by_name.items():
        result = compute_advantages(CONFIG_ADAPTER.validate_python({"type": name}), INPUTS)
        assert_close(result.advantages, expected, msg=name)


def test_reinforce_plus_plus_config_passes_its_discount():
    config = CONFIG_ADAPTER.validate_python({"type": "reinforce_plus_plus", "gamma": 0.5})

    result = compute_advantages(config, INPUTS)

    expected = compute_reinforce_plus_plus_advantages(REWARDS, MASK, gamma=0.5)
    assert_close(result.advantages, expected.advantages)
    # row 0: rewards [0, 0, 1] -> G = [0.25, 0.5, 1]
    assert_close(result.returns[0], torch.tensor([0.25, 0.5, 1.0]))


# Three prompts: "a" sampled twice (scores 1, 0), "b" and "c" once (scores 2, -1); one token each.
LONE_INPUTS = AdvantageInputs(
    token_level_rewards=torch.tensor([[1.0], [0.0], [2.0], [-1.0]]),
    response_mask=torch.ones(4, 1),
    group_ids=["a", "a", "b", "c"],
)


@pytest.mark.parametrize(
    ("name", "expected_by_default", "expected_as_verl"),
    [
        # group a: +-0.5 / unbiased std 0.70711 = +-0.70711; lone rows: 0, or score / (1 + 1e-6)
        ("grpo", [0.70711, -0.70711, 0.0, 0.0], [0.70711, -0.70711, 2.0, -1.0]),
        ("drgrpo", [0.5, -0.5, 0.0, 0.0], [0.5, -0.5, 2.0, -1.0]),
        ("rloo", [1.0, -1.0, 0.0, 0.0], [1.0, -1.0, 2.0, -1.0]),
    ],
)
def test_group_config_one_sample_group_choice_reaches_the_estimator(name, expected_by_default, expected_as_verl):
    by_default = compute_advantages(CONFIG_ADAPTER.validate_python({"type": name}), LONE_INPUTS)
    as_verl = compute_advantages(
        CONFIG_ADAPTER.validate_python({"type": name, "one_sample_group": "score"}), LONE_INPUTS
    )

    assert_close(by_default.advantages[:, 0], torch.tensor(expected_by_default), rtol=0, atol=1e-5)
    assert_close(as_verl.advantages[:, 0], torch.tensor(expected_as_verl), rtol=0, atol=1e-5)


def test_reinforce_plus_plus_baseline_config_passes_both_verl_choices():
    # c = [0.5, -0.5, 2, -1] (lone rows keep their scores): mean 0.25,
    # deviations [0.25, -0.75, 1.75, -1.25], sum of squares 5.25, unbiased variance 5.25 / 3
    config = CONFIG_ADAPTER.validate_python(
        {"type": "reinforce_plus_plus_baseline", "unbiased_std": True, "one_sample_group": "score"}
    )

    result = compute_advantages(config, LONE_INPUTS)

    assert_close(result.advantages[:, 0], torch.tensor([0.25, -0.75, 1.75, -1.25]) / math.sqrt(5.25 / 3.0))


@pytest.mark.parametrize("name", ["gae", "reinforce_plus_plus"])
def test_whitening_config_passes_unbiased_std(name):
    # gamma = lam = 1 and V = 0: both whiten the reward-to-go [[1], [0], [2], [-1]]:
    # mean 0.5, deviations [0.5, -0.5, 1.5, -1.5], sum of squares 5.0, unbiased variance 5 / 3
    inputs = AdvantageInputs(token_level_rewards=LONE_INPUTS.token_level_rewards, response_mask=LONE_INPUTS.response_mask,
                             values=torch.zeros(4, 1))
    config = CONFIG_ADAPTER.validate_python({"type": name, "unbiased_std": True})

    result = compute_advantages(config, inputs)

    assert_close(result.advantages[:, 0], torch.tensor([0.5, -0.5, 1.5, -1.5]) / math.sqrt(5.0 / 3.0))


def test_advantage_config_rejects_an_unknown_one_sample_group_choice():
    with pytest.raises(ValidationError, match="'zero' or 'score'"):
        CONFIG_ADAPTER.validate_python({"type": "rloo", "one_sample_group": "mean"})


def test_gae_without_values_says_a_critic_is_needed():
    with pytest.raises(ValueError, match="'gae' needs values"):
        compute_advantages(GAEConfig(), INPUTS)


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo", "reinforce_plus_plus_baseline"])
def test_group_estimators_without_group_ids_name_the_missing_argument(name):
    inputs = AdvantageInputs(token_level_rewards=REWARDS, response_mask=MASK)

    with pytest.raises(ValueError, match=f"{name!r} needs group_ids"):
        compute_advantages(CONFIG_ADAPTER.validate_python({"type": name}), inputs)


@pytest.mark.parametrize("name", ["drgrpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"])
def test_each_config_runs_and_zeroes_masked_tokens(name):
    result = compute_advantages(CONFIG_ADAPTER.validate_python({"type": name}), INPUTS)

    assert result.advantages.shape == (4, 3)
    assert_close(result.advantages[~MASK.bool()], torch.zeros(3))
    assert result.advantages.abs().sum() > 0


def test_advantage_config_is_chosen_by_type_from_yaml():
    document = yaml.safe_load(
        """
        advantage:
          type: grpo
          unbiased_std: false
        """
    )

    config = CONFIG_ADAPTER.validate_python(document["advantage"])

    assert config == GRPOConfig(unbiased_std=False)


def test_advantage_config_rejects_a_parameter_of_another_estimator():
    with pytest.raises(ValidationError, match="lam"):
        CONFIG_ADAPTER.validate_python({"type": "grpo", "lam": 0.95})


def test_advantage_config_rejects_an_unknown_type():
    with pytest.raises(ValidationError, match="'gae', 'grpo', 'drgrpo', 'rloo'"):
        CONFIG_ADAPTER.validate_python({"type": "ppo"})


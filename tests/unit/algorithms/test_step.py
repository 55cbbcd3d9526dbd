"""One step's math on hand-computed tensors: KL, rewards, advantages, the update plan."""

import math

import pytest
import torch
from torch.testing import assert_close

from protocols.batch import Batch
from protocols.rl import Column, RolloutCorrection
from roles.algorithms import (
    DrGRPOConfig,
    GAEConfig,
    GRPOConfig,
    KLConfig,
    MaskedISConfig,
    NoRolloutCorrectionConfig,
    UpdatePlan,
    drop_stale_groups,
    measured_kl_estimator,
    plan_update,
    prepare_training_batch,
    rollout_correction_setting,
    staleness,
)

# Two prompts ("a", "b"), two responses each, up to three tokens.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
SCORES = torch.tensor([1.0, 0.0, 1.0, 1.0])
BEHAVIOR = torch.full((4, 3), -1.0)
# log pi - log pi_ref = 0.1, 0.2, 0.3, 0.4 on every token of rows 0..3
REFERENCE = BEHAVIOR - torch.tensor([[0.1], [0.2], [0.3], [0.4]])
ON_POLICY = UpdatePlan(old_logprobs="behavior", rollout_correction=None, kl_loss_estimator=None)


def scored_batch(**extra: torch.Tensor) -> Batch:
    return Batch(
        tensors={Column.RESPONSE_MASK: MASK, Column.SCORE: SCORES, Column.BEHAVIOR_LOGPROBS: BEHAVIOR,
                 Column.REF_LOGPROBS: REFERENCE, **extra},
        columns={Column.UID: ["a", "a", "b", "b"]},
    )


def test_grpo_with_the_kl_as_a_loss_takes_the_scores_as_they_are():
    kl = KLConfig(usage="loss", estimator="k1+")

    batch, metrics = prepare_training_batch(scored_batch(), ON_POLICY, GRPOConfig(), kl, kl_coef=0.5)

    # group a: scores 1, 0 -> mean 0.5, unbiased std 0.70711 -> +-0.70711; group b: equal scores -> 0
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert_close(batch.tensors[Column.ADVANTAGES], torch.tensor([[a, a, a], [-a, -a, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert_close(batch.tensors[Column.RETURNS], SCORES[:, None] * MASK)
    # k1 (the value of k1+): row means 0.1 .. 0.4 -> 0.25; token mean 2.2 / 9; row sums 0.3, 0.4, 0.3, 1.2
    assert metrics["train/kl_div"] == pytest.approx(0.25)
    assert metrics["train/kl_k1_token"] == pytest.approx(2.2 / 9)
    assert metrics["train/kl_k1_seq"] == pytest.approx(0.55)
    k3 = [math.exp(-x) + x - 1 for x in (0.1, 0.2, 0.3, 0.4)]
    assert metrics["train/kl_k3_token"] == pytest.approx((3 * k3[0] + 2 * k3[1] + k3[2] + 3 * k3[3]) / 9)
    assert metrics["train/zero_variance_groups"] == 0.5
    assert metrics["train/advantages_mean"] == pytest.approx((3 - 2) * a / 9)
    assert metrics["train/reward"] == 0.75
    assert metrics["train/reward_std"] == pytest.approx(0.5)  # unbiased: sqrt((3 * 0.25^2 + 0.75^2) / 3)
    assert metrics["train/response_length"] == 2.25
    assert metrics["train/response_length_max"] == 3.0
    assert metrics["train/kl_coef"] == 0.5


def test_kl_in_the_reward_is_a_k1_penalty_summed_over_each_response():
    # the configured k3 is the loss's estimator: in the reward the penalty is k1
    kl = KLConfig(usage="reward", estimator="k3")

    batch, metrics = prepare_training_batch(scored_batch(), ON_POLICY, DrGRPOConfig(), kl, kl_coef=0.5)

    # r = score - 0.5 * sum_t k1 = [1 - 0.15, 0 - 0.2, 1 - 0.15, 1 - 0.6] = [0.85, -0.2, 0.85, 0.4]
    # Dr.GRPO: minus the group mean (0.325, 0.625) -> [0.525, -0.525, 0.225, -0.225]
    advantages = torch.tensor([0.525, -0.525, 0.225, -0.225])[:, None] * MASK
    assert_close(batch.tensors[Column.ADVANTAGES], advantages)
    assert_close(batch.tensors[Column.RETURNS], torch.tensor([0.85, -0.2, 0.85, 0.4])[:, None] * MASK)
    assert metrics["train/kl_div"] == pytest.approx(0.25)  # k1, not k3
    assert metrics["train/reward"] == 0.75  # the reward role's scores, before the penalty


def test_gae_reads_token_rewards_with_the_kl_penalty_on_every_token():
    # one response of two tokens (score 1, k1 0.2 and 0.4), one of one token (score 0, k1 0.2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    behavior = torch.full((2, 2), -1.0)
    batch = Batch(
        tensors={Column.RESPONSE_MASK: mask, Column.SCORE: torch.tensor([1.0, 0.0]), Column.BEHAVIOR_LOGPROBS: behavior,
                 Column.REF_LOGPROBS: behavior - torch.tensor([[0.2, 0.4], [0.2, 0.0]]),
                 Column.VALUES: torch.tensor([[0.5, 0.25], [0.3, 9.0]])},
        columns={Column.UID: ["a", "b"]},
    )
    config = GAEConfig(gamma=1.0, lam=1.0, whiten=False)

    result, metrics = prepare_training_batch(batch, ON_POLICY, config, KLConfig(usage="reward"), kl_coef=0.5)

    # token rewards [[-0.1, 1 - 0.2], [-0.1, pad]]; reward-to-go G = [[0.7, 0.8], [-0.1, 0]]
    # lam = 1: A = G - V = [[0.2, 0.55], [-0.4, 0]] (the padding's value 9 is never read)
    assert_close(result.tensors[Column.ADVANTAGES], torch.tensor([[0.2, 0.55], [-0.4, 0.0]]))
    assert_close(result.tensors[Column.RETURNS], torch.tensor([[0.7, 0.8], [-0.1, 0.0]]))
    assert metrics["train/kl_div"] == pytest.approx((0.3 + 0.2) / 2)
    assert metrics["train/zero_variance_groups"] == 0.0  # no group has two samples


def test_gae_without_a_kl_in_the_reward_puts_the_score_on_the_last_valid_token():
    batch = scored_batch(**{Column.VALUES: torch.zeros(4, 3)})

    result, _ = prepare_training_batch(batch, ON_POLICY, GAEConfig(whiten=False), KLConfig(usage="loss"), kl_coef=0.5)

    # gamma = lam = 1, V = 0: every valid token's advantage is its response's score
    assert_close(result.tensors[Column.ADVANTAGES], SCORES[:, None] * MASK)


def test_the_kl_is_measured_from_the_recomputed_old_logprobs_when_the_plan_takes_them():
    old = REFERENCE + 1.0  # k1 = 1 on every token; the generator's would give 0.1 .. 0.4
    plan = UpdatePlan(old_logprobs="recomputed", rollout_correction=None, kl_loss_estimator="k3")

    _, metrics = prepare_training_batch(scored_batch(**{Column.OLD_LOGPROBS: old}), plan, GRPOConfig(),
                                        KLConfig(usage="loss", estimator="k1"), kl_coef=0.0)

    assert metrics["train/kl_div"] == pytest.approx(1.0)


def test_without_a_reference_no_kl_is_logged_and_a_kl_usage_is_refused():
    batch = scored_batch().without(Column.REF_LOGPROBS)

    _, metrics = prepare_training_batch(batch, ON_POLICY, GRPOConfig(), KLConfig(usage="none"), kl_coef=0.0)
    assert not any(name.startswith("train/kl_") and name != "train/kl_coef" for name in metrics)
    with pytest.raises(ValueError, match="kl.usage is 'loss' but the batch has no 'ref_logprobs' column"):
        prepare_training_batch(batch, ON_POLICY, GRPOConfig(), KLConfig(usage="loss"), kl_coef=0.0)


ASYNC_DEFAULT = RolloutCorrection("truncate", "token", "geometric_mean", 0.0, 2.0, "all")


@pytest.mark.parametrize(
    ("recompute", "optimizer_steps", "asynchronous", "expected"),
    [
        ("always", 4, True, UpdatePlan("recomputed", ASYNC_DEFAULT, "k3")),
        ("auto", 1, True, UpdatePlan("current", ASYNC_DEFAULT, "k3")),
        ("auto", 3, True, UpdatePlan("recomputed", ASYNC_DEFAULT, "k3")),
        # the generator's own log-probs as the old ones: the PPO ratio is the correction, no weights
        ("never", None, True, UpdatePlan("behavior", None, "k3")),
        ("always", None, False, UpdatePlan("recomputed", None, "k3")),
        ("auto", 1, False, UpdatePlan("current", None, "k3")),
    ],
)
def test_without_a_written_correction_async_mode_truncates_the_token_ratio_at_the_importance_cap(
    recompute, optimizer_steps, asynchronous, expected
):
    correction = rollout_correction_setting(None, asynchronous, importance_cap=2.0)
    assert plan_update(KLConfig(), recompute, optimizer_steps, correction) == expected


def test_a_written_correction_applies_in_sync_mode_and_replaces_the_async_default():
    written = MaskedISConfig(level="sequence", upper=1.5, lower=0.5)
    correction = rollout_correction_setting(written, asynchronous=True, importance_cap=2.0)

    plan = plan_update(KLConfig(), "always", None, correction)

    assert plan.rollout_correction == RolloutCorrection("mask", "sequence", "geometric_mean", 0.5, 1.5, "all")
    assert plan_update(KLConfig(), "always", None, rollout_correction_setting(written, False, 2.0)) == plan
    assert plan_update(KLConfig(), "always", None, NoRolloutCorrectionConfig()).rollout_correction is None


def test_a_mask_that_leaves_the_denominator_makes_auto_recompute_the_old_logprobs():
    kept = MaskedISConfig(denominator="kept")

    assert plan_update(KLConfig(), "auto", 1, kept).old_logprobs == "recomputed"
    assert plan_update(KLConfig(), "auto", 1, MaskedISConfig()).old_logprobs == "current"


def test_plan_adds_a_kl_loss_only_when_the_kl_is_a_loss():
    none = NoRolloutCorrectionConfig()
    assert plan_update(KLConfig(usage="loss", estimator="k3+"), "always", None, none).kl_loss_estimator == "k3+"
    assert plan_update(KLConfig(usage="reward"), "always", None, none).kl_loss_estimator is None
    assert plan_update(KLConfig(usage="none"), "always", None, none).kl_loss_estimator is None


def test_plan_with_auto_needs_the_optimizer_steps():
    with pytest.raises(ValueError, match="recompute_logprobs: auto needs the trainer's optimizer steps"):
        plan_update(KLConfig(), "auto", None, NoRolloutCorrectionConfig())


@pytest.mark.parametrize(
    ("usage", "estimator", "measured"),
    [("reward", "k3", "k1"), ("reward", "k1", "k1"), ("loss", "k3+", "k3"), ("loss", "k2", "k2"), ("none", "abs+", "abs")],
)
def test_measured_kl_is_k1_in_the_reward_and_the_base_of_the_loss_estimator(usage, estimator, measured):
    assert measured_kl_estimator(KLConfig(usage=usage, estimator=estimator)) == measured


def test_async_drops_whole_groups_with_a_row_too_many_versions_behind():
    # policy at version 3; rows sampled by 3, 1 (group a), 2, 2 (group b), -1 (the initial weights, group c)
    batch = Batch(tensors={Column.VERSION: torch.tensor([3, 1, 2, 2, -1])}, columns={Column.UID: ["a", "a", "b", "b", "c"]})

    assert_close(staleness(batch.tensors[Column.VERSION], policy_version=3), torch.tensor([0, 2, 1, 1, 3]))
    kept, dropped = drop_stale_groups(batch, policy_version=3, max_staleness=1)

    assert kept.columns[Column.UID] == ["b", "b"] and dropped == 3

"""roles/algorithms/rollout_correction.py on hand-computed tensors: truncated and masked
importance sampling per token and per sequence, and the mismatch metrics."""

import math

import pytest
import torch
from pydantic import ValidationError
from torch.testing import assert_close

from protocols.rl import RolloutCorrection
from roles.algorithms import (
    MaskedISConfig,
    NoRolloutCorrectionConfig,
    TruncatedISConfig,
    mismatch_metrics,
    ppo_policy_loss,
    rollout_correction_plan,
    rollout_correction_setting,
    rollout_correction_weights,
)
from roles.algorithms.rollout_correction import sequence_log_ratio, sequence_share
from roles.controller_config import ControllerConfig

LN2, LN3 = math.log(2.0), math.log(3.0)


def correction(mode="truncate", level="token", sequence_ratio="geometric_mean", lower=0.0, upper=2.0,
               denominator="all") -> RolloutCorrection:
    return RolloutCorrection(mode, level, sequence_ratio, lower, upper, denominator)


def test_token_truncation_is_min_of_the_ratio_old_over_behavior_and_the_cap_on_valid_tokens():
    old = torch.tensor([[0.0, -1.0, 5.0]])
    behavior = torch.tensor([[-0.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])

    result = rollout_correction_weights(old, behavior, mask, correction(upper=1.5))

    # exp(0.5) = 1.6487 is cut to 1.5; exp(0) = 1; the padding token weighs 0
    assert_close(result.weights, torch.tensor([[1.5, 1.0, 0.0]]))
    assert_close(result.token_ratio, torch.tensor([[math.exp(0.5), 1.0, 0.0]]))
    assert result.truncated.tolist() == [[True, False, False]]
    assert_close(result.kept, mask)


def test_token_mask_keeps_the_ratio_inside_the_band_and_zeroes_the_rest():
    old = torch.tensor([[LN3, 0.0, -math.log(4.0)]])  # ratios 3, 1, 0.25 against a behavior of 0

    result = rollout_correction_weights(old, torch.zeros(1, 3), torch.ones(1, 3), correction("mask", lower=0.5))

    assert_close(result.weights, torch.tensor([[0.0, 1.0, 0.0]]))
    assert_close(result.kept, torch.tensor([[0.0, 1.0, 0.0]]))
    assert not result.truncated.any()


# row 0: log ratios ln 2, 0 (geometric mean sqrt 2, product 2); row 1: -ln 2 and padding that holds garbage
SEQ_OLD = torch.tensor([[LN2, 0.0], [-LN2, 100.0]])
SEQ_MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize(
    ("sequence_ratio", "expected_weights", "truncated"),
    [
        ("geometric_mean", [[math.sqrt(2.0)] * 2, [0.5, 0.0]], [[False, False], [False, False]]),
        ("product", [[1.5, 1.5], [0.5, 0.0]], [[True, True], [False, False]]),
    ],
)
def test_sequence_truncation_puts_one_ratio_per_response_on_its_tokens(sequence_ratio, expected_weights, truncated):
    plan = correction(level="sequence", sequence_ratio=sequence_ratio, upper=1.5)

    result = rollout_correction_weights(SEQ_OLD, torch.zeros(2, 2), SEQ_MASK, plan)

    assert_close(result.weights, torch.tensor(expected_weights))
    assert result.truncated.tolist() == truncated


def test_sequence_mask_drops_whole_responses_product_sooner_than_geometric_mean():
    geometric = rollout_correction_weights(SEQ_OLD, torch.zeros(2, 2), SEQ_MASK,
                                           correction("mask", "sequence", lower=0.4, upper=1.5))
    product = rollout_correction_weights(SEQ_OLD, torch.zeros(2, 2), SEQ_MASK,
                                         correction("mask", "sequence", "product", lower=0.4, upper=1.5))

    assert_close(geometric.kept, SEQ_MASK)  # sqrt 2 and 0.5 are inside [0.4, 1.5]
    assert_close(geometric.weights, torch.tensor([[math.sqrt(2.0)] * 2, [0.5, 0.0]]))
    assert_close(product.kept, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))  # 2 is above 1.5: the row goes whole
    assert_close(product.weights, torch.tensor([[0.0, 0.0], [0.5, 0.0]]))


def test_a_one_token_response_has_the_same_ratio_as_geometric_mean_product_and_token():
    old, behavior, mask = torch.tensor([[LN3, 0.0]]), torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])

    for level, sequence_ratio in (("token", "geometric_mean"), ("sequence", "geometric_mean"), ("sequence", "product")):
        weights = rollout_correction_weights(old, behavior, mask, correction(level=level, sequence_ratio=sequence_ratio,
                                                                              upper=10.0)).weights
        assert_close(weights, torch.tensor([[3.0, 0.0]]))


def test_a_response_without_valid_tokens_has_sequence_ratio_one_and_no_weight():
    log_ratio, mask = torch.zeros(1, 2), torch.zeros(1, 2)

    assert_close(sequence_log_ratio(log_ratio, mask, "geometric_mean"), torch.tensor([0.0]))
    result = rollout_correction_weights(torch.ones(1, 2), torch.zeros(1, 2), mask, correction(level="sequence"))
    assert_close(result.weights, torch.zeros(1, 2))


def test_a_ratio_equal_to_a_threshold_is_kept_and_not_counted_as_truncated():
    old = torch.tensor([[0.0, 0.1, -0.2], [LN2, -LN2, 0.0]])  # row 1's geometric mean is exactly 1
    behavior, mask = torch.zeros(2, 3), torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])

    token = rollout_correction_weights(old, behavior, mask, correction("mask", lower=1.0, upper=1.0))
    sequence = rollout_correction_weights(old, behavior, mask, correction("mask", "sequence", lower=1.0, upper=1.0))
    truncated = rollout_correction_weights(old, behavior, mask, correction(upper=1.0))

    assert_close(token.kept, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert_close(sequence.kept, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    assert truncated.truncated.tolist() == [[False, True, False], [True, False, False]]


def test_an_all_masked_batch_gives_a_zero_policy_loss_and_gradient():
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[LN3, LN3]])  # ratio 3 everywhere, above the band
    mask = torch.ones(1, 2)
    result = rollout_correction_weights(old, torch.zeros(1, 2), mask, correction("mask", lower=0.5))

    loss = ppo_policy_loss(logprobs, logprobs.detach(), torch.tensor([[1.0, -1.0]]), mask,
                           importance_weights=result.weights).loss
    loss.backward()

    assert_close(result.kept, torch.zeros(1, 2))
    assert_close(loss.detach(), torch.tensor(0.0))
    assert logprobs.grad is not None
    assert_close(logprobs.grad, torch.zeros(1, 2))


def test_a_masked_token_stays_in_the_token_mean_denominator_with_a_zero_loss():
    logprobs = torch.zeros(1, 3, requires_grad=True)
    weights = torch.tensor([[1.0, 0.0, 1.0]])  # the middle token was masked

    loss = ppo_policy_loss(logprobs, logprobs.detach(), torch.tensor([[1.0, 5.0, 2.0]]), torch.ones(1, 3),
                           importance_weights=weights).loss

    # per-token loss -A * rho = -A at rho = 1: (-1 + 0 - 2) / 3 tokens
    assert_close(loss.detach(), torch.tensor(-1.0))


def test_weights_carry_no_gradient_to_the_policy():
    old = torch.tensor([[-0.2]], requires_grad=True)
    assert not rollout_correction_weights(old, torch.tensor([[-0.1]]), torch.ones(1, 1), correction()).weights.requires_grad


# ratios 2, 2 in row 0 and 0.5 in row 1; the padding holds garbage
METRIC_OLD = torch.tensor([[LN2, LN2], [-LN2, 7.0]])
METRIC_MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
K3_OF_2, K3_OF_HALF = 1.0 - LN2, LN2 - 0.5  # r - 1 - log r


def test_mismatch_metrics_are_kl_of_generator_to_trainer_and_the_ratio_distribution():
    metrics = mismatch_metrics(METRIC_OLD, torch.zeros(2, 2), METRIC_MASK, correction(upper=1.5)).merged()

    expected = {
        # k1 = log pi_behavior - log pi_old: -ln 2, -ln 2, ln 2
        "train/rollout_kl_k1_token": -LN2 / 3,
        "train/rollout_kl_k1_seq": (-2 * LN2 + LN2) / 2,
        "train/rollout_kl_k3_token": (2 * K3_OF_2 + K3_OF_HALF) / 3,
        "train/rollout_kl_k3_seq": (2 * K3_OF_2 + K3_OF_HALF) / 2,
        "train/rollout_ratio_mean": 4.5 / 3,
        "train/rollout_ratio_min": 0.5,
        "train/rollout_ratio_max": 2.0,
        "train/rollout_ratio_p05": 0.5 + 0.1 * 1.5,  # between the sorted 0.5 and 2 at rank 0.1
        "train/rollout_ratio_p50": 2.0,
        "train/rollout_ratio_p95": 2.0,
        "train/rollout_masked_share": 0.0,
        "train/rollout_truncated_share": 2 / 3,
    }
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name


def test_the_masked_share_counts_valid_tokens_outside_the_band():
    metrics = mismatch_metrics(METRIC_OLD, torch.zeros(2, 2), METRIC_MASK, correction("mask", lower=0.6, upper=2.0))

    assert metrics.token_means["train/rollout_masked_share"] == pytest.approx(1 / 3)
    assert metrics.token_means["train/rollout_truncated_share"] == 0.0


def test_without_a_correction_no_shares_are_logged_and_without_valid_tokens_no_extremes():
    metrics = mismatch_metrics(METRIC_OLD, torch.zeros(2, 2), torch.zeros(2, 2))

    assert "train/rollout_masked_share" not in metrics.token_means
    assert metrics.extremes == {}
    assert metrics.token_means["train/rollout_ratio_mean"] == 0.0


def test_micro_batch_means_weighted_by_their_shares_add_up_to_the_batchs():
    behavior, plan = torch.zeros(2, 2), correction(upper=1.5)
    whole = mismatch_metrics(METRIC_OLD, behavior, METRIC_MASK, plan)

    summed: dict[str, float] = {}
    for row in (0, 1):
        micro_mask = METRIC_MASK[row:row + 1]
        token_share = float(micro_mask.sum() / METRIC_MASK.sum())
        micro = mismatch_metrics(METRIC_OLD[row:row + 1], behavior[row:row + 1], micro_mask, plan)
        for name, value in micro.shares(token_share, sequence_share(micro_mask, METRIC_MASK)).items():
            summed[name] = summed.get(name, 0.0) + value

    assert summed == pytest.approx({**whole.token_means, **whole.sequence_means})


def test_settings_become_the_train_messages_correction():
    assert rollout_correction_plan(NoRolloutCorrectionConfig()) is None
    assert rollout_correction_plan(TruncatedISConfig(level="sequence", sequence_ratio="product", upper=3.0)) == \
        correction(level="sequence", sequence_ratio="product", upper=3.0)
    # a mask's lower end defaults to 1 / upper (verl's)
    assert rollout_correction_plan(MaskedISConfig(upper=4.0)) == correction("mask", lower=0.25, upper=4.0)


def test_an_empty_band_is_refused():
    with pytest.raises(ValidationError, match="lower .* is above upper"):
        MaskedISConfig(lower=2.0, upper=1.5)


def test_an_upper_bound_below_one_without_a_lower_is_refused_as_its_default_band_is_empty():
    with pytest.raises(ValidationError, match="upper .0.9. is below 1"):
        MaskedISConfig(upper=0.9)  # the default lower 1 / 0.9 = 1.11 would keep no ratio, not even 1
    assert MaskedISConfig(lower=0.5, upper=0.9).upper == 0.9 and MaskedISConfig(upper=1.0).lower is None


def test_unwritten_correction_means_token_truncation_at_the_importance_cap_in_async_mode_only():
    assert rollout_correction_setting(None, True, 3.0) == TruncatedISConfig(upper=3.0)
    assert rollout_correction_setting(None, False, 3.0) == NoRolloutCorrectionConfig()


def controller_config(**settings) -> ControllerConfig:
    return ControllerConfig(tokenizer="t", data={"files": ["x.jsonl"]}, steps=1, **settings)


def test_a_written_correction_survives_the_resolved_topology_that_writes_every_default():
    """The launcher writes each role's config with every default filled in, and the role
    reads that file: a default must not count as written."""
    for mode in ("sync", "async"):
        written = controller_config(mode=mode, rollout_correction={"type": "mask", "level": "sequence"})
        resolved = ControllerConfig.model_validate(written.model_dump(mode="json"))
        assert resolved.effective_rollout_correction == written.effective_rollout_correction
    unwritten = controller_config(mode="async")
    assert ControllerConfig.model_validate(unwritten.model_dump(mode="json")).effective_rollout_correction == (
        TruncatedISConfig(upper=2.0))


def test_the_controller_refuses_a_correction_with_importance_cap_or_without_old_logprobs():
    with pytest.raises(ValidationError, match="importance_cap and rollout_correction are both set"):
        controller_config(importance_cap=3.0, rollout_correction={"type": "truncate"})
    with pytest.raises(ValidationError, match="recompute_logprobs: never makes the old log-probs the generator's"):
        controller_config(recompute_logprobs="never", rollout_correction={"type": "mask", "level": "sequence"})
    assert controller_config(mode="async", importance_cap=3.0).effective_rollout_correction == TruncatedISConfig(upper=3.0)
    written = controller_config(mode="async", rollout_correction={"type": "none"})
    assert written.effective_rollout_correction == NoRolloutCorrectionConfig()

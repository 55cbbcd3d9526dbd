"""DAPO's overlong shaping on hand-computed tensors: the penalty's shape over the buffer,
truncated rows left out of the loss, and a scored batch through the step."""

import dataclasses
import math

import pytest
import torch
from pydantic import ValidationError
from torch.testing import assert_close

from protocols.batch import Batch
from protocols.rl import Column
from roles.algorithms import GRPOConfig, KLConfig, UpdatePlan, overlong_penalty, prepare_training_batch, shape_overlong
from roles.algorithms.overlong import OverlongConfig
from roles.controller_config import ControllerConfig

# the step reads the plan's old log-probs source only (and only with a reference): no weights, no KL loss
ON_POLICY = UpdatePlan(**{field.name: None for field in dataclasses.fields(UpdatePlan)} | {"old_logprobs": "behavior"})
NO_KL = KLConfig(usage="none")


def test_penalty_is_zero_up_to_the_buffer_then_linear_down_to_minus_one_at_the_limit():
    # L_max = 10, L_cache = 4: the buffer is (6, 10]
    lengths = torch.tensor([0, 6, 7, 8, 9, 10])

    penalty = overlong_penalty(lengths, max_length=10, buffer_tokens=4)

    assert_close(penalty, torch.tensor([0.0, 0.0, -0.25, -0.5, -0.75, -1.0]))


def test_penalty_beyond_the_limit_stays_at_minus_the_factor():
    penalty = overlong_penalty(torch.tensor([12, 8]), max_length=10, buffer_tokens=4, penalty=0.5)

    assert_close(penalty, torch.tensor([-0.5, -0.25]))


def test_an_empty_buffer_gives_no_penalty():
    assert_close(overlong_penalty(torch.tensor([0, 10]), max_length=10, buffer_tokens=0), torch.zeros(2))


def test_a_buffer_as_long_as_the_limit_penalises_from_the_first_token():
    assert_close(overlong_penalty(torch.tensor([0, 1, 4]), max_length=4, buffer_tokens=4), torch.tensor([0.0, -0.25, -1.0]))


def test_a_buffer_longer_than_the_limit_is_refused():
    with pytest.raises(ValueError, match="buffer_tokens"):
        overlong_penalty(torch.tensor([1]), max_length=4, buffer_tokens=5)


def test_shaping_adds_the_penalty_and_reports_its_mean_and_the_truncated_share():
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    config = OverlongConfig(buffer_tokens=2, penalty=2.0)

    shaped = shape_overlong(torch.tensor([1.0, 1.0, 0.0]), mask, ["length", "stop", "stop"], config, max_length=4)

    # lengths 4, 3, 1: penalties -2, -1, 0
    assert_close(shaped.scores, torch.tensor([-1.0, 0.0, 0.0]))
    assert shaped.response_mask is mask
    assert shaped.metrics == {"train/overlong_penalty_mean": pytest.approx(-1.0), "train/truncated_share": pytest.approx(1 / 3)}


def test_masking_truncated_rows_zeroes_only_their_response_mask():
    mask = torch.ones(3, 2)

    shaped = shape_overlong(torch.zeros(3), mask, ["stop", "length", "stop"], OverlongConfig(mask_truncated=True), None)

    assert_close(shaped.response_mask, torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))
    assert_close(shaped.scores, torch.zeros(3))
    assert shaped.metrics == {"train/truncated_share": pytest.approx(1 / 3)}


def test_masking_every_row_of_an_all_truncated_batch_leaves_an_empty_mask():
    shaped = shape_overlong(torch.ones(2), torch.ones(2, 3), ["length", "length"], OverlongConfig(mask_truncated=True), 3)

    assert_close(shaped.response_mask, torch.zeros(2, 3))
    assert shaped.metrics["train/truncated_share"] == 1.0


def test_an_empty_batch_gives_zero_metrics():
    config = OverlongConfig(buffer_tokens=2, mask_truncated=True)

    shaped = shape_overlong(torch.zeros(0), torch.zeros(0, 4), [], config, max_length=4)

    assert shaped.scores.shape == (0,) and shaped.response_mask.shape == (0, 4)
    assert shaped.metrics == {"train/overlong_penalty_mean": 0.0, "train/truncated_share": 0.0}


def test_masking_without_finish_reasons_is_refused_and_shaping_needs_the_limit():
    with pytest.raises(ValueError, match="finish_reason"):
        shape_overlong(torch.zeros(1), torch.ones(1, 1), None, OverlongConfig(mask_truncated=True), 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        shape_overlong(torch.zeros(1), torch.ones(1, 1), None, OverlongConfig(buffer_tokens=1), None)


# Two prompts, two responses each, lengths 4 (truncated), 3, 2, 1; L_max = 4, L_cache = 2.
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
SCORES = torch.tensor([1.0, 1.0, 1.0, 0.0])
FINISH = ["length", "stop", "stop", "stop"]


def scored_batch() -> Batch:
    return Batch(tensors={Column.RESPONSE_MASK: MASK, Column.SCORE: SCORES, Column.BEHAVIOR_LOGPROBS: torch.zeros(4, 4)},
                 columns={Column.UID: ["a", "a", "b", "b"], Column.FINISH_REASON: FINISH})


def test_the_step_computes_group_advantages_from_the_shaped_scores():
    overlong = OverlongConfig(buffer_tokens=2)

    batch, metrics = prepare_training_batch(scored_batch(), ON_POLICY, GRPOConfig(), NO_KL, 0.0, overlong, 4)

    # penalties -1, -0.5, 0, 0 -> shaped 0, 0.5, 1, 0: group a (equal raw scores) now has a signal
    # a: mean 0.25, unbiased std sqrt(0.125); b: mean 0.5, std sqrt(0.5); both give +-0.70711
    a = 0.25 / (math.sqrt(0.125) + 1e-6)
    b = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert_close(batch.tensors[Column.ADVANTAGES], torch.tensor([[-a] * 4, [a, a, a, 0.0], [b, b, 0.0, 0.0], [-b, 0.0, 0.0, 0.0]]))
    assert_close(batch.tensors[Column.RESPONSE_MASK], MASK)
    assert_close(batch.tensors[Column.SCORE], SCORES)  # the reward's own scores stay in the batch
    assert metrics["train/overlong_penalty_mean"] == pytest.approx(-0.375)
    assert metrics["train/truncated_share"] == pytest.approx(0.25)
    assert metrics["train/reward"] == pytest.approx(0.75)  # the reward's mean, before the penalty
    assert metrics["train/zero_variance_groups"] == 0.0
    assert metrics["train/response_length"] == pytest.approx(2.5)


def test_the_step_leaves_truncated_rows_out_of_the_loss_but_in_their_group_baseline():
    overlong = OverlongConfig(buffer_tokens=2, mask_truncated=True)

    batch, metrics = prepare_training_batch(scored_batch(), ON_POLICY, GRPOConfig(), NO_KL, 0.0, overlong, 4)

    a = 0.25 / (math.sqrt(0.125) + 1e-6)
    b = 0.5 / (math.sqrt(0.5) + 1e-6)
    update_mask = MASK.clone()
    update_mask[0] = 0.0
    assert_close(batch.tensors[Column.RESPONSE_MASK], update_mask)
    assert_close(batch.tensors[Column.ADVANTAGES], torch.tensor([[0.0] * 4, [a, a, a, 0.0], [b, b, 0.0, 0.0], [-b, 0.0, 0.0, 0.0]]))
    assert_close(batch.tensors[Column.RETURNS], torch.tensor([[0.0] * 4, [0.5, 0.5, 0.5, 0.0], [1.0, 1.0, 0.0, 0.0],
                                                              [0.0, 0.0, 0.0, 0.0]]))
    assert metrics["train/advantages_mean"] == pytest.approx((3 * a + 2 * b - b) / 6)
    assert metrics["train/response_length"] == pytest.approx(2.5)  # what was generated


def test_the_step_with_every_row_truncated_and_masked_trains_on_nothing():
    batch = scored_batch().with_columns(**{Column.FINISH_REASON: ["length"] * 4})

    batch, metrics = prepare_training_batch(batch, ON_POLICY, GRPOConfig(), NO_KL, 0.0, OverlongConfig(mask_truncated=True), 4)

    assert_close(batch.tensors[Column.RESPONSE_MASK], torch.zeros(4, 4))
    assert_close(batch.tensors[Column.ADVANTAGES], torch.zeros(4, 4))
    assert metrics["train/advantages_mean"] == 0.0 and metrics["train/truncated_share"] == 1.0


def test_overlong_settings_left_at_their_defaults_change_nothing():
    plain, plain_metrics = prepare_training_batch(scored_batch(), ON_POLICY, GRPOConfig(), NO_KL, 0.0)
    default, default_metrics = prepare_training_batch(scored_batch(), ON_POLICY, GRPOConfig(), NO_KL, 0.0, OverlongConfig(), 4)

    assert default_metrics == plain_metrics
    for name, tensor in plain.tensors.items():
        assert torch.equal(default.tensors[name], tensor)


def test_the_controller_refuses_a_buffer_longer_than_the_sampling_limit():
    with pytest.raises(ValidationError, match="overlong.buffer_tokens"):
        ControllerConfig(tokenizer="t", data={"files": ["x.jsonl"]}, steps=1, sampling={"n": 2, "max_new_tokens": 4},
                         overlong={"buffer_tokens": 5})

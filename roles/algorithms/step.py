"""One RL step's math: a scored rollout batch in, the training batch and its metrics out.

The controller (roles/controller.py) only moves messages; every decision of a step is
made here, in two pure calls around the parallel asks for scores and log-probs:

    plan = plan_update(kl, recompute_logprobs, optimizer_steps, rollout_correction)
        before the asks: which log-probs are "old" (so whether the trainer is asked for
        them), how the loss is weighted by pi_old / pi_behavior, whether the KL is a loss;
        the controller sends the plan in the `Train` message and the trainer follows it.
    step = prepare_training_batch(batch, plan, advantage, kl, kl_coef)
        after the asks: the KL, the rewards, the advantages, the step's numbers.

`prepare_training_batch`, in the notation of roles.algorithms.advantages (B responses of
T tokens, m the response mask, beta the KL coefficient):

1. KL to the reference, per token: kl[b, t] from the policy before the update (the
   recomputed old log-probs, else the generator's: `policy_logprobs_before_update`) and
   the reference's, with `measured_kl_estimator`. Logged as ``train/kl_div`` (mean over
   each response's tokens, then over responses; what an adaptive KL controller
   follows), and as k1 and k3 per token and per response (``train/kl_k1_token`` ...).
2. Rewards, in the form the estimator reads (`reads_token_rewards`):
   outcome estimators (GRPO, Dr.GRPO, RLOO, REINFORCE++-baseline) get the scores [B]
   as they are, or with ``kl.usage: reward`` r_b = score_b - beta * sum_t m kl[b, t];
   token-level estimators (GAE, REINFORCE++) get the score on the last valid token,
   and with ``kl.usage: reward`` minus beta * kl[b, t] on every valid token.
3. Advantages A and returns [B, T] by ``advantage.type``.

In async mode the controller first drops the groups with a row sampled too many
versions behind the policy (`drop_stale_groups`).

It reads the batch columns of protocols.rl.Column: ``response_mask``, ``score``,
``uid``, ``behavior_logprobs`` and, when present, ``ref_logprobs``, ``old_logprobs``,
``values``; it adds ``advantages`` and ``returns``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, cast

import torch

from protocols.batch import Batch
from protocols.rl import Column, OldLogProbs, RolloutCorrection
from roles.algorithms.advantage_registry import AdvantageConfig, AdvantageInputs, compute_advantages, reads_token_rewards
from roles.algorithms.aggregation import aggregate_loss
from roles.algorithms.groups import zero_variance_share
from roles.algorithms.kl import (
    KLConfig,
    KLEstimatorName,
    apply_kl_penalty,
    apply_kl_penalty_to_scores,
    compute_kl,
    kl_metrics,
)
from roles.algorithms.old_logprobs import RecomputeLogprobs, old_logprob_source, policy_logprobs_before_update
from roles.algorithms.overlong import OverlongConfig, OverlongShaping, shape_overlong
from roles.algorithms.rollout_correction import (
    RolloutCorrectionConfig,
    mismatch_metrics,
    needs_old_logprobs_before_update,
    rollout_correction_plan,
)


@dataclass(frozen=True)
class UpdatePlan:
    """How the trainer ranks update the policy on one batch: decided here, once, and
    carried to them by the `Train` message (its fields of the same names)."""

    old_logprobs: OldLogProbs
    """Where the PPO ratio's old log-probs come from (roles.algorithms.old_logprobs)."""
    rollout_correction: RolloutCorrection | None
    """Weight the policy loss by the ratio pi_old / pi_behavior, truncated or masked
    (roles.algorithms.rollout_correction); None: no weights."""
    kl_loss_estimator: KLEstimatorName | None
    """Add beta * aggregate(kl) to the policy loss with this estimator; None: no KL loss."""


def plan_update(kl: KLConfig, recompute: RecomputeLogprobs, optimizer_steps: int | None,
                correction: RolloutCorrectionConfig) -> UpdatePlan:
    """The update's plan for one batch.

    Old log-probs: `old_logprob_source` (``auto`` takes the update's own when the update
    is one optimizer step, unless the correction needs the old log-probs of a whole
    mini-batch before its update: a mask with ``denominator: kept``). Rollout correction:
    the controller's setting (`rollout_correction_setting`: when none is written, async
    mode truncates the token ratio at ``importance_cap``, the one correction troupe had
    before, and sync mode has none), except when the old log-probs are the generator's
    own (``behavior``): the ratio pi_old / pi_behavior is then 1, and the clipped PPO
    ratio against the sampling weights is itself the off-policy correction (the
    controller's settings refuse a written correction with ``recompute_logprobs: never``).
    KL loss: with ``kl.usage: loss``, by the configured estimator, a straight-through
    ``+`` one included (its gradient is what a loss needs: see `measured_kl_estimator`).

    Args:
        kl: the KL settings.
        recompute: the controller's ``recompute_logprobs`` setting.
        optimizer_steps: `optimizer_steps_per_update` of this batch on the trainer; None
            when unknown (then ``recompute`` must not be ``auto``).
        correction: the controller's rollout correction (`rollout_correction_setting`).
    """
    if optimizer_steps is None and recompute == "auto":
        raise ValueError("recompute_logprobs: auto needs the trainer's optimizer steps per update; ask the trainer "
                         "(DescribeUpdate) first, or set recompute_logprobs to always or never")
    old_logprobs = old_logprob_source(recompute, optimizer_steps or 0)
    rollout_correction = rollout_correction_plan(correction)
    if old_logprobs == "current" and needs_old_logprobs_before_update(rollout_correction):
        old_logprobs = "recomputed"
    return UpdatePlan(
        old_logprobs=old_logprobs,
        rollout_correction=rollout_correction if old_logprobs != "behavior" else None,
        kl_loss_estimator=kl.estimator if kl.usage == "loss" else None,
    )


def measured_kl_estimator(kl: KLConfig) -> KLEstimatorName:
    """The estimator of the per-token KL the step computes before the update: the one
    it logs as ``train/kl_div`` and, with ``kl.usage: reward``, subtracts from the rewards.

    In the reward it is always k1 = log pi - log pi_ref, whatever ``kl.estimator`` says
    (that setting is the loss's): the classic PPO penalty (InstructGPT), whose sum over
    a response is the response's log-ratio, so the return is an unbiased estimate of the
    KL-regularised objective. As a loss (or ``none``, logged only) it is the configured
    estimator; a straight-through name (``k1+``, ``k3+``, ``abs+``) has the value of its
    base estimator and the gradient of k2 (roles.algorithms.kl.straight_through_kl), and
    the step takes no gradient, so the base estimator is the one computed here.
    """
    if kl.usage == "reward":
        return "k1"
    return cast(KLEstimatorName, kl.estimator.removesuffix("+"))


class TrainingBatch(NamedTuple):
    """What `prepare_training_batch` returns."""

    batch: Batch
    """The rollout batch with ``advantages`` and ``returns`` [B, T] float32."""
    metrics: dict[str, float]
    """The step's numbers before training: ``train/reward``, ``train/reward_std``,
    ``train/kl_div`` and ``train/kl_{k1,k3}_{token,seq}`` (when a reference ran),
    ``train/zero_variance_groups``, ``train/advantages_mean``,
    ``train/response_length``, ``train/response_length_max``, ``train/kl_coef``; with
    overlong shaping ``train/overlong_penalty_mean`` and ``train/truncated_share``; with
    recomputed old log-probs the generator's mismatch to them, ``train/rollout_*``
    (roles.algorithms.rollout_correction.mismatch_metrics: means, min, max, quantiles)."""


def prepare_training_batch(batch: Batch, plan: UpdatePlan, advantage: AdvantageConfig, kl: KLConfig,
                           kl_coef: float, overlong: OverlongConfig | None = None,
                           max_response_length: int | None = None) -> TrainingBatch:
    """KL, rewards and advantages of a scored rollout batch (see the module docstring).

    Args:
        batch: B rows with ``response_mask`` [B, T], ``score`` [B], ``uid`` (the group of
            each row), ``behavior_logprobs`` [B, T], and as available ``ref_logprobs``,
            ``old_logprobs`` (the plan's ``recomputed``), ``values`` (GAE) [B, T].
        plan: `plan_update`'s decision for this batch.
        advantage: the estimator's config.
        kl: the KL settings.
        kl_coef: beta, the KL controller's current coefficient.
        overlong: DAPO's overlong shaping (roles.algorithms.overlong): the length penalty
            is added to the scores before the advantages (``train/reward`` stays the
            reward's own mean), and with ``mask_truncated`` the returned batch's
            ``response_mask`` is zeroed on truncated rows (their advantages and returns
            too). None or inactive: the batch as it is.
        max_response_length: L_max, the sampling's ``max_new_tokens`` (for the penalty).
    """
    tensors = batch.tensors
    mask, scores = tensors[Column.RESPONSE_MASK], tensors[Column.SCORE]
    metrics: dict[str, float] = {}
    token_kl = None
    if Column.REF_LOGPROBS in tensors:
        policy = policy_logprobs_before_update(plan.old_logprobs, tensors)
        token_kl = compute_kl(policy, tensors[Column.REF_LOGPROBS], measured_kl_estimator(kl))
        metrics["train/kl_div"] = float(aggregate_loss(token_kl, mask, "seq-mean-token-mean"))
        metrics.update(kl_metrics(policy, tensors[Column.REF_LOGPROBS], mask))
    elif kl.usage != "none":
        raise ValueError(f"kl.usage is {kl.usage!r} but the batch has no {Column.REF_LOGPROBS!r} column: ask the "
                         "reference role for them, or set kl.usage to none")
    if plan.old_logprobs == "recomputed" and Column.BEHAVIOR_LOGPROBS in tensors:  # generator vs trainer, whole batch
        metrics.update(mismatch_metrics(tensors[Column.OLD_LOGPROBS], tensors[Column.BEHAVIOR_LOGPROBS], mask,
                                        plan.rollout_correction).merged())
    uids = batch.columns[Column.UID]
    shaped = (shape_overlong(scores, mask, batch.columns.get(Column.FINISH_REASON), overlong, max_response_length)
              if overlong is not None and overlong.active else OverlongShaping(scores, mask, {}))
    metrics.update(shaped.metrics)
    metrics["train/zero_variance_groups"] = zero_variance_share(shaped.scores, uids)
    inputs = AdvantageInputs(response_mask=mask, values=tensors.get(Column.VALUES), group_ids=uids,
                             **_rewards(advantage, kl, shaped.scores, token_kl, mask, kl_coef))
    output = compute_advantages(advantage, inputs)
    valid = shaped.response_mask > 0
    lengths = mask.sum(dim=1)
    metrics.update({
        "train/advantages_mean": float(output.advantages[valid].mean()) if valid.any() else 0.0,
        "train/reward": float(scores.mean()),
        "train/reward_std": float(scores.std()) if batch.size > 1 else 0.0,
        "train/response_length": float(lengths.mean()),
        "train/response_length_max": float(lengths.max()),
        "train/kl_coef": kl_coef,
    })
    columns = {Column.ADVANTAGES: output.advantages.float(), Column.RETURNS: output.returns.float()}
    if shaped.response_mask is not mask:  # truncated rows leave the loss (overlong.mask_truncated)
        columns = {name: value * shaped.response_mask for name, value in columns.items()}
        columns[Column.RESPONSE_MASK] = shaped.response_mask
    return TrainingBatch(batch.with_columns(**columns), metrics)


def _rewards(advantage: AdvantageConfig, kl: KLConfig, scores: torch.Tensor, token_kl: torch.Tensor | None,
             mask: torch.Tensor, kl_coef: float) -> dict[str, torch.Tensor]:
    """The rewards as the estimator reads them: ``scores`` [B] or ``token_level_rewards`` [B, T]."""
    if kl.usage != "reward":
        return {"scores": scores}
    assert token_kl is not None  # usage reward without a reference is refused above
    if reads_token_rewards(advantage.type):
        return {"token_level_rewards": apply_kl_penalty(scores, token_kl, mask, kl_coef).token_level_rewards}
    return {"scores": apply_kl_penalty_to_scores(scores, token_kl, mask, kl_coef)}


def staleness(versions: torch.Tensor, policy_version: int) -> torch.Tensor:
    """[N] how many versions each row's sampling weights are behind the policy's.

    Args:
        versions: [N] the ``version`` column (-1: the initial weights, counted as 0).
        policy_version: the version the trainer last published (-1 before the first).
    """
    return max(policy_version, 0) - versions.clamp(min=0)


def drop_stale_groups(batch: Batch, policy_version: int, max_staleness: int) -> tuple[Batch, int]:
    """The batch without every group that has a row more than `max_staleness` versions
    behind the policy, and how many rows were dropped. Whole groups go: a group-relative
    estimator compares each response with every other of its prompt."""
    keep = staleness(batch.tensors[Column.VERSION], policy_version) <= max_staleness
    uids = batch.columns[Column.UID]
    stale_groups = {uid for uid, kept in zip(uids, keep.tolist()) if not kept}
    rows = [i for i, uid in enumerate(uids) if uid not in stale_groups]
    return batch.select(rows), batch.size - len(rows)

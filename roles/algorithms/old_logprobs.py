"""Which log-probabilities are "old" in the PPO ratio, decided once per update.

The ratio rho = exp(log pi_theta - log pi_old) compares the policy being optimized with
the policy before the update. There are three ways to get log pi_old:

* ``recomputed``: a forward pass of the trainer over the rollouts before the update
  (the controller asks for it in parallel with the reference and the reward).
* ``current``: the update's own log-probs, detached. Exact when the update is a single
  optimizer step (one PPO epoch, one mini-batch): every forward of that step runs with
  the weights from before it, so pi_old = pi_theta and rho = 1, and the pass above is
  a second, identical forward that can be skipped (verl and TRL skip it too).
* ``behavior``: the generator's log-probs, taken while sampling. In async mode the PPO
  ratio is then taken against the sampling weights directly, so the clipped ratio is
  itself the off-policy correction.

``recompute_logprobs: auto`` picks ``current`` when the update is one optimizer step,
and ``recomputed`` otherwise; ``always`` and ``never`` force ``recomputed`` and
``behavior``. With ``recomputed`` or ``current``, the policy loss may also be weighted
by the ratio pi_old / pi_behavior between the policy before the update and the weights
that sampled the row (roles.algorithms.rollout_correction; in async mode by default).

The step decides (`roles.algorithms.step.plan_update`, with `old_logprob_source`) and
the controller sends the decision in the `Train` message; which batch column holds each
source's log-probs is said once, in `old_logprobs_column`, which the step (for the KL to
the reference, `policy_logprobs_before_update`) and the trainer (`select_old_logprobs`)
both read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch

from protocols.rl import Column, OldLogProbs

RecomputeLogprobs = Literal["auto", "always", "never"]
"""The setting: ``auto`` skips the recomputation when the update is one optimizer step."""


def optimizer_steps_per_update(rows: int, ranks: int, ppo_epochs: int, mini_batch_size: int) -> int:
    """Optimizer steps one batch of `rows` rows makes on each trainer rank: every rank
    gets ceil(rows / ranks) rows and splits them into mini-batches of
    ``max(1, mini_batch_size // ranks)`` rows, `ppo_epochs` times."""
    for name, value in (("rows", rows), ("ranks", ranks), ("ppo_epochs", ppo_epochs), ("mini_batch_size", mini_batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    rows_per_rank = math.ceil(rows / ranks)
    return ppo_epochs * math.ceil(rows_per_rank / max(1, mini_batch_size // ranks))


def old_logprob_source(recompute: RecomputeLogprobs, optimizer_steps: int) -> OldLogProbs:
    """Where the update's old log-probs come from (see the module docstring).

    Args:
        recompute: the controller's ``recompute_logprobs`` setting.
        optimizer_steps: `optimizer_steps_per_update` for this batch.
    """
    if recompute == "never":
        return "behavior"
    if recompute == "always":
        return "recomputed"
    if recompute != "auto":
        raise ValueError(f"recompute_logprobs must be auto, always or never, got {recompute!r}")
    return "current" if optimizer_steps == 1 else "recomputed"


def check_old_logprob_source(source: OldLogProbs, optimizer_steps: int) -> None:
    """Raises ValueError when `source` cannot be pi_old for an update of `optimizer_steps`
    steps: the update's own log-probs (``current``) are only in a single optimizer step;
    from the second on the weights have moved. The trainer checks the plan it receives."""
    if source == "current" and optimizer_steps != 1:
        raise ValueError(f"the update's own log-probs were planned as the old ones, but this batch takes "
                         f"{optimizer_steps} optimizer steps (ppo_epochs times mini-batches per rank): set the "
                         "controller's recompute_logprobs to always")


def old_logprobs_column(source: OldLogProbs) -> str | None:
    """The batch column holding the old log-probs of `source`: ``old_logprobs`` for
    ``recomputed``, ``behavior_logprobs`` for ``behavior``; None for ``current`` (the
    update's own, known only inside the update)."""
    columns: dict[str, str | None] = {"recomputed": Column.OLD_LOGPROBS, "behavior": Column.BEHAVIOR_LOGPROBS,
                                      "current": None}
    if source not in columns:
        raise ValueError(f"old log-probs come from one of {sorted(columns)}, got {source!r}")
    return columns[source]


def select_old_logprobs(source: OldLogProbs, columns: Mapping[str, torch.Tensor], current: torch.Tensor) -> torch.Tensor:
    """The [N, R] old log-probs of a (micro-)batch for `source`.

    Args:
        columns: the batch's tensors: ``old_logprobs`` (recomputed) and ``behavior_logprobs``.
        current: [N, R] the update's own log-probs under the current weights.
    """
    name = old_logprobs_column(source)
    if name is None:
        return current.detach()
    if name not in columns:
        raise ValueError(f"old log-probs from {source!r} need the batch column {name!r}, which is missing")
    return columns[name]


def policy_logprobs_before_update(source: OldLogProbs, columns: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[N, R] the policy's log-probs before the update, as the step has them before
    training (for the KL to the reference): the old ones when they are in a column, else
    the generator's (the same weights in sync mode; with ``current`` the update's own are
    not known yet)."""
    return columns[old_logprobs_column(source) or Column.BEHAVIOR_LOGPROBS]


"""Messages of the RL dataflow: one type per interaction between the controller and
the generator, reference, critic, reward, trainer and evaluator roles.

Rollout batches travel as `Batch`es. Their columns, by the role that adds them:

* controller: ``prompt`` (text), ``ground_truth``, ``data_source``, ``uid`` (the
  prompt's id: its samples form one group), ``prompt_index`` (row of the dataset)
* generator: tensors ``prompt_ids`` / ``prompt_mask`` [N, P] (left-padded),
  ``response_ids`` / ``response_mask`` [N, R] (right-padded), ``behavior_logprobs``
  [N, R] (log-probs under the sampling weights), ``version`` [N] (the weights
  version that sampled each row, -1 for the initial weights); column ``response``
* controller, before training: ``advantages``, ``returns`` [N, R], and as
  available ``old_logprobs``, ``ref_logprobs``, ``values`` [N, R]
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal

import torch

from protocols.batch import Batch
from protocols.messages import message
from protocols.specs import FLOATING, PROMPTS_BATCH, ROLLOUTS_BATCH, SEQUENCES_BATCH, TRAIN_BATCH, TensorSpec


OldLogProbs = Literal["recomputed", "current", "behavior"]
"""Where an update's "old" log-probs come from (roles.algorithms.old_logprobs): the
batch's ``old_logprobs`` column (a trainer forward before the update), the update's own
log-probs detached (one optimizer step: the ratio is exactly 1), or the batch's
``behavior_logprobs`` (the generator's)."""


@message("rl.generate")
class Generate:  # controller / evaluator -> generator
    batch: Annotated[Batch, PROMPTS_BATCH]
    """Prompts: tensor-free columns ``prompt_ids`` (token id lists) and any others,
    which are copied onto every sample of their prompt."""
    sampling: dict[str, Any]
    """`roles.generation.SamplingParams` fields (n, temperature, top_p, ...)."""


@message("rl.rollouts")
class Rollouts:  # generator -> controller
    batch: Annotated[Batch, ROLLOUTS_BATCH]
    version: int
    """The weights version that produced every row (-1: the initial weights)."""
    generator: str
    generate_s: float


@message("rl.logprobs")
class ComputeLogProbs:  # controller -> reference / trainer ranks
    batch: Annotated[Batch, SEQUENCES_BATCH]
    temperature: float
    """The sampling temperature: log-probs are of softmax(logits / temperature)."""


@message("rl.logprobs.result")
class LogProbs:  # reference / trainer -> controller
    logprobs: Annotated[torch.Tensor, TensorSpec(FLOATING)]
    """[N, R] float32 (trainer ranks other than 0 answer an empty tensor)."""


@message("rl.values")
class ComputeValues:  # controller -> critic
    batch: Annotated[Batch, SEQUENCES_BATCH]


@message("rl.values.result")
class Values:  # critic -> controller
    values: Annotated[torch.Tensor, TensorSpec(FLOATING, ndim=2)]
    """[N, R] float32."""


@message("rl.score")
class Score:  # controller / evaluator -> reward
    prompts: list[str]
    responses: list[str]
    ground_truths: list[Any]
    data_sources: list[str]


@message("rl.score.result")
class Scores:  # reward -> controller / evaluator
    scores: list[float]
    extracted: list[str | None]
    terms: list[dict[str, float]] = field(default_factory=list)
    """Per row, the named reward terms behind its score (``correctness``, ``format``:
    `roles.rewards.RewardResult.terms`); empty: the sender reported none."""


@message("rl.train")
class Train:  # controller -> every trainer rank / the critic
    batch: Annotated[Batch, TRAIN_BATCH]
    step: int
    temperature: float
    kl_coef: float
    """The KL loss coefficient for this update."""
    kl_estimator: str | None = None
    """Add a KL-to-reference loss with this estimator (the batch then has
    ``ref_logprobs``); None: no KL loss."""
    old_logprobs: OldLogProbs = "recomputed"
    """Which log-probs the PPO ratio divides by (decided by the controller,
    roles.algorithms.old_logprob_source)."""
    importance_cap: float | None = None
    """Async mode: weight the policy loss per token by min(exp(old - behavior), this);
    None: no importance weights."""


@message("rl.update.describe")
class DescribeUpdate:  # controller -> trainer rank 0
    """Asks how the trainer turns a batch into optimizer steps (once, before the first step)."""


@message("rl.update.settings")
class UpdateSettings:  # trainer rank 0 -> controller
    ranks: int
    ppo_epochs: int
    mini_batch_size: int
    """Rows per optimizer step, over all ranks together."""


@message("rl.train.result")
class TrainStats:  # trainer rank 0 / critic -> controller
    stats: dict[str, float]
    """``train/<name>`` values averaged over the update."""


@message("rl.checkpoint.save")
class SaveCheckpoint:  # controller -> every trainer rank / the critic
    path: str
    """The step's checkpoint folder, ``<run_dir>/checkpoints/step_N``: a role refuses any
    path that resolves elsewhere (roles.checkpoints.confine_checkpoint_path)."""


@message("rl.checkpoint.load")
class LoadCheckpoint:  # controller -> every trainer rank / the critic
    path: str
    """As `SaveCheckpoint.path`; the controller sends only intact checkpoints."""


@message("rl.checkpoint.done")
class CheckpointDone:  # trainer / critic -> controller
    path: str
    version: int
    """The trainer's last published weights version (the critic: 0)."""


@message("rl.evaluate")
class Evaluate:  # controller (or anyone) -> evaluator
    step: int
    """The training step the policy has reached; names ``eval/step_N.jsonl``."""


@message("rl.evaluate.result")
class Evaluated:  # evaluator -> controller
    step: int
    values: dict[str, float]
    """``eval/<name>`` values written to metrics.jsonl for this step."""

"""Messages of the RL dataflow: one type per interaction between the controller and
the generator, reference, critic, reward, trainer and evaluator roles.

Rollout batches travel as `Batch`es; `Column` names every column a role puts in one or
reads from one, with its shape and dtype (N rows, P prompt tokens, R response tokens).
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal

import torch

from protocols.batch import Batch
from protocols.messages import message
from protocols.specs import FLOATING, PROMPTS_BATCH, ROLLOUTS_BATCH, SEQUENCES_BATCH, TRAIN_BATCH, TensorSpec


class Column:
    """The column names of a rollout `Batch`, in the order the roles add them.

    Written by the controller before generation (tensor-free, one value per prompt,
    copied onto each of its samples), then by the generator, then by the controller
    again before training. Spell a column as ``Column.RESPONSE_MASK``, never as a string.
    """

    PROMPT = "prompt"
    """str per row: the prompt text (what the reward reads)."""
    GROUND_TRUTH = "ground_truth"
    """Any per row: the data set's reference answer, for the reward."""
    DATA_SOURCE = "data_source"
    """str per row: which data set the prompt came from (picks the reward function)."""
    PROMPT_INDEX = "prompt_index"
    """int per row: the prompt's row in its data set."""
    UID = "uid"
    """str per row: the prompt's id; the samples of one prompt form one group (GRPO, RLOO)."""
    PROMPT_IDS = "prompt_ids"
    """Before generation: list[int] per row, unpadded. After: int64 tensor [N, P], left-padded."""
    PROMPT_MASK = "prompt_mask"
    """[N, P] int64 (1: a prompt token, 0: left padding)."""
    RESPONSE_IDS = "response_ids"
    """[N, R] int64 sampled token ids, right-padded."""
    RESPONSE_MASK = "response_mask"
    """[N, R] float32 (1: a token the policy sampled and is trained on, 0: padding, or an
    observation's token in a multi-turn row)."""
    RESPONSE_ATTENTION = "response_attention_mask"
    """[N, R] int64, multi-turn rows only: 1 where the response holds a token the model
    reads, sampled or an environment's (its ``response_mask`` is 0, as it is not trained
    on), 0 for padding. Absent: the response's tokens are those of ``response_mask``."""
    BEHAVIOR_LOGPROBS = "behavior_logprobs"
    """[N, R] float32 log-probs of the sampled tokens under the weights that sampled them."""
    VERSION = "version"
    """[N] int64 the weights version that sampled each row (-1: the initial weights)."""
    RESPONSE = "response"
    """str per row: the decoded response."""
    FINISH_REASON = "finish_reason"
    """str per row: why sampling stopped (``stop``, ``length``)."""
    SCORE = "score"
    """[N] float32 the reward role's score of each response (controller, after scoring)."""
    EXTRACTED = "extracted"
    """str | None per row: the answer the reward extracted from the response."""
    REF_LOGPROBS = "ref_logprobs"
    """[N, R] float32 log-probs of the sampled tokens under the frozen reference."""
    OLD_LOGPROBS = "old_logprobs"
    """[N, R] float32 the policy's log-probs before the update (a trainer forward pass);
    present only when the update takes its old log-probs from it (`OldLogProbs`)."""
    VALUES = "values"
    """[N, R] float32 the critic's value of each response token."""
    ADVANTAGES = "advantages"
    """[N, R] float32 policy-gradient weights (0 where the response mask is 0)."""
    RETURNS = "returns"
    """[N, R] float32 value targets for the critic (0 where the response mask is 0)."""


OldLogProbs = Literal["recomputed", "current", "behavior"]
"""Where an update's "old" log-probs come from (roles.algorithms.old_logprobs): the
batch's ``old_logprobs`` column (a trainer forward before the update), the update's own
log-probs detached (one optimizer step: the ratio is exactly 1), or the batch's
``behavior_logprobs`` (the generator's)."""


@message("rl.sampling")
class Sampling:  # part of Generate: controller / evaluator -> generator
    """How a generator samples: the fields of `roles.sampling.SamplingParams`, the
    validated user-facing settings, which the sender converts (roles.rollout.
    sampling_message) and the generator checks again (roles.rollout.sampling_params)."""

    n: int
    """Samples per prompt."""
    temperature: float
    """Divides the logits before the softmax (log-probs are of softmax(logits / temperature))."""
    top_p: float
    """Nucleus sampling: the smallest set of most likely tokens with this much probability (1: off)."""
    top_k: int
    """Only the ``top_k`` most likely tokens (0: off)."""
    max_new_tokens: int
    """Most tokens generated per response."""
    stop: tuple[str, ...]
    """Stop strings: a response ends with the token that completes one."""
    seed: int | None
    """Seeds the sampling (None: torch's global generator)."""
    ignore_eos: bool
    """Keep generating past eos tokens, up to ``max_new_tokens``."""


@message("rl.generate")
class Generate:  # controller / evaluator -> generator
    batch: Annotated[Batch, PROMPTS_BATCH]
    """Prompts: tensor-free columns ``prompt_ids`` (token id lists) and any others,
    which are copied onto every sample of their prompt."""
    sampling: Sampling
    """How to sample them."""


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
    base: bool = False
    """A LoRA trainer's base model (its adapter disabled): the reference policy."""


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


@message("rl.rollout_correction")
class RolloutCorrection:  # part of Train: controller -> every trainer rank
    """How the policy loss is weighted by the ratio r = pi_old / pi_behavior of the
    update's old log-probs to the generator's (roles.algorithms.rollout_correction):
    the validated controller setting, which `rollout_correction_plan` converts."""

    mode: Literal["truncate", "mask"]
    """``truncate``: weight min(r, upper); ``mask``: weight r inside [lower, upper], 0 outside."""
    level: Literal["token", "sequence"]
    """``token``: one r per token; ``sequence``: one r per response, on each of its tokens."""
    sequence_ratio: Literal["geometric_mean", "product"]
    """A response's r from its tokens' (``sequence`` level): their geometric mean or product."""
    lower: float
    """``mask``: the lower end of the kept band (``truncate``: 0, unused)."""
    upper: float
    """The truncation (``truncate``) or the upper end of the kept band (``mask``)."""
    denominator: Literal["all", "kept"]
    """``mask``: ``all`` keeps masked tokens in the loss's denominator (their loss is 0);
    ``kept`` takes them out of the loss altogether (verl's)."""


@message("rl.train")
class Train:  # controller -> every trainer rank / the critic
    batch: Annotated[Batch, TRAIN_BATCH]
    step: int
    temperature: float
    kl_coef: float
    """The KL loss coefficient for this update."""
    kl_estimator: str | None = None
    """Add a KL-to-reference loss with this estimator (the batch then has
    ``ref_logprobs``); None: no KL loss. This and the next two fields are the step's
    `roles.algorithms.step.UpdatePlan`: the trainer follows them, it does not re-decide."""
    old_logprobs: OldLogProbs = "recomputed"
    """Which log-probs the PPO ratio divides by (`UpdatePlan.old_logprobs`)."""
    rollout_correction: RolloutCorrection | None = None
    """Weight the policy loss by the ratio of the old log-probs to the generator's
    (`UpdatePlan.rollout_correction`); None: no weights."""


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

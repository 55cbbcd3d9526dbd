"""The controller's settings: the algorithm, the data and the schedule of a run
(`ControllerConfig`, the ``config`` block of a topology's controller role), and the
roles a run with them needs (`needed_roles`, which `troupe validate` checks).

`roles.controller` re-exports both names; the controller actor itself lives there.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from roles.algorithms import AdvantageConfig, GRPOConfig, KLConfig, RecomputeLogprobs
from roles.algorithms.rollout_correction import RolloutCorrectionConfig, rollout_correction_setting
from roles.algorithms.overlong import OverlongConfig
from roles.data import DataConfig
from roles.episode_batch import EpisodesConfig
from roles.evaluator import HeldoutConfig
from roles.sampling import SamplingParams


DEFAULT_IMPORTANCE_CAP = 2.0
"""The async token truncation of the importance ratio when neither ``importance_cap`` nor
``rollout_correction`` is written."""

class EvalConfig(HeldoutConfig):
    """When to evaluate, and where: here, or in the evaluator role (its own process)."""

    every_steps: int = Field(0, ge=0)
    """Evaluate every N steps (0: only before the first and after the last step)."""
    evaluator: bool = False
    """Send each evaluation to the evaluator role, so training goes on while it runs (the
    held-out settings are then the evaluator's config); False: evaluate here, between
    two steps, with the settings below."""

    @model_validator(mode="after")
    def _settings_in_one_place(self) -> EvalConfig:
        if self.evaluator and self.data is not None:
            raise ValueError("eval.evaluator is set: give the held-out data in the evaluator role's config, not here")
        return self


class DynamicSamplingConfig(BaseModel):
    """DAPO's dynamic sampling (roles.dynamic_sampling): generate and score batches of
    prompts until the step has ``prompts_per_step`` informative groups (sync mode)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = False
    """Keep only the groups whose samples did not all get the same score, and draw
    more prompt batches until the step is full of them."""
    max_rounds: int = Field(8, ge=1)
    """Generation rounds a step may spend at most (the first included); then it trains
    on the informative groups it has."""
    when_short: Literal["train", "fail"] = "train"
    """After ``max_rounds`` without a full step: ``train`` on what was found (the last
    round's groups when none was informative) and log ``controller.dynamic_sampling_short``;
    ``fail``: stop the run with an error (verl's behaviour)."""


class ControllerConfig(BaseModel):
    """The algorithm, the data and the schedule of a run."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    tokenizer: str
    """A local Hugging Face tokenizer (usually the policy's model directory)."""
    data: DataConfig
    """Training prompts."""
    steps: int = Field(ge=1)
    """Training steps in the run."""
    prompts_per_step: int = Field(8, ge=1)
    """Prompts per step; each gets `sampling.n` responses."""
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(n=8))
    """How rollouts are sampled (n responses per prompt)."""
    advantage: AdvantageConfig = Field(default_factory=GRPOConfig)
    """The estimator: gae (PPO, needs a critic), grpo, drgrpo, rloo, reinforce_plus_plus, ..."""
    kl: KLConfig = Field(default_factory=KLConfig)
    """KL to the reference: in the reward, as a loss, or none; fixed or adaptive coefficient."""
    overlong: OverlongConfig = Field(default_factory=OverlongConfig)
    """DAPO's overlong shaping: a length penalty over a buffer before ``sampling.max_new_tokens``,
    and truncated responses left out of the loss (roles.algorithms.overlong); off by default."""
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig)
    """DAPO's dynamic sampling: train only on groups whose samples scored differently
    (sync mode only); off by default."""
    episodes: EpisodesConfig | None = None
    """Multi-turn: each sample is an episode with the environment role, scored by its
    rewards (no reward role is asked for training); None: one response per sample."""
    mode: Literal["sync", "async"] = "sync"
    """``sync``: on-policy steps; ``async``: generation runs one batch ahead of training."""
    max_staleness: int = Field(1, ge=0)
    """Async: rows sampled more than this many versions behind the policy are dropped."""
    importance_cap: float | None = Field(None, gt=0)
    """Async, when ``rollout_correction`` is not written: the loss is weighted per token
    by the importance ratio policy/sampler truncated at this (``rollout_correction:
    {type: truncate, level: token, upper: importance_cap}``); None: 2.0."""
    rollout_correction: RolloutCorrectionConfig | None = None
    """How the policy loss is weighted by the ratio pi_old / pi_behavior of the old
    log-probs to the generator's (roles.algorithms.rollout_correction): ``{type: none}``,
    ``{type: truncate, level: token | sequence, upper}`` (truncated IS) or ``{type: mask,
    level, lower, upper, denominator}`` (masked IS); in sync mode too (the generator's
    engine and precision differ from the trainer's). Not written: async mode truncates
    per token at ``importance_cap``, sync mode has none. Mismatch metrics
    (``train/rollout_*``) are logged whenever the old log-probs are not the generator's."""
    recompute_logprobs: RecomputeLogprobs = "auto"
    """Where the PPO ratio's "old" log-probs come from (roles.algorithms.old_logprobs):
    ``auto``: the trainer's own log-probs in the update, detached, when the update is one
    optimizer step (one PPO epoch, one mini-batch: the ratio is exactly 1, so no extra
    forward pass), else a trainer forward pass before the update; ``always``: that
    forward pass every step; ``never``: the generator's (in async mode the PPO ratio is
    then taken against the sampling weights directly, so the clipped ratio itself is the
    off-policy correction). ``true`` and ``false`` mean ``always`` and ``never``."""
    trainer_ranks: int = Field(1, ge=1)
    """Trainer processes the controller trains (``trainer-0`` ..). Derived: the launcher sets
    it to ``roles.trainer.count`` for every instance, and a topology does not write it."""
    use_critic: bool | None = None
    """Ask a critic for values (default: when the estimator is gae)."""
    use_reference: bool = True
    """Ask for reference log-probs (the KL is logged even at coefficient 0)."""
    reference_from: Literal["reference", "trainer"] = "reference"
    """Where reference log-probs come from: the ``reference`` role, or the ``trainer``
    when it trains a LoRA adapter: its base model with the adapter disabled, so the
    topology needs no reference process (roles.lora)."""
    checkpoint_every: int = Field(0, ge=0)
    """Save a checkpoint every N steps (0: only after the last step)."""
    resume: bool = True
    """Continue from the newest intact checkpoint in the run directory, if there is one
    (roles.checkpoints); what a stopped session wrote after its step is dropped from
    metrics.jsonl and tb/ (False: start at step 0, and drop everything after it)."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Held-out evaluation: when, where (here or the evaluator role) and with what."""
    tensorboard: bool = True
    """Write every step's metrics to TensorBoard under ``tb/`` too (metrics.jsonl always)."""
    hold_timeout_s: float = Field(3600.0, gt=0)
    """After the last step, how long the run waits at most for subscribed clients that
    asked to hold it (the Python `Run` with registered evaluators) to release it; a
    client that stops or dies counts as released (roles.subscribers)."""
    startup_timeout_s: float = Field(600.0, gt=0)
    """How long to wait for every role to be ready."""
    call_timeout_s: float = Field(1800.0, gt=0)
    """Deadline of one generate, score, forward or train call."""


    @field_validator("recompute_logprobs", mode="before")
    @classmethod
    def _booleans_of_earlier_versions(cls, value: Any) -> Any:
        return {True: "always", False: "never"}.get(value, value) if isinstance(value, bool) else value

    @property
    def effective_rollout_correction(self) -> RolloutCorrectionConfig:
        """`rollout_correction` as written, else what the settings meant before it (see its docstring)."""
        cap = DEFAULT_IMPORTANCE_CAP if self.importance_cap is None else self.importance_cap
        return rollout_correction_setting(self.rollout_correction, self.mode == "async", cap)

    @model_validator(mode="after")
    def _episodes_without_dynamic_sampling(self) -> ControllerConfig:
        if self.episodes is not None and self.dynamic_sampling.enabled:
            raise ValueError("dynamic_sampling does not work with episodes yet (it asks the reward role to score "
                             "each round); turn one of them off")
        return self

    @model_validator(mode="after")
    def _one_rollout_correction(self) -> ControllerConfig:
        if self.rollout_correction is None:
            return self
        # a value, not the field's presence: the launcher's resolved topology writes every default (None here)
        if self.importance_cap is not None:
            raise ValueError("importance_cap and rollout_correction are both set: importance_cap is the older "
                             "spelling of rollout_correction {type: truncate, level: token, upper: ...}; keep one")
        if self.rollout_correction.type != "none" and self.recompute_logprobs == "never":
            raise ValueError("rollout_correction weights the loss by pi_old / pi_behavior, but recompute_logprobs: "
                             "never makes the old log-probs the generator's (the ratio is 1); set recompute_logprobs "
                             "to auto or always, or rollout_correction to {type: none}")
        return self

    @model_validator(mode="after")
    def _dapo_settings_fit(self) -> ControllerConfig:
        if self.dynamic_sampling.enabled and self.mode == "async":
            raise ValueError("dynamic_sampling.enabled works in sync mode only (scores must be known before a step's "
                             "batch is fixed); set mode: sync, or dynamic_sampling.enabled: false")
        if self.dynamic_sampling.enabled and self.sampling.n < 2:
            raise ValueError(f"dynamic_sampling.enabled needs groups of two or more samples, but sampling.n is "
                             f"{self.sampling.n}; set sampling.n to 2 or more")
        if self.overlong.buffer_tokens > self.sampling.max_new_tokens:
            raise ValueError(f"overlong.buffer_tokens ({self.overlong.buffer_tokens}) exceeds sampling.max_new_tokens "
                             f"({self.sampling.max_new_tokens}); set it to at most max_new_tokens")
        return self


def needed_roles(config: ControllerConfig) -> dict[str, int]:
    """The roles a controller with `config` uses, and how many ready instances of each it
    waits for before the first step; `troupe validate` checks a topology has them."""
    needed = {"generator": 1, "trainer": config.trainer_ranks}
    if config.episodes is None or (config.eval.data is not None and config.eval.episodes is None) or config.eval.evaluator:
        needed["reward"] = 1  # (episodes are scored by their environments)
    if (config.use_reference or config.kl.usage != "none") and config.reference_from == "reference":
        needed["reference"] = 1
    if config.use_critic or (config.use_critic is None and config.advantage.type == "gae"):
        needed["critic"] = 1
    if config.eval.evaluator:
        needed["evaluator"] = 1
    return needed

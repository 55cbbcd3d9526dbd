"""The controller role: drives the RL dataflow, one step at a time.

A synchronous step reads as the algorithm does (`Controller.sync_step`):

    prompts  = next batch of the shuffled dataset
    rollouts = generators sample n responses per prompt
    in parallel: reference log-probs, critic values, reward scores, and the policy's own
                 log-probs when the update needs them recomputed (roles.algorithms.
                 old_logprobs: not when it is one on-policy optimizer step)
    advantages (roles.algorithms), with the KL in the reward or as a loss
    train the critic and the trainer ranks
    publish the new weights to the generators
    metrics -> metrics.jsonl and TensorBoard

In asynchronous mode (`Controller.async_steps`) generation runs ahead: while the
trainer trains on one batch, generators already sample the next with the weights
they hold. Every row carries the version that produced it; rows more than
`max_staleness` versions behind are dropped, and the trainer corrects the rest with a
truncated importance ratio between the policy's log-probs and the sampler's.

Every role is reached by messages (protocols.rl); the controller keeps only the
dataset position, the KL controller and the step counter, all checkpointed.

Resuming from the checkpoint of step K (roles.checkpoints: the newest intact one, with
a warning for each newer one skipped) continues the run as if it had not stopped: the
rows and TensorBoard events written after K are dropped (roles.metrics.rewind_metrics),
and the restored weights go to the generators again under their own version K.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocols.batch import Batch
from protocols.envelope import new_id
from protocols.rl import (
    CheckpointDone,
    ComputeLogProbs,
    ComputeValues,
    Evaluate,
    DescribeUpdate,
    LoadCheckpoint,
    OldLogProbs,
    SaveCheckpoint,
    Scores,
    Train,
    TrainStats,
    UpdateSettings,
)
from protocols.weights import PublishReport, PublishWeights
from roles.algorithms import (
    AdvantageConfig,
    AdvantageInputs,
    GRPOConfig,
    KLConfig,
    RecomputeLogprobs,
    apply_kl_penalty,
    build_kl_controller,
    compute_advantages,
    compute_kl,
    kl_metrics,
    old_logprob_source,
    optimizer_steps_per_update,
    place_scores_on_last_token,
    policy_logprobs_before_update,
    zero_variance_share,
)
from roles.algorithms.aggregation import aggregate_loss
from roles.checkpoints import (
    CheckpointError,
    checkpoint_folder,
    newest_intact_checkpoint,
    read_marker,
    remove_marker,
    write_marker,
)
from roles.data import DataConfig, PromptDataset, PromptSampler
from roles.evaluation.summary import mean_terms
from roles.evaluator import HeldoutConfig, run_heldout
from roles.generation import SamplingParams
from roles.metrics import MetricsLog, read_metrics, rewind_metrics, run_hyperparameters, scheduled_evaluation_steps
from roles.rollout import generate_on, response_lengths, score_on
from runtime.actor import Actor
from runtime.errors import ActorError
from runtime.tracing import current_trace_id

INITIAL_VERSION = -1


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
    mode: Literal["sync", "async"] = "sync"
    """``sync``: on-policy steps; ``async``: generation runs one batch ahead of training."""
    max_staleness: int = Field(1, ge=0)
    """Async: rows sampled more than this many versions behind the policy are dropped."""
    importance_cap: float = Field(2.0, gt=0)
    """Async: the importance ratio policy/sampler is truncated at this."""
    recompute_logprobs: RecomputeLogprobs = "auto"
    """Where the PPO ratio's "old" log-probs come from (roles.algorithms.old_logprobs):
    ``auto``: the trainer's own log-probs in the update, detached, when the update is one
    optimizer step (one PPO epoch, one mini-batch: the ratio is exactly 1, so no extra
    forward pass), else a trainer forward pass before the update; ``always``: that
    forward pass every step; ``never``: the generator's (in async mode the PPO ratio is
    then taken against the sampling weights directly, so the clipped ratio itself is the
    off-policy correction). ``true`` and ``false`` mean ``always`` and ``never``."""
    trainer_ranks: int = Field(1, ge=1)
    """Trainer processes (the trainer role's count)."""
    use_critic: bool | None = None
    """Ask a critic for values (default: when the estimator is gae)."""
    use_reference: bool = True
    """Ask the reference role for log-probs (the KL is logged even at coefficient 0)."""
    checkpoint_every: int = Field(0, ge=0)
    """Save a checkpoint every N steps (0: only after the last step)."""
    resume: bool = True
    """Continue from the newest intact checkpoint in the run directory, if there is one
    (roles.checkpoints); what a stopped session wrote after its step is dropped from
    metrics.jsonl and tb/ (False: start at step 0, and drop everything after it)."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tensorboard: bool = True
    release_file: str | None = None
    """After the last step, wait until this file (relative to the run directory) exists
    before ending the run: the Python `Run` keeps the roles up until its evaluators are
    done with them."""
    release_timeout_s: float = Field(3600.0, gt=0)
    startup_timeout_s: float = Field(600.0, gt=0)
    """How long to wait for every role to be ready."""
    call_timeout_s: float = Field(1800.0, gt=0)
    """Deadline of one generate, score, forward or train call."""


    @field_validator("recompute_logprobs", mode="before")
    @classmethod
    def _booleans_of_earlier_versions(cls, value: Any) -> Any:
        return {True: "always", False: "never"}.get(value, value) if isinstance(value, bool) else value


class Controller(Actor):
    """Drives the RL dataflow of one run, step after step (see the module docstring)."""

    role = "controller"
    Config: ClassVar[type[BaseModel]] = ControllerConfig

    def __init__(self, name: str, config: ControllerConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config
        self.step = 0
        self.kl_controller = build_kl_controller(config.kl.kl_controller)
        self.use_critic = config.use_critic if config.use_critic is not None else config.advantage.type == "gae"
        self.use_reference = config.use_reference or config.kl.usage != "none"
        self.version = INITIAL_VERSION
        self.sampler_state: dict[str, int] = {}
        """The sampler's position after the last batch trained (async mode draws ahead)."""
        self.prompt_counter = 0
        """Batches of prompts drawn; names each prompt's group (``uid``)."""
        self.evaluations: list[asyncio.Future[Any]] = []
        """Evaluations sent to the evaluator role (awaited before the run ends)."""
        self.kept_evaluations: set[int] = set()
        """The step resumed from, when the stopped session had already evaluated it (the
        same weights): that evaluation is kept, not repeated."""
        self.update_settings: UpdateSettings | None = None
        """How the trainer turns a batch into optimizer steps (asked once, for
        ``recompute_logprobs: auto``)."""

    # ------------------------------------------------------------------ the run
    async def on_start(self) -> None:
        self.start_background(self._run(), "run")

    async def _run(self) -> None:
        config = self.config
        run_dir = self.run_dir or Path.cwd()
        from transformers import AutoTokenizer

        self.tokenizer = await self.compute.run(lambda: AutoTokenizer.from_pretrained(config.tokenizer, local_files_only=True))
        self.dataset = await self.compute.run(PromptDataset.load, config.data, self.tokenizer)
        self.sampler = PromptSampler(len(self.dataset), config.prompts_per_step, config.data.shuffle, config.data.seed)
        self.heldout = await self.compute.run(PromptDataset.load, config.eval.data, self.tokenizer) if config.eval.data else None
        await self._wait_for_roles()
        if config.recompute_logprobs == "auto":
            self.update_settings = await self._ask_update_settings()
        if config.resume:
            await self._resume(run_dir)
        # what a stopped session wrote after this step is superseded: one row per step
        kept = rewind_metrics(run_dir, self.step)
        self.kept_evaluations = scheduled_evaluation_steps(kept) & {self.step}
        self.metrics = MetricsLog(run_dir, config.tensorboard)
        if self.step == 0 or self.evaluation_due():
            await self.evaluate()
        steps = self.sync_steps() if config.mode == "sync" else self.async_steps()
        async for record in steps:
            self.log.lifecycle("controller.step", **{k: v for k, v in record.items() if k in ("step", "train/reward", "train/kl_div", "train/loss")})
            if self.step == config.steps or (config.checkpoint_every and self.step % config.checkpoint_every == 0):
                await self.save_checkpoint(run_dir)
            if self.evaluation_due():
                await self.evaluate()
        await self.evaluate(last=True)
        self.metrics.hparams(run_hyperparameters(run_dir), final_metrics(read_metrics(run_dir)), self.step)
        self.metrics.close()
        self.log.lifecycle("controller.steps_done", steps=self.step)
        if config.release_file is not None:
            await wait_for_file(run_dir / config.release_file, config.release_timeout_s)
        self.log.lifecycle("controller.finished", steps=self.step)
        self.stop()

    # ------------------------------------------------------------------ sync
    async def sync_steps(self) -> AsyncIterator[dict[str, Any]]:
        while self.step < self.config.steps:
            yield await self.sync_step()

    async def sync_step(self) -> dict[str, Any]:
        current_trace_id.set(new_id())  # one trace follows this batch through every role
        timings: dict[str, float] = {}
        started = time.monotonic()
        async with timed(timings, "generate"):
            batch = await self.generate(self.next_prompts(), self.config.sampling)
        batch, numbers = await self.prepare(batch, timings)
        return await self.train_and_publish(batch, numbers, timings, started)

    # ------------------------------------------------------------------ async
    async def async_steps(self) -> AsyncIterator[dict[str, Any]]:
        """Generation runs one batch ahead of training."""
        ahead: asyncio.Future[tuple[Batch, float, dict[str, int], str]] | None = None
        while self.step < self.config.steps:
            started = time.monotonic()
            if ahead is None:
                ahead = asyncio.ensure_future(self._generate_ahead())
            batch, generate_s, sampler_state, trace = await ahead
            current_trace_id.set(trace)  # the batch's trace, begun when its generation began
            waited = time.monotonic() - started
            ahead = asyncio.ensure_future(self._generate_ahead()) if self.step + 1 < self.config.steps else None
            timings = {"generate": generate_s, "generate_wait": waited}
            batch, dropped = self.drop_stale(batch)
            if batch.size == 0:
                self.log.lifecycle("controller.all_stale", step=self.step + 1, dropped=dropped)
                continue
            batch, numbers = await self.prepare(batch, timings)
            numbers["train/staleness"] = float(self.staleness(batch).float().mean())
            numbers["train/stale_dropped"] = float(dropped)
            self.sampler_state = sampler_state
            yield await self.train_and_publish(batch, numbers, timings, started)
        if ahead is not None:
            ahead.cancel()

    async def _generate_ahead(self) -> tuple[Batch, float, dict[str, int], str]:
        trace = new_id()
        current_trace_id.set(trace)  # this task's own context
        prompts = self.next_prompts()
        state = self.sampler.state_dict()
        started = time.monotonic()
        batch = await self.generate(prompts, self.config.sampling)
        return batch, time.monotonic() - started, state, trace

    def staleness(self, batch: Batch) -> torch.Tensor:
        """[N] versions each row is behind the policy (the initial weights count as 0)."""
        return max(self.version, 0) - batch.tensors["version"].clamp(min=0)

    def drop_stale(self, batch: Batch) -> tuple[Batch, int]:
        keep = self.staleness(batch) <= self.config.max_staleness
        # whole groups only: a group-based estimator needs every sample of a prompt
        uids = batch.columns["uid"]
        stale_groups = {uid for uid, kept in zip(uids, keep.tolist()) if not kept}
        rows = [i for i, uid in enumerate(uids) if uid not in stale_groups]
        return batch.select(rows), batch.size - len(rows)

    # ------------------------------------------------------------------ the phases
    def next_prompts(self) -> Batch:
        indices = self.sampler.next_batch()
        rows = [self.dataset[i] for i in indices]
        self.prompt_counter += 1
        return Batch(columns={
            "prompt_ids": [row.prompt_ids for row in rows],
            "prompt": [row.prompt for row in rows],
            "ground_truth": [row.ground_truth for row in rows],
            "data_source": [row.data_source for row in rows],
            "prompt_index": [row.index for row in rows],
            "uid": [f"{self.prompt_counter}-{i}" for i in range(len(rows))],
        })

    async def generate(self, prompts: Batch, sampling: SamplingParams) -> Batch:
        return await generate_on(self, prompts, sampling, self.tokenizer.pad_token_id, self.config.call_timeout_s)

    def old_logprobs_for(self, batch: Batch) -> OldLogProbs:
        """Where the update of `batch` takes its old log-probs from (roles.algorithms.old_logprobs)."""
        settings = self.update_settings
        steps = (optimizer_steps_per_update(batch.size, settings.ranks, settings.ppo_epochs, settings.mini_batch_size)
                 if settings is not None else 0)  # only auto reads it, and auto has the settings
        return old_logprob_source(self.config.recompute_logprobs, steps)

    async def prepare(self, batch: Batch, timings: dict[str, float]) -> tuple[Batch, dict[str, float]]:
        """Reference, critic, reward and, when the update needs them, old log-probs in
        parallel, then advantages."""
        config = self.config
        temperature = config.sampling.temperature
        calls: dict[str, Awaitable[Any]] = {"reward": self.score(batch)}
        if self.use_reference:
            calls["reference"] = self.ask_role("reference", ComputeLogProbs(batch, temperature), config.call_timeout_s)
        if self.use_critic:
            calls["values"] = self.ask_role("critic", ComputeValues(batch), config.call_timeout_s)
        if self.old_logprobs_for(batch) == "recomputed":
            calls["old_logprobs"] = self.ask_trainers(ComputeLogProbs(batch, temperature))
        results = await asyncio.gather(*(timed_call(timings, name, call) for name, call in calls.items()))
        result = dict(zip(calls, results))
        scores: Scores = result["reward"]
        mask = batch.tensors["response_mask"]
        columns: dict[str, Any] = {"score": torch.tensor(scores.scores, dtype=torch.float32), "extracted": scores.extracted}
        if "reference" in result:
            columns["ref_logprobs"] = result["reference"].logprobs
        if "values" in result:
            columns["values"] = result["values"].values
        if "old_logprobs" in result:
            columns["old_logprobs"] = result["old_logprobs"][0].logprobs
        batch = batch.with_columns(**columns)
        async with timed(timings, "advantages"):
            batch, numbers = self.advantages(batch)
        lengths = response_lengths(batch)
        numbers.update({
            "train/reward": float(batch.tensors["score"].mean()),
            "train/reward_std": float(batch.tensors["score"].std()) if batch.size > 1 else 0.0,
            "train/response_length": float(lengths.mean()),
            "train/response_length_max": float(lengths.max()),
            "train/kl_coef": self.kl_controller.kl_coef,
            "perf/tokens_generated": float(mask.sum()),
            # the reward's named terms, when it reports them (train/correctness, train/format)
            **{f"train/{name}": value for name, value in mean_terms(scores.terms).items()},
        })
        return batch, numbers

    def advantages(self, batch: Batch) -> tuple[Batch, dict[str, float]]:
        """Token rewards (score on the last token, minus the KL when it goes in the reward),
        then the configured estimator."""
        config, t = self.config, batch.tensors
        mask, scores = t["response_mask"], t["score"]
        numbers: dict[str, float] = {}
        policy = policy_logprobs_before_update(self.old_logprobs_for(batch), t)
        if "ref_logprobs" in t:
            kl = compute_kl(policy, t["ref_logprobs"], "k1" if config.kl.usage == "reward" else config.kl.estimator.rstrip("+"))  # type: ignore[arg-type]
            numbers["train/kl_div"] = float(aggregate_loss(kl, mask, "seq-mean-token-mean"))
            numbers.update(kl_metrics(policy, t["ref_logprobs"], mask))
        numbers["train/zero_variance_groups"] = zero_variance_share(scores, batch.columns["uid"])
        if config.kl.usage == "reward":
            rewards = apply_kl_penalty(scores, kl, mask, self.kl_controller.kl_coef).token_level_rewards
        else:
            rewards = place_scores_on_last_token(scores, mask)
        output = compute_advantages(config.advantage, AdvantageInputs(rewards, mask, t.get("values"), batch.columns["uid"]))
        columns: dict[str, Any] = {"advantages": output.advantages.float(), "returns": output.returns.float()}
        valid = mask > 0
        numbers["train/advantages_mean"] = float(output.advantages[valid].mean()) if valid.any() else 0.0
        return batch.with_columns(**columns), numbers

    async def score(self, batch: Batch) -> Scores:
        return await score_on(self, batch, self.config.call_timeout_s)

    async def train_and_publish(self, batch: Batch, numbers: dict[str, float], timings: dict[str, float], started: float) -> dict[str, Any]:
        config = self.config
        self.step += 1
        kl_loss = config.kl.usage == "loss" and "ref_logprobs" in batch
        old_logprobs = self.old_logprobs_for(batch)
        # async: the trainer weights the loss by the truncated ratio of the old policy to the
        # sampling weights, unless the old log-probs are the sampler's own
        importance_cap = config.importance_cap if config.mode == "async" and old_logprobs != "behavior" else None
        train = Train(batch, self.step, config.sampling.temperature, self.kl_controller.kl_coef,
                      config.kl.estimator if kl_loss else None, old_logprobs, importance_cap)
        calls: dict[str, Awaitable[Any]] = {"train": self.ask_trainers(train)}
        if self.use_critic:
            calls["train_critic"] = self.ask_role("critic", train, config.call_timeout_s)
        results = dict(zip(calls, await asyncio.gather(*(timed_call(timings, name, call) for name, call in calls.items()))))
        stats: list[TrainStats] = results["train"]
        numbers.update(stats[0].stats)
        if "train_critic" in results:
            numbers.update(results["train_critic"].stats)
        if "train/kl_div" in numbers:
            self.kl_controller.update(numbers["train/kl_div"], batch.size)
        async with timed(timings, "publish"):
            report: PublishReport = (await self.ask_trainers(PublishWeights()))[0]
        self.version = report.version
        step_s = time.monotonic() - started
        numbers.update({
            "weights/version": float(report.version),
            "weights/sync_s": report.total_s,
            "weights/generators": float(len(report.committed)),
            "perf/tokens_per_s": numbers.pop("perf/tokens_generated") / max(timings["generate"], 1e-9),
            "perf/samples_per_s": batch.size / step_s,
            "perf/rollout_version_min": float(batch.tensors["version"].min()),
            **{f"timing/{name}_s": seconds for name, seconds in timings.items()},
            "timing/step_s": step_s,
        })
        if self.sampler_state == {} or config.mode == "sync":
            self.sampler_state = self.sampler.state_dict()
        valid = batch.tensors["response_mask"] > 0
        self.metrics.histograms(self.step, {"reward": batch.tensors["score"], "response_length": response_lengths(batch),
                                            "advantages": batch.tensors["advantages"][valid]})
        return self.metrics.write(self.step, numbers)

    async def ask_trainers(self, request: Any) -> list[Any]:
        """The same message to every trainer rank, in the same order (their collectives
        pair up); rank 0's answer first."""
        return list(await asyncio.gather(*(
            self.ask(f"trainer-{rank}", request, timeout=self.config.call_timeout_s) for rank in range(self.config.trainer_ranks)
        )))

    # ------------------------------------------------------------------ evaluation
    def evaluation_due(self) -> bool:
        """An evaluation is scheduled after the current step (the last step's is
        `evaluate(last=True)`, after the loop)."""
        every = self.config.eval.every_steps
        return bool(every) and self.step % every == 0 and 0 < self.step < self.config.steps

    async def evaluate(self, last: bool = False) -> None:
        """Held-out evaluation of the current policy (roles.evaluator): here, between two
        steps, or by the evaluator role while training goes on; the last one is waited
        for, so the run ends with it (and every earlier one) done."""
        config = self.config.eval
        if self.step in self.kept_evaluations:  # written before the stop, of these same weights
            self.log.lifecycle("controller.evaluation_kept", step=self.step)
        elif config.evaluator:
            self.evaluations.append(asyncio.ensure_future(self.ask_role("evaluator", Evaluate(self.step), self.config.call_timeout_s)))
        elif self.heldout is not None:
            await self._evaluate_here(config)
        if last:
            for outcome in await asyncio.gather(*self.evaluations, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    self.log.lifecycle("controller.evaluation_failed", error=repr(outcome))

    async def _evaluate_here(self, config: EvalConfig) -> None:
        current_trace_id.set(new_id())
        started = time.monotonic()
        numbers = await run_heldout(self, self.heldout, config, self.step, self.metrics, self.config.call_timeout_s)
        numbers["timing/eval_s"] = time.monotonic() - started
        self.log.lifecycle("controller.evaluated", step=self.step, **{k: numbers[k] for k in ("eval/accuracy", "eval/reward")})
        self.metrics.write(self.step, numbers)

    # ------------------------------------------------------------------ checkpoints
    async def save_checkpoint(self, run_dir: Path) -> Path:
        """checkpoints/step_N: the roles write their files, then the marker (roles.checkpoints)."""
        path = checkpoint_folder(run_dir, self.step)
        path.mkdir(parents=True, exist_ok=True)
        remove_marker(path)  # a folder a stopped session left is incomplete until the roles have rewritten it
        calls: list[Awaitable[Any]] = [self.ask_trainers(SaveCheckpoint(str(path)))]
        if self.use_critic:
            calls.append(self.ask_role("critic", SaveCheckpoint(str(path)), self.config.call_timeout_s))
        await asyncio.gather(*calls)
        state = {"step": self.step, "sampler": self.sampler_state or self.sampler.state_dict(),
                 "kl_controller": self.kl_controller.state_dict(), "version": self.version,
                 "prompt_counter": self.prompt_counter}
        write_marker(path, state)  # last, atomically, with every file's size: the checkpoint is complete
        self.log.lifecycle("controller.checkpoint", step=self.step, path=str(path))
        return path

    async def _resume(self, run_dir: Path) -> None:
        """Restore every role from the newest intact checkpoint; warn about newer ones."""
        path, skipped = newest_intact_checkpoint(run_dir)
        for damaged in skipped:
            self.log.lifecycle("controller.checkpoint_skipped", checkpoint=str(damaged.folder), problem=damaged.problem)
            print(f"troupe controller: warning: checkpoint {damaged}; resuming from an older one", file=sys.stderr, flush=True)
        if path is None:
            if any(damaged.finished for damaged in skipped):  # not just saves cut short: say so, do not start over
                raise CheckpointError(
                    f"no intact checkpoint to resume from in {run_dir}/checkpoints: " + "; ".join(map(str, skipped))
                    + ". Move the damaged folders away (all of checkpoints/ to start over), or set "
                    "roles.controller.config.resume=false"
                )
            return
        state = read_marker(path)
        calls: list[Awaitable[Any]] = [self.ask_trainers(LoadCheckpoint(str(path)))]
        if self.use_critic:
            calls.append(self.ask_role("critic", LoadCheckpoint(str(path)), self.config.call_timeout_s))
        done = await asyncio.gather(*calls)
        loaded: CheckpointDone = done[0][0]
        self.step = state["step"]
        self.sampler.load_state_dict(state["sampler"])
        self.sampler_state = state["sampler"]
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.prompt_counter = state["prompt_counter"]
        # the generators get the restored weights, under their own version (the next step's is then K + 1)
        report: PublishReport = (await self.ask_trainers(PublishWeights(republish=True)))[0]
        self.version = report.version
        self.log.lifecycle("controller.resumed", step=self.step, path=str(path), trainer_version=loaded.version, version=report.version)

    async def _ask_update_settings(self) -> UpdateSettings:
        """The trainer's update settings, checked against this config's ``trainer_ranks``."""
        settings: UpdateSettings = await self.ask("trainer-0", DescribeUpdate(), timeout=self.config.call_timeout_s)
        if settings.ranks != self.config.trainer_ranks:
            raise ActorError(f"controller config trainer_ranks is {self.config.trainer_ranks} but the trainer has "
                             f"ranks: {settings.ranks}; set trainer_ranks to the trainer role's count")
        return settings

    async def _wait_for_roles(self) -> None:
        """Until every role this algorithm uses has a ready instance (and every trainer rank)."""
        needed = needed_roles(self.config)
        deadline = time.monotonic() + self.config.startup_timeout_s
        while True:
            missing = {}
            for role, count in needed.items():
                ready = [r for r in await self.lookup(role=role) if r.state == "ready"]
                if len(ready) < count:
                    missing[role] = f"{len(ready)}/{count}"
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ActorError(f"roles not ready after {self.config.startup_timeout_s:g} s: {missing}")
            await asyncio.sleep(0.5)


def needed_roles(config: ControllerConfig) -> dict[str, int]:
    """The roles a controller with `config` uses, and how many ready instances of each it
    waits for before the first step; `troupe validate` checks a topology has them."""
    needed = {"generator": 1, "reward": 1, "trainer": config.trainer_ranks}
    if config.use_reference or config.kl.usage != "none":
        needed["reference"] = 1
    if config.use_critic or (config.use_critic is None and config.advantage.type == "gae"):
        needed["critic"] = 1
    if config.eval.evaluator:
        needed["evaluator"] = 1
    return needed


FINAL_METRICS = ("train/reward", "train/kl_div", "train/entropy", "train/response_length", "eval/accuracy", "eval/reward")


def final_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """The last value of each of FINAL_METRICS in a run's records (the HParams table's columns)."""
    final: dict[str, float] = {}
    for record in records:
        final.update({name: record[name] for name in FINAL_METRICS if isinstance(record.get(name), (int, float))})
    return final


async def wait_for_file(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


@asynccontextmanager
async def timed(timings: dict[str, float], name: str) -> AsyncIterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        timings[name] = time.monotonic() - started


async def timed_call(timings: dict[str, float], name: str, call: Awaitable[Any]) -> Any:
    async with timed(timings, name):
        return await call

"""The controller role: drives the RL dataflow, one step at a time. It only wires:
it asks the roles, hands their answers to the step's pure math, sends the result on.

A synchronous step (`Controller.sync_step`), and where each part lives:

    prompts  = the next batch of the shuffled dataset          roles/data.py
    rollouts = n responses per prompt from the generators      roles/generator.py
    plan     = which log-probs are "old", importance weights,  roles/algorithms/step.py
               KL loss                                         (plan_update)
    in parallel: reward scores, reference log-probs, critic values, and the trainer's
                 log-probs when the plan recomputes them
    batch    = KL, rewards, advantages, the step's numbers     roles/algorithms/step.py
                                                               (prepare_training_batch)
    Train (with the plan) to the trainer ranks and the critic  roles/trainer.py
    publish the new weights to the generators                  runtime/weights
    metrics -> metrics.jsonl, TensorBoard, subscribed clients  roles/metrics.py

In asynchronous mode (`Controller.async_steps`) generation runs one batch ahead: while
the trainer trains on one batch, generators already sample the next with the weights
they hold. Every row carries the version that produced it; groups with a row more
than `max_staleness` versions behind are dropped, and the plan weights the loss of the
rest by a truncated importance ratio (roles.algorithms.rollout_correction).

The controller keeps only the dataset position, the KL controller and the step
counter; its settings are `roles.controller_config.ControllerConfig`. Checkpoints are
saved and resumed by roles.controller_checkpoints: resuming from step K continues the
run as if it had not stopped (the rows and TensorBoard events written after K are
dropped, roles.metrics.rewind_metrics, and the restored weights go to the generators
again under their own version K).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from protocols.batch import Batch
from protocols.envelope import new_id
from protocols.rl import (
    Column,
    ComputeLogProbs,
    ComputeValues,
    Evaluate,
    DescribeUpdate,
    Scores,
    Train,
    TrainStats,
    UpdateSettings,
)
from protocols.run_events import Release, Subscribe, Subscribed
from protocols.weights import PublishReport, PublishWeights
from roles.algorithms import (
    UpdatePlan,
    build_kl_controller,
    drop_stale_groups,
    optimizer_steps_per_update,
    plan_update,
    prepare_training_batch,
    staleness,
)
from roles.controller_checkpoints import restore_newest, save_checkpoint
from roles.controller_config import ControllerConfig, EvalConfig, needed_roles
from roles.data import PromptDataset, PromptSampler, prompt_batch
from roles.dynamic_sampling import sample_informative
from roles.evaluation.summary import mean_terms
from roles.evaluator import run_heldout
from roles.metrics import (MetricsLog, final_metrics, read_metrics, rewind_metrics, run_hyperparameters,
                           scheduled_evaluation_steps, timed, timed_call)
from roles.episode_batch import episode_numbers, episode_settings
from roles.rollout import generate_episodes_on, generate_on, response_lengths, score_on, scores_of_episodes, wait_for_roles
from roles.sampling import SamplingParams
from roles.subscribers import Subscribers
from runtime.actor import Actor, handler
from runtime.errors import ActorError
from runtime.tasks import TaskSet
from runtime.weights.publisher import publish_metrics
from runtime.tracing import current_trace_id

INITIAL_VERSION = -1
STEP_LOG_METRICS = ("step", "train/reward", "train/kl_div", "train/loss")
"""What the controller's log says of each step (``controller.step``)."""


class Controller(Actor):
    """Drives the RL dataflow of one run, step after step (see the module docstring).

    One instance per run. It starts its loop (`_run`) when it starts: it loads the
    tokenizer and the prompts, waits for every role it needs (`needed_roles`), resumes
    from the newest intact checkpoint, then runs `config.steps` steps, saving
    checkpoints and evaluating on schedule, and stops the actor when the last
    evaluation is done and every holding client has released the run. It owns the tasks
    it starts: evaluations in the evaluator role (`evaluations`) and, in async mode, the
    generation running ahead; both are cancelled and awaited if it stops early.
    Handlers: `Subscribe` / `Release` from clients of the Python API (roles.subscribers).
    """

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
        self.evaluations = TaskSet(on_error=lambda error: self.log.lifecycle("controller.evaluation_failed", error=repr(error)))
        """Evaluations sent to the evaluator role: awaited before the run ends, cancelled if
        the controller stops first; a failed one is logged, and training goes on."""
        self.kept_evaluations: set[int] = set()
        """The step resumed from, when the stopped session had already evaluated it (the
        same weights): that evaluation is kept, not repeated."""
        self.update_settings: UpdateSettings | None = None
        """How the trainer turns a batch into optimizer steps (asked once, for
        ``recompute_logprobs: auto``)."""
        self.subscribers = Subscribers(self.ask, self.lookup, self.log.lifecycle, config.steps)
        """Clients that receive every metrics record (the Python `Run`)."""

    # ------------------------------------------------------------------ the run
    async def on_start(self) -> None:
        self.start_background(self._run(), "run")

    async def on_stop(self) -> None:
        await self.evaluations.close()  # still running when the run stopped early

    @handler
    async def subscribe_client(self, request: Subscribe) -> Subscribed:
        """A client's subscription to the run's metrics (roles.subscribers)."""
        return self.subscribers.subscribe(request)

    @handler
    async def release_client(self, request: Release) -> None:
        """A holding client is done with the run's roles (roles.subscribers)."""
        self.subscribers.release(request)

    async def _run(self) -> None:
        config = self.config
        run_dir = self.run_dir or Path.cwd()
        from transformers import AutoTokenizer

        self.tokenizer = await self.compute.run(lambda: AutoTokenizer.from_pretrained(config.tokenizer, local_files_only=True))
        self.dataset = await self.compute.run(PromptDataset.load, config.data, self.tokenizer)
        self.sampler = PromptSampler(len(self.dataset), config.prompts_per_step, config.data.shuffle, config.data.seed)
        self.heldout = await self.compute.run(PromptDataset.load, config.eval.data, self.tokenizer) if config.eval.data else None
        await wait_for_roles(self, needed_roles(config), config.startup_timeout_s)  # every trainer rank among them
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
        async with aclosing(steps):  # closed, and its generation ahead cancelled, if a step fails
            async for record in steps:
                self.log.lifecycle("controller.step", **{k: v for k, v in record.items() if k in STEP_LOG_METRICS})
                if self.step == config.steps or (config.checkpoint_every and self.step % config.checkpoint_every == 0):
                    await self.save_checkpoint(run_dir)
                if self.evaluation_due():
                    await self.evaluate()
        await self.evaluate(last=True)
        self.metrics.hparams(run_hyperparameters(run_dir), final_metrics(read_metrics(run_dir)), self.step)
        self.metrics.close()
        self.log.lifecycle("controller.steps_done", steps=self.step)
        await self.subscribers.finish(self.step, config.hold_timeout_s)
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
        if self.config.dynamic_sampling.enabled:  # rounds until the step is full of informative groups
            batch, scores, drawn = await sample_informative(self, timings)
        else:
            async with timed(timings, "generate"):
                batch, scores, drawn = await self.generate(self.next_prompts(), self.config.sampling), None, {}
        batch, plan, numbers = await self.prepare(batch, timings, scores)
        return await self.train_and_publish(batch, plan, {**numbers, **drawn}, timings, started)

    # ------------------------------------------------------------------ async
    async def async_steps(self) -> AsyncIterator[dict[str, Any]]:
        """Generation runs one batch ahead of training."""
        ahead: asyncio.Task[tuple[Batch, float, dict[str, int], str]] | None = None
        async with TaskSet() as generating:  # a generation still ahead when the loop ends is cancelled
            while self.step < self.config.steps:
                started = time.monotonic()
                if ahead is None:
                    ahead = generating.start(self._generate_ahead(), "generate-ahead")
                batch, generate_s, sampler_state, trace = await ahead
                current_trace_id.set(trace)  # the batch's trace, begun when its generation began
                waited = time.monotonic() - started
                more = self.step + 1 < self.config.steps
                ahead = generating.start(self._generate_ahead(), "generate-ahead") if more else None
                timings = {"generate": generate_s, "generate_wait": waited}
                batch, dropped = drop_stale_groups(batch, self.version, self.config.max_staleness)
                if batch.size == 0:
                    self.log.lifecycle("controller.all_stale", step=self.step + 1, dropped=dropped)
                    continue
                batch, plan, numbers = await self.prepare(batch, timings)
                numbers["train/staleness"] = float(staleness(batch.tensors[Column.VERSION], self.version).float().mean())
                numbers["train/stale_dropped"] = float(dropped)
                self.sampler_state = sampler_state
                yield await self.train_and_publish(batch, plan, numbers, timings, started)

    async def _generate_ahead(self) -> tuple[Batch, float, dict[str, int], str]:
        trace = new_id()
        current_trace_id.set(trace)  # this task's own context
        prompts = self.next_prompts()
        state = self.sampler.state_dict()
        started = time.monotonic()
        batch = await self.generate(prompts, self.config.sampling)
        return batch, time.monotonic() - started, state, trace

    # ------------------------------------------------------------------ the phases
    def next_prompts(self) -> Batch:
        rows = [self.dataset[i] for i in self.sampler.next_batch()]
        self.prompt_counter += 1
        prompts = prompt_batch(rows, group=str(self.prompt_counter))
        return prompts.with_columns(episode_row=[row.record for row in rows]) if self.config.episodes else prompts

    async def generate(self, prompts: Batch, sampling: SamplingParams) -> Batch:
        config, pad = self.config, self.tokenizer.pad_token_id
        if config.episodes is not None:  # multi-turn: each sample an episode with the environment role
            return await generate_episodes_on(self, prompts, sampling, episode_settings(config.episodes), pad, config.call_timeout_s)
        return await generate_on(self, prompts, sampling, pad, config.call_timeout_s)

    def plan_for(self, batch: Batch) -> UpdatePlan:
        """How the trainer updates on `batch` (roles.algorithms.step.plan_update)."""
        config, settings = self.config, self.update_settings
        steps = (optimizer_steps_per_update(batch.size, settings.ranks, settings.ppo_epochs, settings.mini_batch_size)
                 if settings is not None else None)  # asked only for recompute_logprobs: auto, the one that reads it
        return plan_update(config.kl, config.recompute_logprobs, steps, config.effective_rollout_correction)

    async def prepare(self, batch: Batch, timings: dict[str, float],
                      scores: Scores | None = None) -> tuple[Batch, UpdatePlan, dict[str, float]]:
        """Reference, critic, reward (unless the batch comes with its `scores`) and, when the
        plan needs them, old log-probs in parallel, then the step's math (roles.algorithms.step)."""
        config, temperature, plan = self.config, self.config.sampling.temperature, self.plan_for(batch)
        if config.episodes is not None:  # scored by their environments
            scores = scores_of_episodes(batch)
        calls: dict[str, Awaitable[Any]] = {} if scores is not None else {"reward": score_on(self, batch, config.call_timeout_s)}
        if self.use_reference:  # the reference role's, or a LoRA trainer's base model's (ranks: same gathers either order)
            calls["reference"] = (self.ask_role("reference", ComputeLogProbs(batch, temperature), config.call_timeout_s)
                                  if config.reference_from == "reference"
                                  else self.ask_trainers(ComputeLogProbs(batch, temperature, base=True), first=True))
        if self.use_critic:
            calls["values"] = self.ask_role("critic", ComputeValues(batch), config.call_timeout_s)
        if plan.old_logprobs == "recomputed":
            calls["old_logprobs"] = self.ask_trainers(ComputeLogProbs(batch, temperature), first=True)
        result = dict(zip(calls, await asyncio.gather(*(timed_call(timings, name, call) for name, call in calls.items()))))
        scores = result["reward"] if scores is None else scores
        columns: dict[str, Any] = {Column.SCORE: torch.tensor(scores.scores, dtype=torch.float32),
                                   Column.EXTRACTED: scores.extracted}
        if "reference" in result:
            columns[Column.REF_LOGPROBS] = result["reference"].logprobs
        if "values" in result:
            columns[Column.VALUES] = result["values"].values
        if "old_logprobs" in result:
            columns[Column.OLD_LOGPROBS] = result["old_logprobs"].logprobs
        generated = float(batch.tensors[Column.RESPONSE_MASK].sum())  # before overlong.mask_truncated zeroes rows
        async with timed(timings, "advantages"):
            batch, numbers = prepare_training_batch(batch.with_columns(**columns), plan, config.advantage, config.kl,
                                                    self.kl_controller.kl_coef, config.overlong, config.sampling.max_new_tokens)
        # the reward's named terms, when it reports them (train/correctness, train/format)
        numbers.update({"perf/tokens_generated": generated, **{f"train/{k}": v for k, v in mean_terms(scores.terms).items()},
                        **episode_numbers(batch)})
        return batch, plan, numbers

    async def train_and_publish(self, batch: Batch, plan: UpdatePlan, numbers: dict[str, float],
                                timings: dict[str, float], started: float) -> dict[str, Any]:
        config = self.config
        self.step += 1
        train = Train(batch, self.step, config.sampling.temperature, self.kl_controller.kl_coef,
                      plan.kl_loss_estimator, plan.old_logprobs, plan.rollout_correction)
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
            **publish_metrics(report),
            "perf/tokens_per_s": numbers.pop("perf/tokens_generated") / max(timings["generate"], 1e-9),
            "perf/samples_per_s": batch.size / step_s,
            "perf/rollout_version_min": float(batch.tensors[Column.VERSION].min()),
            **{f"timing/{name}_s": seconds for name, seconds in timings.items()},
            "timing/step_s": step_s,
        })
        if self.sampler_state == {} or config.mode == "sync":
            self.sampler_state = self.sampler.state_dict()
        valid = batch.tensors[Column.RESPONSE_MASK] > 0
        self.metrics.histograms(self.step, {"reward": batch.tensors[Column.SCORE], "response_length": response_lengths(batch),
                                            "advantages": batch.tensors[Column.ADVANTAGES][valid]})
        return await self.subscribers.publish(self.metrics.write(self.step, numbers))

    async def ask_trainers(self, request: Any, first: bool = False) -> Any:
        """The same message to every trainer rank, in the same order (their collectives
        pair up): the list of their answers, rank 0's first (with `first`, rank 0's alone)."""
        answers = list(await asyncio.gather(*(
            self.ask(f"trainer-{rank}", request, timeout=self.config.call_timeout_s) for rank in range(self.config.trainer_ranks)
        )))
        return answers[0] if first else answers

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
            self.evaluations.start(self.ask_role("evaluator", Evaluate(self.step), self.config.call_timeout_s), f"evaluate-{self.step}")
        elif self.heldout is not None:
            await self._evaluate_here(config)
        if last:  # a failure is logged by `self.evaluations` as it happens
            await asyncio.gather(*self.evaluations, return_exceptions=True)

    async def _evaluate_here(self, config: EvalConfig) -> None:
        current_trace_id.set(new_id())
        started = time.monotonic()
        numbers = await run_heldout(self, self.heldout, config, self.step, self.metrics, self.config.call_timeout_s)
        numbers["timing/eval_s"] = time.monotonic() - started
        self.log.lifecycle("controller.evaluated", step=self.step, **{k: numbers[k] for k in ("eval/accuracy", "eval/reward")})
        await self.subscribers.publish(self.metrics.write(self.step, numbers), evaluation=True)

    # ------------------------------------------------------------------ checkpoints
    async def save_checkpoint(self, run_dir: Path) -> Path:
        """checkpoints/step_N with this step's state (roles.controller_checkpoints)."""
        state = {"step": self.step, "sampler": self.sampler_state or self.sampler.state_dict(),
                 "kl_controller": self.kl_controller.state_dict(), "version": self.version,
                 "prompt_counter": self.prompt_counter}
        path = await save_checkpoint(run_dir, self.step, state, self.ask_stateful_roles)
        self.log.lifecycle("controller.checkpoint", step=self.step, path=str(path))
        return path

    async def _resume(self, run_dir: Path) -> None:
        """Restore every role and this controller from the newest intact checkpoint."""
        restored = await restore_newest(run_dir, self.ask_stateful_roles, self.log.lifecycle)
        if restored is None:
            return
        state = restored.state
        self.step = state["step"]
        self.sampler.load_state_dict(state["sampler"])
        self.sampler_state = state["sampler"]
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.prompt_counter = state["prompt_counter"]
        # the generators get the restored weights, under their own version (the next step's is then K + 1)
        report: PublishReport = (await self.ask_trainers(PublishWeights(republish=True)))[0]
        self.version = report.version
        self.log.lifecycle("controller.resumed", step=self.step, path=str(restored.path),
                           trainer_version=restored.trainer_version, version=report.version)

    async def ask_stateful_roles(self, request: Any) -> list[Any]:
        """`request` to every trainer rank and, with a critic, to it; trainer rank 0's
        answer first."""
        critic = [self.ask_role("critic", request, self.config.call_timeout_s)] if self.use_critic else []
        trainers, *others = await asyncio.gather(self.ask_trainers(request), *critic)
        return [*trainers, *others]

    async def _ask_update_settings(self) -> UpdateSettings:
        """The trainer's update settings, checked against this config's ``trainer_ranks``."""
        settings: UpdateSettings = await self.ask("trainer-0", DescribeUpdate(), timeout=self.config.call_timeout_s)
        if settings.ranks != self.config.trainer_ranks:
            raise ActorError(f"controller config trainer_ranks is {self.config.trainer_ranks} but the trainer has "
                             f"ranks: {settings.ranks}; set trainer_ranks to the trainer role's count")
        return settings

"""Held-out evaluation: the evaluator role, and the evaluators users write.

The evaluator role (``entry: evaluator``) is its own process. When the controller tells
it `Evaluate(step)` (every ``eval.every_steps`` steps, and after the last), it samples
the held-out prompts on the live generators with the weights they hold, scores them
with the reward role, and computes every number of roles.evaluation.summary (reward,
accuracy with pass@k / maj@k / mean@k and confidence intervals, diversity on tokens and
words). It writes them as ``eval/<name>`` to metrics.jsonl and TensorBoard (with a few
responses as text), and every sample to ``eval/step_N.jsonl``. Training goes on while
it works: the controller only waits for the last evaluation, before the run ends.

Custom evaluators are classes with ``evaluate(ctx) -> dict[str, float]`` (`Evaluator`);
the topology lists them by import path (``evaluators: [{entry: "pkg.mod:Class", args:
{...}}]``) and the role runs them after the built-in one, on a worker thread, with a
context (`EvalContext`) whose ``generate`` and ``score`` reach the live roles.
`launch.Run.register_evaluator` runs the same classes from a Python script.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from protocols.batch import Batch
from protocols.rl import Evaluate, Evaluated, Generate, Rollouts, Score, Scores
from roles.data import DataConfig, PromptDataset
from roles.episode_batch import EpisodesConfig, episode_numbers, episode_settings
from roles.evaluation.summary import EvalSample, summarize_samples
from roles.metrics import MetricsLog
from roles.sampling import SamplingParams
from roles.rollout import (
    generate_episodes_on,
    generate_on,
    response_id_lists,
    sampling_message,
    score_on,
    scores_of_episodes,
)
from runtime.actor import Actor, handler


# ---------------------------------------------------------------------- user evaluators
class Evaluator:
    """Base of evaluators: `evaluate(ctx)` returns named floats (logged as ``eval/<name>``)."""

    every_steps: int = 1
    """From Python (`Run.register_evaluator`): evaluate after every N-th training step.
    In the evaluator role: ignored, evaluators run at every evaluation."""

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate(ctx)")


@dataclass
class EvalContext:
    """What an evaluator can use: the step, the weights version the generators hold, the
    tokenizer, and the live generator and reward roles (`generate`, `score`)."""

    step: int
    weights_version: int
    run_dir: Path
    tokenizer: Any
    ask: Callable[[str, Any], Any]
    """Sends a message to a ready instance of a role and returns its reply (blocking)."""
    calls: list[str] = field(default_factory=list)

    def generate(self, prompts: Sequence[str], **sampling: Any) -> list[dict[str, Any]]:
        """Sample responses on a live generator; one dict per response: ``prompt``,
        ``response``, ``version`` (the weights version that produced it)."""
        ids = [self.tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
        batch = Batch(columns={"prompt_ids": ids, "prompt": list(prompts)})
        reply: Rollouts = self._ask("generator", Generate(batch, sampling_message(SamplingParams(**sampling))))
        return [
            {"prompt": prompt, "response": response, "version": version}
            for prompt, response, version in zip(reply.batch.columns["prompt"], reply.batch.columns["response"],
                                                 reply.batch.tensors["version"].tolist())
        ]

    def score(self, prompts: Sequence[str], responses: Sequence[str], ground_truths: Sequence[Any],
              data_source: str | Sequence[str]) -> list[float]:
        """Score responses with the live reward role."""
        sources = [data_source] * len(prompts) if isinstance(data_source, str) else list(data_source)
        reply: Scores = self._ask("reward", Score(list(prompts), list(responses), list(ground_truths), sources))
        return reply.scores

    def _ask(self, role: str, message: Any) -> Any:
        self.calls.append(role)
        return self.ask(role, message)


def load_evaluator(entry: str, args: dict[str, Any]) -> Evaluator:
    """An evaluator from its import path ``package.module:Class`` and constructor arguments."""
    module_name, _, class_name = entry.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"evaluator entry {entry!r} is not 'package.module:Class'")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if cls is None:
        raise ValueError(f"{module_name} has no {class_name}")
    evaluator = cls(**args)
    if not callable(getattr(evaluator, "evaluate", None)):
        raise TypeError(f"{entry} has no evaluate(ctx) method")
    return evaluator


# ---------------------------------------------------------------------- the built-in evaluation
class HeldoutConfig(BaseModel):
    """What the built-in evaluation samples and how it counts."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    data: DataConfig | None = None
    """Held-out prompts; None: no held-out evaluation."""
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(n=1, temperature=1.0))
    """How held-out responses are sampled (n per prompt: pass@k needs n >= k)."""
    correct_at: float = 1.0
    """A response counts as correct when its score is at least this (for rewards without a
    ``correctness`` term; the math rewards' correctness decides for their rows)."""
    ks: list[int] | None = None
    """The k of pass@k, maj@k and mean@k (default 1, 2, 4, ... up to n, and n)."""
    self_bleu_sample: int | None = Field(128, ge=1)
    """Hypotheses self-BLEU scores per set (None: all; it is quadratic)."""
    text_samples: int = Field(4, ge=0)
    """Responses shown in TensorBoard's text tab per evaluation."""
    episodes: EpisodesConfig | None = None
    """Multi-turn held-out episodes with the environment role (docs/agents.md), scored by
    the environment: ``eval/accuracy`` is then the share of episodes that succeeded, and
    ``eval/episode_*`` count turns, tool calls, tool errors and end reasons; None: one
    response per sample, scored by the reward role."""


def heldout_prompts(dataset: PromptDataset, episodes: bool = False) -> Batch:
    """Every held-out row as a prompt batch (``prompt_index`` groups each prompt's
    samples); with `episodes`, the rows as read too (``episode_row``)."""
    rows = list(dataset)
    columns = {
        "prompt_ids": [row.prompt_ids for row in rows], "prompt": [row.prompt for row in rows],
        "ground_truth": [row.ground_truth for row in rows], "data_source": [row.data_source for row in rows],
        "prompt_index": [row.index for row in rows],
    }
    return Batch(columns={**columns, "episode_row": [row.record for row in rows]} if episodes else columns)


def scored_samples(batch: Batch, scores: Scores) -> list[EvalSample]:
    """The generated, scored rows as `EvalSample`s."""
    ids = response_id_lists(batch)
    versions = batch.tensors["version"].tolist()
    columns = batch.columns
    terms = scores.terms if len(scores.terms) == batch.size else [{}] * batch.size
    return [
        EvalSample(columns["prompt"][i], columns["response"][i], ids[i], scores.scores[i], scores.extracted[i],
                   columns["ground_truth"][i], versions[i], columns["prompt_index"][i], terms[i])
        for i in range(batch.size)
    ]


def evaluation_numbers(samples: Sequence[EvalSample], config: HeldoutConfig) -> dict[str, float]:
    """Every summary number, as ``eval/<name>``, plus the weights versions evaluated."""
    numbers = summarize_samples(samples, config.correct_at, config.ks, config.self_bleu_sample)
    versions = [sample.weights_version for sample in samples]
    numbers.update({"weights_version_min": float(min(versions)), "weights_version_max": float(max(versions))})
    return {f"eval/{name}": value for name, value in numbers.items()}


def write_samples(path: Path, samples: Sequence[EvalSample]) -> None:
    """One JSON line per sample: prompt, response, extracted answer, ground truth, score,
    weights version (written to a temporary file first, so a reader never sees half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "w", encoding="utf-8") as out:
        for sample in samples:
            out.write(json.dumps(sample.as_record()) + "\n")
    partial.replace(path)


def samples_markdown(samples: Sequence[EvalSample], count: int) -> str:
    """The first `count` samples as a markdown table (TensorBoard's text tab renders it)."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")[:300]

    lines = ["| prompt | response | extracted | ground truth | score |", "|---|---|---|---|---|"]
    lines += [f"| {cell(s.prompt)} | {cell(s.response)} | {cell(s.extracted)} | {cell(s.ground_truth)} | {s.score:g} |"
              for s in samples[:count]]
    return "\n".join(lines)


async def run_heldout(actor: Actor, dataset: PromptDataset, config: HeldoutConfig, step: int, metrics: MetricsLog,
                      timeout: float) -> dict[str, float]:
    """The built-in evaluation from a role: sample the held-out prompts on the live
    generators, score them with the reward role, dump the samples to
    ``eval/step_N.jsonl``, show a few in TensorBoard; returns the ``eval/`` numbers."""
    tokenizer, episodes = actor.tokenizer, config.episodes
    prompts = heldout_prompts(dataset, episodes is not None)
    if episodes is not None:  # multi-turn: scored by the environments
        batch = await generate_episodes_on(actor, prompts, config.sampling, episode_settings(episodes),
                                           tokenizer.pad_token_id, timeout)
        scores = scores_of_episodes(batch)
    else:
        batch = await generate_on(actor, prompts, config.sampling, tokenizer.pad_token_id, timeout)
        scores = await score_on(actor, batch, timeout)
    samples = scored_samples(batch, scores)
    numbers = {**await asyncio.to_thread(evaluation_numbers, samples, config), **episode_numbers(batch, "eval")}
    write_samples(metrics.files.eval_samples(step), samples)
    metrics.text("eval/samples", samples_markdown(samples, config.text_samples), step)
    return numbers


# ---------------------------------------------------------------------- the role
class CustomEvaluatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    entry: str
    """Import path of the class, ``package.module:Class``."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of its constructor."""
    name: str | None = None
    """Its numbers are logged as ``eval/<name>/<key>`` (default: the class name)."""


class EvaluatorConfig(HeldoutConfig):
    """The evaluator role: the built-in held-out evaluation and any custom evaluators."""

    tokenizer: str
    """A local Hugging Face tokenizer (the policy's model directory)."""
    evaluators: list[CustomEvaluatorConfig] = Field(default_factory=list)
    """Your own evaluators, run at every evaluation after the built-in one (docs/evaluation.md)."""
    tensorboard: bool = True
    """Write the evaluation's numbers to TensorBoard under ``tb/`` too (metrics.jsonl always)."""
    call_timeout_s: float = Field(1800.0, gt=0)
    """Deadline of one generate or score call."""


class HeldoutEvaluator(Actor):
    """The evaluator role: on `Evaluate(step)` it runs the built-in held-out evaluation
    and the custom evaluators, and logs their numbers (see the module docstring)."""

    role = "evaluator"
    Config: ClassVar[type[BaseModel]] = EvaluatorConfig

    def __init__(self, name: str, config: EvaluatorConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config
        self.custom: list[tuple[str, Evaluator]] = []
        self.metrics: MetricsLog | None = None

    async def on_start(self) -> None:
        from transformers import AutoTokenizer

        config = self.config
        self.tokenizer = await self.compute.run(lambda: AutoTokenizer.from_pretrained(config.tokenizer, local_files_only=True))
        self.dataset = await self.compute.run(PromptDataset.load, config.data, self.tokenizer) if config.data else None
        self.custom = [(spec.name or spec.entry.rpartition(":")[2], load_evaluator(spec.entry, spec.args)) for spec in config.evaluators]
        self.run_path = self.run_dir or Path.cwd()
        self.metrics = MetricsLog(self.run_path, config.tensorboard)

    async def on_stop(self) -> None:
        if self.metrics is not None:  # None when on_start failed before it
            self.metrics.close()

    @handler
    async def evaluate(self, request: Evaluate) -> Evaluated:
        started = time.monotonic()
        numbers: dict[str, float] = {}
        assert self.metrics is not None
        if self.dataset is not None:
            numbers = await run_heldout(self, self.dataset, self.config, request.step, self.metrics, self.config.call_timeout_s)
        version = int(numbers.get("eval/weights_version_max", -1))
        for name, evaluator in self.custom:
            values = await asyncio.to_thread(evaluator.evaluate, self._context(request.step, version))
            numbers.update({f"eval/{name}/{key}": float(value) for key, value in values.items()})
        numbers["timing/eval_s"] = time.monotonic() - started
        self.metrics.write(request.step, numbers, source="evaluator")
        self.log.lifecycle("evaluator.evaluated", step=request.step, **{k: v for k, v in numbers.items() if k in SHOWN})
        return Evaluated(request.step, numbers)

    def _context(self, step: int, version: int) -> EvalContext:
        loop = asyncio.get_running_loop()

        def ask(role: str, message: Any) -> Any:  # on the worker thread: the call runs on the actor's loop
            return asyncio.run_coroutine_threadsafe(self.ask_role(role, message, self.config.call_timeout_s), loop).result()

        return EvalContext(step, version, self.run_path, self.tokenizer, ask)


SHOWN = ("eval/accuracy", "eval/reward", "eval/samples", "timing/eval_s")
"""The numbers the evaluator's lifecycle log line carries (all of them go to metrics.jsonl)."""

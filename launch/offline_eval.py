"""`troupe eval`: the held-out evaluation of roles.evaluator, outside a run.

The model is a local Hugging Face directory or a run's checkpoint (loaded the way
`troupe export` loads it); it samples in this process with the transformers backend,
and the reward functions of roles.rewards score the responses (the run's own reward
settings for a run). The numbers are the evaluator role's (roles.evaluation.summary).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols.rl import Scores
from roles.data import DataConfig, PromptDataset
from roles.evaluation.summary import EvalSample
from roles.evaluator import (
    HeldoutConfig,
    evaluation_numbers,
    heldout_prompts,
    scored_samples,
    write_samples,
)
from roles.generation import SamplingParams
from roles.rewards import RewardRouter, RewardsConfig
from runtime.run_dir import RunDir, step_of

REWARD_SHORTCUTS: dict[str, dict[str, Any]] = {
    "arithmetic": {"type": "arithmetic"},
    "gsm8k": {"type": "gsm8k"},
    "gsm8k-strict": {"type": "gsm8k", "method": "strict"},
    "gsm8k-flexible": {"type": "gsm8k", "method": "flexible"},
    "math": {"type": "math"},
    "code": {"type": "code"},
}
"""``--reward NAME``: the reward function for every row of the data."""


class EvalSetupError(RuntimeError):
    """The model, data or reward settings cannot be used; the text says what to give."""


@dataclass
class Policy:
    model: Any
    tokenizer: Any
    name: str
    version: int
    """The weights version of a run's checkpoint (-1 for a model directory)."""
    run_dir: Path | None
    step: int | None


def load_policy(path: Path, step: int | None = None) -> Policy:
    """A run directory's checkpoint (newest, or `step`'s) or a Hugging Face model directory."""
    if RunDir(path).is_run_dir() and RunDir(path).checkpoints.is_dir():
        from launch.export import ExportError, load_checkpoint_policy

        try:
            model, tokenizer, checkpoint, version = load_checkpoint_policy(path, step)
        except ExportError as error:
            raise EvalSetupError(str(error)) from error
        return Policy(model, tokenizer, f"{path.name}/{checkpoint.name}", version, path, step_of(checkpoint))
    if not (path / "config.json").exists():
        raise EvalSetupError(f"{path} is neither a Hugging Face model directory (config.json) nor a run with checkpoints")
    if step is not None:
        raise EvalSetupError("--step is for a run directory; a model directory has one set of weights")
    from roles.generation import load_causal_lm

    model, tokenizer = load_causal_lm(str(path), "float32", "cpu")
    return Policy(model, tokenizer, path.name, -1, None, None)


def rewards_config(run_dir: Path | None, reward: str | None, rewards_file: Path | None) -> RewardsConfig:
    """--reward / --rewards, else the run's reward role settings."""
    import yaml

    if reward is not None:
        if reward not in REWARD_SHORTCUTS:
            raise EvalSetupError(f"--reward {reward!r}: choose one of {', '.join(REWARD_SHORTCUTS)} (or --rewards FILE)")
        return RewardsConfig.model_validate({"default": REWARD_SHORTCUTS[reward]})
    if rewards_file is not None:
        return RewardsConfig.model_validate(yaml.safe_load(rewards_file.read_text()))
    if run_dir is not None:
        config = RunDir(run_dir).role_config("reward", "roles.reward:Reward")
        if config is not None:
            return RewardsConfig.model_validate(config.get("rewards", {}))
    raise EvalSetupError("say how to score the responses: --reward "
                         f"{'|'.join(REWARD_SHORTCUTS)}, or --rewards FILE (a roles.rewards config: by_data_source, default)")


def evaluate_offline(policy: Policy, data: Path, sampling: SamplingParams, rewards: RewardsConfig, config: HeldoutConfig,
                     chunk: int = 16, progress: Callable[[int, int], None] | None = None,
                     device: str = "cpu") -> tuple[dict[str, float], list[EvalSample]]:
    """Sample every prompt of `data` n times on `device` (``cpu``, ``cuda``), score,
    summarize; `progress(done, total)` is called after each chunk of prompts."""
    from roles.generation import HFBackend
    from roles.generator import rollout_batch

    dataset = PromptDataset.load(DataConfig(files=[str(data)], shuffle=False), policy.tokenizer)
    if len(dataset) == 0:
        raise EvalSetupError(f"{data} has no rows")
    backend = HFBackend(policy.model.to(device), policy.tokenizer, device)
    router = RewardRouter.from_config(rewards)
    prompts = heldout_prompts(dataset)
    samples: list[EvalSample] = []
    for start in range(0, prompts.size, chunk):
        piece = prompts.select(list(range(start, min(start + chunk, prompts.size))))
        output = backend.generate(piece.columns["prompt_ids"], sampling)
        batch = rollout_batch(piece, output, sampling.n, policy.version)
        results = router.score_batch(batch.columns["prompt"], batch.columns["response"], batch.columns["ground_truth"],
                                     batch.columns["data_source"])
        samples += scored_samples(batch, Scores([float(r.score) for r in results], [r.extracted for r in results],
                                                [r.terms for r in results]))
        if progress is not None:
            progress(min(start + chunk, prompts.size), prompts.size)
    return evaluation_numbers(samples, config), samples


def write_results(out: Path, policy: Policy, data: Path, sampling: SamplingParams, numbers: dict[str, float],
                  samples: list[EvalSample]) -> tuple[Path, Path]:
    """``summary.json`` (settings and numbers) and ``samples.jsonl`` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {"model": policy.name, "run_dir": str(policy.run_dir) if policy.run_dir else None, "step": policy.step,
               "weights_version": policy.version, "data": str(data), "sampling": sampling.model_dump(),
               "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "metrics": numbers}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_samples(out / "samples.jsonl", samples)
    return out / "summary.json", out / "samples.jsonl"

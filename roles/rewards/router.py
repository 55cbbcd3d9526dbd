"""Build reward functions from config and pick one per row's data source.

`build_reward_fn` turns one `RewardFunctionConfig` into a callable with the
reward signature. `RewardRouter` holds one function per ``data_source`` plus an
optional default, and scores single rows (``router(..., data_source=...)``) or
whole batches (`RewardRouter.score_batch`, which hands all rows of a batchable
function such as a reward model to it at once).

Heavy or optional dependencies are imported inside the builder: the reward
model pulls in torch and transformers, and ``roles.rewards.code`` (the sandboxed
`score_code`, wrapped as its batchable ``CodeReward``) is only needed when a
``code`` reward is configured.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Protocol, Sequence, cast, runtime_checkable

from roles.rewards.arithmetic import score_arithmetic
from roles.rewards.config import (
    ArithmeticRewardConfig,
    CodeRewardConfig,
    CustomRewardConfig,
    FinalNumberRewardConfig,
    Gsm8kRewardConfig,
    MathRewardConfig,
    RewardFunctionConfig,
    RewardModelRewardConfig,
    RewardsConfig,
)
from roles.rewards.custom import load_custom_reward
from roles.rewards.final_answer import score_final_number
from roles.rewards.gsm8k import score_gsm8k
from roles.rewards.math_reward import score_math
from roles.rewards.types import RewardResult


class RewardFn(Protocol):
    """A reward function: ``fn(prompt, response, ground_truth, **extra) -> RewardResult``."""

    def __call__(self, prompt: str, response: str, ground_truth: Any, **extra: Any) -> RewardResult: ...


@runtime_checkable
class BatchRewardFn(Protocol):
    """A reward function that also scores many rows in one call (e.g. `RewardModel`)."""

    def __call__(self, prompt: str, response: str, ground_truth: Any, **extra: Any) -> RewardResult: ...

    def score_many(
        self, prompts: Sequence[str], responses: Sequence[str], ground_truths: Sequence[Any]
    ) -> list[RewardResult]: ...


class UnknownDataSourceError(LookupError):
    """A row's data source has no reward function and no default is configured."""


def build_reward_fn(config: RewardFunctionConfig) -> RewardFn:
    """Return the reward function a config describes (loading a reward model now)."""
    if isinstance(config, ArithmeticRewardConfig):
        return score_arithmetic
    if isinstance(config, Gsm8kRewardConfig):
        return functools.partial(score_gsm8k, **config.model_dump(exclude={"type"}))
    if isinstance(config, FinalNumberRewardConfig):
        return score_final_number
    if isinstance(config, MathRewardConfig):
        return functools.partial(score_math, **config.model_dump(exclude={"type"}))
    if isinstance(config, CodeRewardConfig):
        # imported only when configured: the sandbox is a separate module. CodeReward
        # validates the options now (a typo is an error) and scores batches concurrently.
        from roles.rewards.code import CodeReward

        return CodeReward(**config.options)
    if isinstance(config, RewardModelRewardConfig):
        from roles.rewards.reward_model import RewardModel  # torch and transformers load only when needed

        options = config.model_dump(exclude={"type", "path", "device", "dtype"})
        return RewardModel.from_directory(config.path, device=config.device, dtype=config.dtype, **options)
    if isinstance(config, CustomRewardConfig):
        return load_custom_reward(config.function, **config.kwargs)
    raise TypeError(f"unknown reward config {type(config).__name__}; expected one of RewardFunctionConfig")


class RewardRouter:
    """Maps a row's ``data_source`` to its reward function."""

    def __init__(self, functions: Mapping[str, RewardFn], default: RewardFn | None = None) -> None:
        """
        Args:
            functions: reward function per exact data-source string.
            default: used for data sources not in ``functions``; None makes them an error.
        """
        self._functions = dict(functions)
        self._default = default

    @classmethod
    def from_config(cls, config: RewardsConfig) -> RewardRouter:
        """Build every configured function once; identical configs share one instance
        (two data sources graded by the same reward model load it once)."""
        built: dict[str, RewardFn] = {}

        def build_once(function_config: RewardFunctionConfig) -> RewardFn:
            key = function_config.model_dump_json()
            if key not in built:
                built[key] = build_reward_fn(function_config)
            return built[key]

        functions = {source: build_once(spec) for source, spec in config.by_data_source.items()}
        default = build_once(config.default) if config.default is not None else None
        return cls(functions, default)

    def function_for(self, data_source: str) -> RewardFn:
        """The reward function of ``data_source``.

        Raises:
            UnknownDataSourceError: it is not configured and there is no default.
        """
        function = self._functions.get(data_source, self._default)
        if function is None:
            raise UnknownDataSourceError(
                f"no reward function for data_source {data_source!r} (configured: {sorted(self._functions)}); "
                "add it under rewards.by_data_source or set rewards.default"
            )
        return function

    def __call__(
        self, prompt: str, response: str, ground_truth: Any, *, data_source: str, **extra: Any
    ) -> RewardResult:
        """Score one row with its data source's reward function."""
        return self.function_for(data_source)(prompt, response, ground_truth, **extra)

    def score_batch(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        ground_truths: Sequence[Any],
        data_sources: Sequence[str],
        extras: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[RewardResult]:
        """Score rows of mixed data sources; results come back in row order.

        Rows whose function is a `BatchRewardFn` are scored together in one
        ``score_many`` call per function (their ``extras`` are not passed);
        all other rows one by one.

        Args:
            prompts, responses, ground_truths, data_sources: one entry per row.
            extras: optional per-row keyword arguments for the reward functions.
        """
        row_count = len(prompts)
        lengths = {len(responses), len(ground_truths), len(data_sources), row_count}
        if extras is not None:
            lengths.add(len(extras))
        if len(lengths) != 1:
            raise ValueError(
                f"score_batch needs one entry per row in every argument, got lengths "
                f"prompts={row_count} responses={len(responses)} ground_truths={len(ground_truths)} "
                f"data_sources={len(data_sources)}" + (f" extras={len(extras)}" if extras is not None else "")
            )
        results: list[RewardResult | None] = [None] * row_count
        batched_rows: dict[int, list[int]] = {}
        batched_functions: dict[int, BatchRewardFn] = {}
        for row, source in enumerate(data_sources):
            function = self.function_for(source)
            if isinstance(function, BatchRewardFn):
                batched_rows.setdefault(id(function), []).append(row)
                batched_functions[id(function)] = function
            else:
                extra = extras[row] if extras is not None else {}
                results[row] = function(prompts[row], responses[row], ground_truths[row], **extra)
        for key, rows in batched_rows.items():
            scored = batched_functions[key].score_many(
                [prompts[row] for row in rows],
                [responses[row] for row in rows],
                [ground_truths[row] for row in rows],
            )
            for row, result in zip(rows, scored, strict=True):
                results[row] = result
        return cast(list[RewardResult], results)  # every row was assigned above

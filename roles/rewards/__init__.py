"""Reward functions: rule-based, math (checked by math-verify), reward model, custom and sandboxed code.

Every reward function has the signature
``fn(prompt: str, response: str, ground_truth: Any, **extra) -> RewardResult``.
`RewardRouter.from_config` picks one per row's ``data_source``; see
docs/rewards.md for each function's rules and options. The math rewards report
their terms (``correctness``, ``format``) in `RewardResult.terms`.

`RewardModel` (torch, transformers) and `score_code` (the sandbox) are imported
on first access, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from roles.rewards.arithmetic import extract_leading_integer, score_arithmetic
from roles.rewards.boxed import extract_last_boxed
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
from roles.rewards.custom import load_custom_reward, to_reward_result
from roles.rewards.final_answer import extract_final_number, score_final_number
from roles.rewards.gsm8k import extract_gsm8k_answer, score_gsm8k
from roles.rewards.math_reward import score_math
from roles.rewards.router import (
    BatchRewardFn,
    RewardFn,
    RewardRouter,
    UnknownDataSourceError,
    build_reward_fn,
)
from roles.rewards.types import RewardResult
from roles.sandbox.symbolic import shutdown_symbolic_workers

_LAZY_ATTRIBUTES = {
    "RewardModel": "roles.rewards.reward_model",
    "score_code": "roles.rewards.code",
}

__all__ = [
    "ArithmeticRewardConfig",
    "BatchRewardFn",
    "CodeRewardConfig",
    "CustomRewardConfig",
    "FinalNumberRewardConfig",
    "Gsm8kRewardConfig",
    "MathRewardConfig",
    "RewardFn",
    "RewardFunctionConfig",
    "RewardModel",
    "RewardModelRewardConfig",
    "RewardResult",
    "RewardRouter",
    "RewardsConfig",
    "UnknownDataSourceError",
    "build_reward_fn",
    "extract_final_number",
    "extract_gsm8k_answer",
    "extract_last_boxed",
    "extract_leading_integer",
    "load_custom_reward",
    "score_arithmetic",
    "score_code",
    "score_final_number",
    "score_gsm8k",
    "score_math",
    "shutdown_symbolic_workers",
    "to_reward_result",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY_ATTRIBUTES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'roles.rewards' has no attribute {name!r}")
    return getattr(importlib.import_module(module_name), name)

"""User-supplied reward functions, loaded by import path.

A custom reward is any callable ``fn(prompt, response, ground_truth, **extra)``
named as ``"package.module:function"`` (the module must be importable from the
reward process, e.g. installed or on ``PYTHONPATH``). Its return value is
normalised into a `RewardResult` by `to_reward_result`:

- a real number (int, float, bool) -> ``RewardResult(score=float(value))``;
- a dict -> ``"score"`` is required; ``"extracted"`` becomes the extracted
  answer (converted with ``str``; None stays None); every other key goes into
  ``info``;
- a `RewardResult` -> used as is (the only way to mark a result unscored).

A score must be finite: NaN or infinity would poison the training batch.
"""

from __future__ import annotations

import functools
import importlib
import math
from numbers import Real
from typing import Any, Callable

from roles.rewards.types import RewardResult


def load_custom_reward(import_path: str, **bound_keywords: Any) -> Callable[..., RewardResult]:
    """Import ``"package.module:function"`` and wrap it to return `RewardResult`.

    Args:
        import_path: the module's dotted path, a colon, the attribute name
            (nested attributes with dots, e.g. ``"pkg.mod:Scorer.score"``).
        **bound_keywords: keyword arguments passed on every call (row fields
            passed as ``extra`` at call time override them).

    Raises:
        ValueError: ``import_path`` is not of the form ``module:function``.
        ImportError: the module cannot be imported.
        AttributeError: the module has no such attribute.
        TypeError: the attribute is not callable.
    """
    module_name, separator, attribute_path = import_path.partition(":")
    if not separator or not module_name or not attribute_path:
        raise ValueError(
            f"custom reward function {import_path!r} must look like 'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:  # re-raised with the config value that caused it
        raise ImportError(
            f"cannot import module {module_name!r} for custom reward {import_path!r}: {error}; "
            "install the package or add its folder to PYTHONPATH"
        ) from error
    target: Any = module
    for attribute in attribute_path.split("."):
        if not hasattr(target, attribute):
            raise AttributeError(
                f"custom reward {import_path!r}: {getattr(target, '__name__', target)!r} has no "
                f"attribute {attribute!r}; check the name after ':'"
            )
        target = getattr(target, attribute)
    if not callable(target):
        raise TypeError(
            f"custom reward {import_path!r} is a {type(target).__name__}, not a function; "
            "point it at a callable fn(prompt, response, ground_truth, **extra)"
        )
    function: Callable[..., Any] = target

    @functools.wraps(function)
    def custom_reward(prompt: str, response: str, ground_truth: Any, **extra: Any) -> RewardResult:
        value = function(prompt, response, ground_truth, **{**bound_keywords, **extra})
        return to_reward_result(value, source=import_path)

    return custom_reward


def to_reward_result(value: Any, *, source: str) -> RewardResult:
    """Normalise a reward function's return value (see the module docstring).

    Args:
        value: what the function returned.
        source: the function's name, for error messages.

    Raises:
        TypeError: the value, or its ``"score"``, has an unsupported type.
        ValueError: a dict lacks ``"score"``, or the score is not finite.
    """
    if isinstance(value, RewardResult):
        _check_score(value.score, source)
        return value
    if isinstance(value, Real):
        return RewardResult(score=_check_score(value, source))
    if isinstance(value, dict):
        if "score" not in value:
            raise ValueError(
                f"custom reward {source!r} returned a dict without 'score' (keys: {sorted(value)}); "
                "add a 'score' entry"
            )
        info = {key: item for key, item in value.items() if key not in ("score", "extracted")}
        extracted = value.get("extracted")
        return RewardResult(
            score=_check_score(value["score"], source),
            extracted=None if extracted is None else str(extracted),
            info=info,
        )
    raise TypeError(
        f"custom reward {source!r} returned a {type(value).__name__}; "
        "return a float, a dict with 'score', or a RewardResult"
    )


def _check_score(score: Any, source: str) -> float:
    if not isinstance(score, Real):
        raise TypeError(f"custom reward {source!r} returned a score of type {type(score).__name__}; return a number")
    if not math.isfinite(score):
        raise ValueError(f"custom reward {source!r} returned the non-finite score {score}")
    return float(score)

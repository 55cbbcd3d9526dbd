"""Reward for GSM8K-style grade-school math word problems.

GSM8K solutions end with ``#### <number>``. Every response gets two terms
(`roles.rewards.correctness`):

- ``correctness``: the final answer is right however it is phrased. The answer after
  the first ``####`` counts when there is one (compared exactly as a number);
  otherwise math-verify reads the response (its last ``\\boxed{}``, "the answer is",
  the last number ...).
- ``format``: the response gives ``#### <number>``, the format GSM8K asks for.

``method`` picks what the score counts:

- ``answer`` (default): the correctness term, however the answer is phrased.
- ``strict`` (verl's default): only the number after the first ``####`` that is
  followed by a number (spaces and a ``$`` may come between them); a response without
  one has no answer and scores 0, even if it is right.
- ``flexible`` (verl's other method): the last number anywhere in the response.

``format_score`` is the score of a wrong answer the method read (for ``answer``: a
wrong ``#### <number>``), verl's convention; ``format_weight`` is added to the score
of every response in the format, right or wrong, TRL's separate format reward.
Numbers are read and compared by `roles.rewards.numbers`.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from roles.rewards.correctness import TimeoutPolicy, answer_text, combined_score, judge_answer, reward_terms
from roles.rewards.numbers import NUMBER, canonical_decimal, canonical_number, normalize_number
from roles.rewards.types import RewardResult

Gsm8kMethod = Literal["answer", "strict", "flexible"]

_NUMBER_PATTERN = re.compile(NUMBER)
_STRICT_ANSWER_PATTERN = re.compile(r"####\s*" + NUMBER)

__all__ = ["extract_gsm8k_answer", "normalize_number", "parse_gsm8k_ground_truth", "score_gsm8k"]


def extract_gsm8k_answer(text: str, method: Literal["strict", "flexible"] = "strict") -> str | None:
    """Return the canonical answer found in ``text`` by ``method``, or None.

    Args:
        text: a model response or a GSM8K reference solution.
        method: ``"strict"`` reads ``#### <number>``; ``"flexible"`` takes the
            last number in the text.
    """
    if method == "strict":
        match = _STRICT_ANSWER_PATTERN.search(text)
        return canonical_number(match) if match else None
    if method == "flexible":
        matches = list(_NUMBER_PATTERN.finditer(text))
        return canonical_number(matches[-1]) if matches else None
    raise ValueError(f"GSM8K method must be 'strict' or 'flexible', got {method!r}")


def parse_gsm8k_ground_truth(ground_truth: Any) -> str:
    """Return the canonical answer of a GSM8K row.

    Accepts a full reference solution ending in ``#### 72``, a number string
    (``"72"``, ``"1,234"``) or an int/float.

    Raises:
        ValueError: no answer can be read from the ground truth.
    """
    if isinstance(ground_truth, (int, float)) and not isinstance(ground_truth, bool):
        try:
            return canonical_decimal(Decimal(str(ground_truth)))
        except InvalidOperation as error:
            raise ValueError(f"GSM8K ground_truth {ground_truth!r} is not a finite number") from error
    if isinstance(ground_truth, str):
        answer = (
            extract_gsm8k_answer(ground_truth, "strict")
            if "####" in ground_truth
            else normalize_number(ground_truth)
        )
        if answer is not None:
            return answer
    raise ValueError(
        f"GSM8K ground_truth must be a number or a solution ending in '#### <number>', "
        f"got {ground_truth!r}; fix the dataset's ground_truth column"
    )


def score_gsm8k(
    prompt: str,
    response: str,
    ground_truth: Any,
    *,
    method: Gsm8kMethod = "answer",
    format_score: float = 0.0,
    format_weight: float = 0.0,
    timeout_s: float = 5.0,
    on_timeout: TimeoutPolicy = "unscored",
    **extra: Any,
) -> RewardResult:
    """Score a GSM8K response: 1.0 right, ``format_score`` wrong, 0.0 no answer (+ ``format_weight``).

    Args:
        prompt: the question (not used for grading).
        response: the model's solution.
        ground_truth: see `parse_gsm8k_ground_truth`.
        method: ``"answer"``, ``"strict"`` or ``"flexible"`` (module docstring).
        format_score: the score of a wrong answer the method read.
        format_weight: added when the response gives ``#### <number>``.
        timeout_s: the time limit of one math-verify check, in seconds.
        on_timeout: ``"unscored"`` or ``"zero"``: what a check that ran out of time yields.
        **extra: other row fields; ignored.

    Returns:
        A `RewardResult` with the extracted answer (None when none was found), the terms
        ``correctness`` and ``format``, and ``info["reference"]``, the canonical ground truth.
    """
    if method not in ("answer", "strict", "flexible"):
        raise ValueError(f"GSM8K method must be 'answer', 'strict' or 'flexible', got {method!r}")
    reference = parse_gsm8k_ground_truth(ground_truth)
    marked = extract_gsm8k_answer(response, "strict")
    correctness = judge_answer(reference, answer_text(response, marked), timeout_s=timeout_s, on_timeout=on_timeout)
    formatted = marked is not None
    terms = reward_terms(correctness, formatted)
    info = {"reference": reference, **correctness.info}
    if method == "answer":
        score = combined_score(correctness.correct, formatted, formatted, format_score, format_weight)
        return RewardResult(score, correctness.extracted, correctness.unscored, info, terms)
    extracted = marked if method == "strict" else extract_gsm8k_answer(response, "flexible")
    score = combined_score(extracted == reference, extracted is not None, formatted, format_score, format_weight)
    return RewardResult(score, extracted, False, info, terms)

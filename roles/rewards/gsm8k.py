"""Reward for GSM8K-style grade-school math word problems.

GSM8K solutions end with ``#### <number>``. Two extraction methods:

- ``strict``: the number after the first ``####`` that is followed by a number
  (spaces and a ``$`` may come between them). The first one counts so that text
  a model appends after its answer (a new question and its own ``####``) is
  ignored. A response without ``#### <number>`` has no answer.
- ``flexible``: the last number anywhere in the response, for models that do
  not use the ``####`` format.

A number is ``[-][$]digits[.digits]`` where the digits may be grouped by
commas in threes (``1,234,567``). A ``-`` counts as a sign only when it does not
follow a letter, digit or dot, so in ``"pages 3-5"`` the last number is ``5``.
A trailing period is a sentence end, not part of the number.

Normalisation turns a number into a canonical string: no ``$``, no commas, no
trailing zeros after the decimal point, no decimal point for whole numbers
(``"72.0"`` -> ``"72"``, ``"-$1,234.50"`` -> ``"-1234.5"``). Two answers are equal
when their canonical strings are.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from roles.rewards.types import RewardResult

Gsm8kMethod = Literal["strict", "flexible"]

_NUMBER = (
    r"(?:(?<![\w.])(?P<sign>-))?(?:\$\s*(?P<sign_after_dollar>-)?)?"
    r"(?P<digits>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
)
_NUMBER_PATTERN = re.compile(_NUMBER)
_STRICT_ANSWER_PATTERN = re.compile(r"####\s*" + _NUMBER)
_BARE_NUMBER_PATTERN = re.compile(r"\s*" + _NUMBER + r"\.?\s*")


def _canonical_decimal(value: Decimal) -> str:
    if not value.is_finite():
        raise InvalidOperation(f"{value} is not finite")
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _canonical_number(match: re.Match[str]) -> str:
    value = Decimal(match.group("digits").replace(",", ""))
    if match.group("sign") or match.group("sign_after_dollar"):
        value = -value
    return _canonical_decimal(value)


def normalize_number(text: str) -> str | None:
    """Return the canonical string of a text holding one number, or None.

    ``" $1,234.50. "`` -> ``"1234.5"``; ``"72.0"`` -> ``"72"``; ``"abc"`` -> None.
    """
    match = _BARE_NUMBER_PATTERN.fullmatch(text)
    return _canonical_number(match) if match else None


def extract_gsm8k_answer(text: str, method: Gsm8kMethod = "strict") -> str | None:
    """Return the canonical answer found in ``text`` by ``method``, or None.

    Args:
        text: a model response or a GSM8K reference solution.
        method: ``"strict"`` reads ``#### <number>``; ``"flexible"`` takes the
            last number in the text.
    """
    if method == "strict":
        match = _STRICT_ANSWER_PATTERN.search(text)
        return _canonical_number(match) if match else None
    if method == "flexible":
        matches = list(_NUMBER_PATTERN.finditer(text))
        return _canonical_number(matches[-1]) if matches else None
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
            return _canonical_decimal(Decimal(str(ground_truth)))
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
    method: Gsm8kMethod = "strict",
    format_score: float = 0.0,
    **extra: Any,
) -> RewardResult:
    """Score a GSM8K response: 1.0 right, ``format_score`` wrong, 0.0 no answer.

    Args:
        prompt: the question (not used for grading).
        response: the model's solution.
        ground_truth: see `parse_gsm8k_ground_truth`.
        method: ``"strict"`` or ``"flexible"`` extraction (module docstring).
        format_score: the score of a response whose answer was found but is
            wrong; a small positive value rewards using the answer format.
        **extra: other row fields; ignored.

    Returns:
        A `RewardResult` with the canonical extracted answer (None when none was
        found) and ``info["reference"]``, the canonical ground truth.
    """
    reference = parse_gsm8k_ground_truth(ground_truth)
    extracted = extract_gsm8k_answer(response, method)
    if extracted is None:
        score = 0.0
    elif extracted == reference:
        score = 1.0
    else:
        score = format_score
    return RewardResult(score=score, extracted=extracted, info={"reference": reference})

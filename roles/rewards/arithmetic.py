"""Reward for the built-in arithmetic task ("12+7=" -> "19").

The policy continues a prompt such as ``"3*4-5="`` and should answer with a
number right away; whatever it writes after the number (a newline, another
equation, junk) is ignored. Grading only the leading number gives a clear
signal for a tiny model: the answer must come first.

Extraction rule (``extract_leading_integer``):

1. Leading whitespace is skipped.
2. An optional ``-`` followed by one or more ASCII digits is the answer; the
   digit run ends at the first character that is not a digit.
3. If a decimal point and a digit follow that run (``"19.5"``), the answer is
   the decimal ``"19.5"``: it is extracted as written and scores 0, because it
   is not an integer (``"19.0"`` also scores 0; the task asks for integers).
4. Anything else at the start (a word, ``"+19"``, an empty response) means no
   answer: ``extracted`` is None and the score is 0.
"""

from __future__ import annotations

import re
from typing import Any

from roles.rewards.types import RewardResult

_LEADING_NUMBER = re.compile(r"\s*(?P<answer>-?\d+(?:\.\d+)?)")


def extract_leading_integer(response: str) -> str | None:
    """Return the number the response starts with, as written, or None.

    See the module docstring for the exact rule. A decimal such as ``"19.5"`` is
    returned as written so the caller can show it; `score_arithmetic` scores it 0.
    """
    match = _LEADING_NUMBER.match(response)
    return match.group("answer") if match else None


def parse_integer_ground_truth(ground_truth: Any) -> int:
    """Return the integer answer of an arithmetic row.

    Accepts an int, a float with an integral value (``19.0`` from a parquet
    column) or a string holding an integer (``"19"``, ``" -3 "``).

    Raises:
        ValueError: the ground truth is not an integer.
    """
    if isinstance(ground_truth, bool):
        raise ValueError(
            f"arithmetic ground_truth must be an integer, got the bool {ground_truth!r}; "
            "store the answer as a number such as 19"
        )
    if isinstance(ground_truth, int):
        return ground_truth
    if isinstance(ground_truth, float) and ground_truth.is_integer():
        return int(ground_truth)
    if isinstance(ground_truth, str) and re.fullmatch(r"\s*-?\d+\s*", ground_truth):
        return int(ground_truth)
    raise ValueError(
        f"arithmetic ground_truth must be an integer (int or a string like '19'), "
        f"got {ground_truth!r}; fix the dataset's ground_truth column"
    )


def score_arithmetic(prompt: str, response: str, ground_truth: Any, **extra: Any) -> RewardResult:
    """Score 1.0 if the response starts with the ground-truth integer, else 0.0.

    Args:
        prompt: the arithmetic prompt, e.g. ``"12+7="`` (not used for grading).
        response: the generated continuation, e.g. ``"19\\n5+5=10"``.
        ground_truth: the integer answer (see `parse_integer_ground_truth`).
        **extra: other row fields; ignored.

    Returns:
        A `RewardResult` whose ``extracted`` is the leading number as written
        (None when the response does not start with one).
    """
    expected = parse_integer_ground_truth(ground_truth)
    extracted = extract_leading_integer(response)
    is_correct = extracted is not None and "." not in extracted and int(extracted) == expected
    return RewardResult(score=1.0 if is_correct else 0.0, extracted=extracted)

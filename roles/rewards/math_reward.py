"""Reward for MATH-style competition problems, graded by math-verify.

Every response gets two terms (`roles.rewards.correctness`):

- ``correctness``: math-verify finds the response's answer equal to the reference:
  ``0.5`` equals ``\\frac12``, ``\\frac{\\sqrt{2}}{2}`` equals ``\\frac{1}{\\sqrt{2}}``,
  ``(1,2]`` is an interval, ``\\{1,2\\}`` a set, matrices and text answers are compared
  as such. When the response has a ``\\boxed{}``/``\\fbox{}`` its last one is the answer
  (`extract_last_boxed`); otherwise math-verify reads the whole response ("the final
  answer is $x$", the last formula or number).
- ``format``: the response boxes its answer, the format MATH asks for.

``method`` picks what the score counts: ``answer`` (default) the correctness term;
``boxed`` only a boxed answer (a right answer without a box scores 0), the convention of
verl's and the original MATH graders. ``format_score`` (the score of a wrong boxed
answer) and ``format_weight`` (added for a boxed answer, right or wrong) follow verl's
and TRL's conventions (`roles.rewards.correctness.combined_score`).

Each math-verify check runs in a child process under ``timeout_s``; one that runs out
of time, or whose worker dies, makes the result ``unscored=True`` (score 0) by default:
the grader failed, not the model. ``on_timeout="zero"`` grades it a plain 0 instead, for
a pipeline that must not drop samples (a model could otherwise dodge a penalty with an
answer that is slow to compare).

``info`` records the reference and how the verdict was reached (``match``: ``"number"``,
``"math_verify"`` or ``"none"``; ``check``: math-verify's verdict).
"""

from __future__ import annotations

from typing import Any, Literal

from roles.rewards.boxed import extract_last_boxed
from roles.rewards.correctness import TimeoutPolicy, answer_text, combined_score, judge_answer, reward_terms
from roles.rewards.types import RewardResult

MathMethod = Literal["answer", "boxed"]


def parse_math_ground_truth(ground_truth: Any) -> str:
    """Return the reference answer of a MATH row, as written.

    Accepts a reference solution containing ``\\boxed{...}`` (the last box is
    the answer), a bare answer string (``"\\frac{1}{2}"``) or a number.

    Raises:
        ValueError: the ground truth is empty, not text or a number, or has an
            unclosed box.
    """
    if isinstance(ground_truth, (int, float)) and not isinstance(ground_truth, bool):
        return str(ground_truth)
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise ValueError(
            f"MATH ground_truth must be a non-empty answer or a solution with \\boxed{{}}, "
            f"got {ground_truth!r}; fix the dataset's ground_truth column"
        )
    if "\\boxed" in ground_truth or "\\fbox" in ground_truth:
        boxed = extract_last_boxed(ground_truth)
        if boxed is None or not boxed.strip():
            raise ValueError(
                f"MATH ground_truth has a \\boxed without a readable answer: {ground_truth!r}; "
                "close its braces or store the bare answer"
            )
        return boxed
    return ground_truth


def score_math(
    prompt: str,
    response: str,
    ground_truth: Any,
    *,
    method: MathMethod = "answer",
    symbolic: bool = True,
    timeout_s: float = 5.0,
    on_timeout: TimeoutPolicy = "unscored",
    format_score: float = 0.0,
    format_weight: float = 0.0,
    **extra: Any,
) -> RewardResult:
    """Score a MATH-style response: 1.0 when its answer equals the reference.

    Args:
        prompt: the problem (not used for grading).
        response: the model's solution.
        ground_truth: see `parse_math_ground_truth`.
        method: ``"answer"`` or ``"boxed"`` (module docstring).
        symbolic: False compares math-verify's parsed answers without simplification
            (``2x+2`` then differs from ``2(x+1)``).
        timeout_s: the time limit of one math-verify check, in seconds.
        on_timeout: ``"unscored"`` or ``"zero"``; see the module docstring.
        format_score: the score of a wrong boxed answer.
        format_weight: added when the response has a box.
        **extra: other row fields; ignored.

    Returns:
        A `RewardResult` whose ``extracted`` is the boxed content as written (or the answer
        math-verify read from an unboxed response), with the terms ``correctness`` and ``format``.
    """
    if method not in ("answer", "boxed"):
        raise ValueError(f"MATH method must be 'answer' or 'boxed', got {method!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    reference = parse_math_ground_truth(ground_truth)
    boxed = extract_last_boxed(response)
    formatted = boxed is not None
    correctness = judge_answer(
        reference, answer_text(response), timeout_s=timeout_s, on_timeout=on_timeout, symbolic=symbolic
    )
    counted = correctness.correct and (formatted or method == "answer")
    score = combined_score(counted, formatted, formatted, format_score, format_weight)
    extracted = boxed if formatted else correctness.extracted
    return RewardResult(score, extracted, correctness.unscored, {"reference": reference, **correctness.info},
                        reward_terms(correctness, formatted))

"""Reward for MATH-style competition problems with ``\\boxed{}`` answers.

Grading, in order, stopping at the first decision:

1. The answer is the content of the response's last ``\\boxed{}``/``\\fbox{}``
   (`extract_last_boxed`); none means score 0. The ground truth may be a full
   reference solution (its last box is used) or the bare answer.
2. Both answers are normalised (`normalize_math_answer`); equal strings score
   1. Rational numbers are compared exactly here: ``0.5`` equals ``\\frac12``.
3. If both answers are rational and differ, the score is 0; sympy is not asked.
4. Otherwise, if ``symbolic`` is on and both answers translate to sympy syntax
   (`latex_to_sympy_text`), a child process checks equivalence under a time
   limit (`roles.rewards.symbolic`): ``\\frac{\\sqrt{2}}{2}`` equals
   ``\\frac{1}{\\sqrt{2}}``. Answers it cannot translate score 0.
5. When the symbolic check runs out of time or its worker dies, the result is
   ``unscored=True`` (score 0) by default: the grader failed, not the model.
   ``on_timeout="zero"`` grades it a plain 0 instead, for a pipeline that must
   not drop samples (a model could otherwise dodge a penalty with an
   expression that is slow to compare).

``info`` records the normalised answers and ``match``: ``"string"``,
``"symbolic"`` or ``"none"``, plus ``symbolic_check`` when sympy was asked.
"""

from __future__ import annotations

from typing import Any, Literal

from roles.rewards.boxed import extract_last_boxed
from roles.rewards.latex_normalize import normalize_math_answer, rational_value
from roles.rewards.latex_to_sympy import latex_to_sympy_text
from roles.rewards.symbolic import SymbolicVerdict, shared_symbolic_checker
from roles.rewards.types import RewardResult

TimeoutPolicy = Literal["unscored", "zero"]


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
    symbolic: bool = True,
    timeout_s: float = 5.0,
    on_timeout: TimeoutPolicy = "unscored",
    **extra: Any,
) -> RewardResult:
    """Score a MATH-style response: 1.0 when its boxed answer equals the reference.

    Args:
        prompt: the problem (not used for grading).
        response: the model's solution, with the final answer in ``\\boxed{}``.
        ground_truth: see `parse_math_ground_truth`.
        symbolic: whether to ask sympy when the normalised strings differ.
        timeout_s: the time limit of one symbolic check, in seconds.
        on_timeout: ``"unscored"`` or ``"zero"``; see the module docstring.
        **extra: other row fields; ignored.

    Returns:
        A `RewardResult` whose ``extracted`` is the boxed content as written.
    """
    if on_timeout not in ("unscored", "zero"):
        raise ValueError(f"on_timeout must be 'unscored' or 'zero', got {on_timeout!r}")
    reference = normalize_math_answer(parse_math_ground_truth(ground_truth))
    extracted = extract_last_boxed(response)
    if extracted is None:
        return RewardResult(score=0.0, info={"reference": reference, "match": "none"})
    candidate = normalize_math_answer(extracted)
    info: dict[str, Any] = {"reference": reference, "normalized": candidate, "match": "none"}
    if candidate == reference:
        return RewardResult(score=1.0, extracted=extracted, info={**info, "match": "string"})
    if not symbolic or (rational_value(candidate) is not None and rational_value(reference) is not None):
        return RewardResult(score=0.0, extracted=extracted, info=info)
    candidate_sympy = latex_to_sympy_text(candidate)
    reference_sympy = latex_to_sympy_text(reference)
    if candidate_sympy is None or reference_sympy is None:
        info["symbolic_check"] = "unsupported"
        return RewardResult(score=0.0, extracted=extracted, info=info)
    check = shared_symbolic_checker().check(candidate_sympy, reference_sympy, timeout_s)
    info["symbolic_check"] = check.verdict.value
    if check.detail:
        info["symbolic_detail"] = check.detail
    if check.verdict is SymbolicVerdict.EQUIVALENT:
        return RewardResult(score=1.0, extracted=extracted, info={**info, "match": "symbolic"})
    grader_failed = check.verdict in (SymbolicVerdict.TIMED_OUT, SymbolicVerdict.WORKER_DIED)
    return RewardResult(
        score=0.0, extracted=extracted, unscored=grader_failed and on_timeout == "unscored", info=info
    )

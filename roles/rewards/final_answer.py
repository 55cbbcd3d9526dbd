"""Reward for a numeric answer, however the response phrases it (``type: final_number``).

Pretrained chat models rarely answer with the number first: they write "12*7 = 84",
"The answer is 84." or a paragraph that ends in the result. A grader that reads only a
leading number scores nearly every response of such a model 0, and GRPO learns nothing
from groups that are all 0. This one reads the answer where a chat model puts it.

Extraction order (the first rule that applies decides; later ones are not tried):

1. ``\\boxed{...}``: the last box (`roles.rewards.boxed.extract_last_boxed`).
2. "answer is X": the last "answer is" / "answer:" (any case, so "The final answer
   is", "Answer: ") followed by a number; markdown and LaTeX decorations in between
   (``**``, ``$``, ``\\(``) are skipped, and an equation written there counts by its
   result ("The answer is 12*7 = 84" -> 84).
3. ``<answer>X</answer>``: the last tag pair (reasoning-gym's convention).
4. The last number anywhere in the response.

Inside a box or a tag the answer is the text after its last ``=``, which must be one
number (``\\boxed{84}``, ``\\boxed{x = 84}``, ``<answer> 84. </answer>``). A box or tag
that holds something else (``\\boxed{\\frac{1}{2}}``, ``<answer>seven</answer>``) is the
model's stated answer all the same: it is extracted as written and scores 0, rather
than falling through to some other number in the text.

Numbers are read and compared by `roles.rewards.numbers`' rules: an optional sign (a
``-`` after a letter, digit or dot is a minus, not a sign: "3-5" holds 3 and 5),
digits grouped by commas in threes (``1,234``), an optional decimal part, an optional
``$``; a trailing period ends the sentence. Two numbers are equal when their
canonical forms are (``84.0`` == ``84``, ``1,234`` == ``1234``, ``-0`` == ``0``).
A box or tag that holds something other than one number is read as LaTeX and compared
by math-verify (`roles.rewards.correctness.judge_answer`, in a child process under a
time limit), so ``\\boxed{\\frac{1}{2}}`` is right for 0.5; a check that runs out of
time is unscored. The ground truth must be one number. The score is the
``correctness`` term; this reward requests no format, so it has no ``format`` term.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from roles.rewards.boxed import extract_last_boxed
from roles.rewards.correctness import Correctness, judge_answer, reward_terms
from roles.rewards.gsm8k import extract_gsm8k_answer
from roles.rewards.numbers import normalize_number
from roles.rewards.types import RewardResult

_NUMBER_TEXT = r"-?\$?\s*-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
"""What "answer is" must be followed by; `extract_gsm8k_answer` then reads it exactly."""
_DECORATION = r"(?:\s|[:*$]|\\\(|\\\[|\\text\{|\\mathbf\{)*"
_EQUATION = r"(?:(?:[-+*/×÷x()\d,\t ]|\.(?=\d))+=\s*)?"
"""An expression and "=" written before the result: "12*7 = 84"."""
_ANSWER_IS = re.compile(
    r"answer(?:\s+is|\s*:)" + _DECORATION + _EQUATION + r"(?P<number>" + _NUMBER_TEXT + r")",
    re.IGNORECASE,
)
_ANSWER_TAG = re.compile(r"<answer>(?P<content>.*?)</answer>", re.DOTALL | re.IGNORECASE)
_LATEX_WRAPPERS = re.compile(r"\\(?:text|mathrm|mathbf)\{([^{}]*)\}|\\[,;! ]|\$|\\\(|\\\)")


def extract_final_number(response: str) -> tuple[str | None, str]:
    """Return ``(answer, rule)``: the answer the response gives and the rule that found it.

    ``answer`` is a canonical number string (``"84"``, ``"-3"``, ``"0.5"``), or the raw
    content of a box or tag that holds no single number, or None when the response
    holds no number at all. ``rule`` is ``"boxed"``, ``"answer_is"``, ``"tag"``,
    ``"last_number"`` or ``"none"``. The order is the module docstring's.
    """
    boxed = extract_last_boxed(response)
    if boxed is not None:
        return _marked_answer(boxed), "boxed"
    stated = list(_ANSWER_IS.finditer(response))
    if stated:
        return extract_gsm8k_answer(stated[-1].group("number"), "flexible"), "answer_is"
    tags = list(_ANSWER_TAG.finditer(response))
    if tags:
        return _marked_answer(tags[-1].group("content")), "tag"
    last = extract_gsm8k_answer(response, "flexible")
    return (last, "last_number") if last is not None else (None, "none")


def _marked_answer(content: str) -> str:
    """The number a box or tag holds (after its last ``=``), or its content as written."""
    unwrapped = _LATEX_WRAPPERS.sub(lambda match: match.group(1) or "", content)
    number = normalize_number(unwrapped.rpartition("=")[2])
    return number if number is not None else content.strip()


def parse_number_ground_truth(ground_truth: Any) -> str:
    """Return the canonical form of a row's numeric answer (an int, a float or a number string).

    Raises:
        ValueError: the ground truth is not one finite number.
    """
    if isinstance(ground_truth, (int, float)) and not isinstance(ground_truth, bool):
        number = normalize_number(format(Decimal(str(ground_truth)), "f")) if _is_finite(ground_truth) else None
    elif isinstance(ground_truth, str):
        number = normalize_number(ground_truth)
    else:
        number = None
    if number is None:
        raise ValueError(
            f"final_number ground_truth must be one number (an int, a float or a string like '1,234' or '-3.5'), "
            f"got {ground_truth!r}; fix the dataset's ground_truth column"
        )
    return number


def _is_finite(value: int | float) -> bool:
    try:
        return Decimal(str(value)).is_finite()
    except InvalidOperation:
        return False


def score_final_number(prompt: str, response: str, ground_truth: Any, **extra: Any) -> RewardResult:
    """Score 1.0 when the response's answer (module docstring) equals the ground truth, else 0.0.

    Args:
        prompt: the question (not used for grading).
        response: the model's response.
        ground_truth: one number (see `parse_number_ground_truth`).
        **extra: other row fields; ignored.

    Returns:
        A `RewardResult` whose ``extracted`` is the answer found (None: the response holds
        no number), with ``info["rule"]``, the rule that found it, ``info["reference"]``,
        the canonical ground truth, and the ``correctness`` term.
    """
    reference = parse_number_ground_truth(ground_truth)
    extracted, rule = extract_final_number(response)
    if extracted is None:
        correctness = Correctness(False, None, False, {"match": "none"})
    else:  # a number is compared exactly; anything else a box or tag holds is read as LaTeX
        text = extracted if normalize_number(extracted) is not None else "\\boxed{" + extracted + "}"
        correctness = judge_answer(reference, text)
    return RewardResult(float(correctness.correct), extracted, correctness.unscored,
                        {"rule": rule, "reference": reference, **correctness.info}, reward_terms(correctness, None))

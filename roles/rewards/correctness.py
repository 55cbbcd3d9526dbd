"""Correctness and format: the two terms of the math rewards (gsm8k, math, final_number).

*Correctness* asks whether the response's final answer is right, however it is phrased
(``#### 72``, "the answer is 72", ``\\boxed{72}``, ``$72.00``, ``1,000``). It is graded by
math-verify (the checker TRL, open-r1 and many papers grade with) in a child process under
a time limit (`roles.sandbox.symbolic`), with three rules of our own, each deliberate:

1. The text math-verify reads is chosen first (`answer_text`): the answer after GSM8K's
   ``####`` marker when the reward asks for it (the first one: text a model appends after
   its answer is not its answer), else ``\\boxed{<last box>}`` when the response has a box
   (math-verify reads every box as one set, so an intermediate result boxed on the way
   would make a right final answer wrong), else the whole response.
2. Two plain numbers (``72`` and ``#### $72.00``) are compared exactly, in this process
   (`roles.rewards.gsm8k.normalize_number`): no round trip to the worker, and no rounding
   (math-verify rounds floats to 6 decimal places).
3. A check that runs out of time, or whose worker dies, is the grader's failure: the
   result is unscored (or a plain 0 with ``on_timeout="zero"``), never a verdict.

*Format* asks whether the response gives its answer in the form the task requested
(``#### <number>`` for GSM8K, ``\\boxed{}`` for MATH); each reward decides it with a regular
expression. `combined_score` turns the two into one score by either convention users know:
verl's (an answer counts only where the method reads it; a wrong one scores
``format_score``) and TRL's (a separate format reward added with its weight).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from roles.rewards.boxed import extract_last_boxed
from roles.rewards.numbers import normalize_number
from roles.sandbox.symbolic import SymbolicVerdict, shared_symbolic_checker

TimeoutPolicy = Literal["unscored", "zero"]


class Correctness(NamedTuple):
    """The verdict on one answer.

    Attributes:
        correct: the answer equals the reference (False when unscored).
        extracted: the answer that was graded, as read (None: none was found).
        unscored: the grader failed (time limit, dead worker) and ``on_timeout`` is ``"unscored"``.
        info: how it was decided: ``match`` (``"number"``: exactly, in process; ``"math_verify"``;
            ``"none"``: nothing to grade) and, after a math-verify check, ``check``
            (``"equivalent"``, ``"different"``, ``"timed_out"``, ``"worker_died"``) and ``check_detail``.
    """

    correct: bool
    extracted: str | None
    unscored: bool
    info: dict[str, Any]


def answer_text(response: str, gsm8k_answer: str | None = None) -> str:
    """The text of ``response`` that math-verify reads (module docstring, rule 1).

    Args:
        response: the model's response.
        gsm8k_answer: the number after the response's first ``####``, when the reward
            reads that marker (`roles.rewards.gsm8k.extract_gsm8k_answer`).
    """
    if gsm8k_answer is not None:
        return gsm8k_answer
    boxed = extract_last_boxed(response)
    return "\\boxed{" + boxed + "}" if boxed is not None else response


def judge_answer(
    reference: str,
    text: str,
    *,
    timeout_s: float = 5.0,
    on_timeout: TimeoutPolicy = "unscored",
    symbolic: bool = True,
) -> Correctness:
    """Whether ``text`` states ``reference``: exactly for two plain numbers, else by math-verify.

    Args:
        reference: the reference answer, LaTeX or a number (``"\\\\frac{1}{2}"``, ``"72"``).
        text: what to read the answer from (see `answer_text`).
        timeout_s: the time limit of a math-verify check, in seconds.
        on_timeout: ``"unscored"`` or ``"zero"``: what a check that ran out of time yields.
        symbolic: False compares math-verify's parsed answers without simplification.

    Raises:
        ValueError: ``on_timeout`` or ``timeout_s`` is invalid.
    """
    if on_timeout not in ("unscored", "zero"):
        raise ValueError(f"on_timeout must be 'unscored' or 'zero', got {on_timeout!r}")
    reference_number, text_number = normalize_number(reference), normalize_number(text)
    if reference_number is not None and text_number is not None:
        return Correctness(reference_number == text_number, text_number, False, {"match": "number"})
    check = shared_symbolic_checker().check(reference, text, timeout_s, symbolic)
    info: dict[str, Any] = {"match": "math_verify", "check": check.verdict.value}
    if check.detail:
        info["check_detail"] = check.detail
    if check.verdict in (SymbolicVerdict.TIMED_OUT, SymbolicVerdict.WORKER_DIED):
        return Correctness(False, None, on_timeout == "unscored", info)
    if check.extracted is None:
        info["match"] = "none"
    return Correctness(check.verdict is SymbolicVerdict.EQUIVALENT, check.extracted, False, info)


def reward_terms(correctness: Correctness, formatted: bool | None) -> dict[str, float]:
    """The terms of a result: ``correctness`` (absent when the check was unscored) and
    ``format`` (absent when the reward requests no format, ``formatted=None``)."""
    terms = {} if correctness.unscored else {"correctness": float(correctness.correct)}
    if formatted is not None:
        terms["format"] = float(formatted)
    return terms


def combined_score(correct: bool, answered: bool, formatted: bool, format_score: float, format_weight: float) -> float:
    """One score from the terms, by verl's and TRL's conventions together.

    ``1`` for a right answer, ``format_score`` for a wrong one the reward's method read
    (verl's ``format_score``), else ``0``; plus ``format_weight`` when the response is in
    the requested format (TRL's separate format reward, weighted). With both at their
    default of 0 the score is the correctness alone.

    Args:
        correct: the answer the method read is right.
        answered: the method read an answer at all.
        formatted: the response is in the requested format.
        format_score: verl's score of a wrong answer the method read.
        format_weight: the weight of the format term.
    """
    base = 1.0 if correct else (format_score if answered else 0.0)
    return base + (format_weight if formatted else 0.0)

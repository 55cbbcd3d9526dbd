"""The result every reward function returns.

A reward function has the signature
``fn(prompt: str, response: str, ground_truth: Any, **extra) -> RewardResult``.
User-supplied functions may return a plain float or a dict instead; the reward
registry normalises those into a `RewardResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RewardResult:
    """The score of one response.

    Attributes:
        score: the reward, usually in [0, 1] for rule-based rewards.
        extracted: the answer the extractor found in the response (None when it
            found none), so evaluation can show what was graded.
        unscored: True when the reward could not be computed for reasons that are
            not the response's fault (a sandbox infrastructure failure, a time limit
            of the grader itself). An unscored result is distinct from a wrong answer:
            callers may drop it rather than train on a score of 0.
        info: extra named values (for example per-test verdicts), all JSON-serialisable.
        terms: the named reward terms behind the score, each in [0, 1], reported as
            numbers of their own: ``correctness`` (the final answer is right, however
            phrased; held-out accuracy counts it) and ``format`` (the response is in
            the requested format). A term the reward could not decide is absent.
    """

    score: float
    extracted: str | None = None
    unscored: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    terms: dict[str, float] = field(default_factory=dict)

"""The answer-checking table: (gold, response) cases across GSM8K and MATH answer styles,
each with math-verify's verdict as the expected value, and the correctness term of our
rewards asserted to agree.

math-verify's verdict is ``verify(parse("\\boxed{" + gold + "}"), parse(response))`` with the
library's defaults; `test_the_table_is_math_verifys_verdict` recomputes it, so a math-verify
release that changes its mind shows up here. Each case where troupe deliberately differs
names its rule in the last column; docs/rewards.md lists every such case with the reason:

- ``HASHES_FIRST``: a GSM8K response's first ``#### <number>`` is its answer, whatever text
  follows it (math-verify reads the last number of the whole response).
- ``LAST_BOX``: the last ``\\boxed{}`` is the answer (math-verify reads every box as one set).
"""

from __future__ import annotations

import pytest
from math_verify import parse, verify

from roles.rewards import score_gsm8k, score_math, shutdown_symbolic_workers

GSM8K, MATH = "gsm8k", "math"
HASHES_FIRST, LAST_BOX = "hashes first", "last box"

CASES = [  # (style, gold, response, math-verify's verdict, the rule by which troupe deliberately differs)
    (GSM8K, '72', '#### 72', 1.0, None),
    (GSM8K, '72', 'The final answer is 72', 1.0, None),
    (GSM8K, '72', 'So the answer is $\\boxed{72}$.', 1.0, None),
    (GSM8K, '72', 'She earns $72.00 in total.', 1.0, None),
    (GSM8K, '1000', 'It costs 1,000 dollars.', 1.0, None),
    (GSM8K, '1000', '#### 1,000', 1.0, None),
    (GSM8K, '72', 'Answer: 72', 1.0, None),
    (GSM8K, '72', '#### 71', 0.0, None),
    (GSM8K, '72', 'The answer is 71.', 0.0, None),
    (GSM8K, '-5', 'The temperature drops to -5 degrees.', 1.0, None),
    (GSM8K, '-5', '#### -5', 1.0, None),
    (GSM8K, '0.5', 'The answer is 0.5', 1.0, None),
    (GSM8K, '0.5', 'The answer is .5', 1.0, None),
    (GSM8K, '2.25', 'She pays $2.25 for it.', 1.0, None),
    (GSM8K, '1234567', '#### 1,234,567', 1.0, None),
    (GSM8K, '72', 'I do not know.', 0.0, None),
    (GSM8K, '72', '', 0.0, None),
    (GSM8K, '72', '#### 72\n\nQuestion: how many pears?\n#### 5', 0.0, HASHES_FIRST),
    (GSM8K, '72', '#### 72. Check: 70 + 2 = 72, with 3 apples left over', 0.0, HASHES_FIRST),
    (GSM8K, '18', 'Janet sells 16 - 3 - 4 = 9 eggs and makes 9 * 2 = 18 dollars.', 1.0, None),
    (GSM8K, '18', '9 * 2 = 18 dollars per day, so 18.', 1.0, None),
    (GSM8K, '5', 'Read pages 3-5', 0.0, None),
    (GSM8K, '50', '50%', 1.0, None),
    (GSM8K, '3', '**The answer is 3**', 1.0, None),
    (GSM8K, '10', 'The final answer is $10$. I hope it is correct.', 1.0, None),
    (GSM8K, '72', '72 is the answer, not 71', 0.0, None),
    (GSM8K, '7', 'First 3 + 4 = 7 apples, then 7 * 2 = 14 in total.', 0.0, None),
    (GSM8K, '14', 'First 3 + 4 = 7 apples, then 7 * 2 = 14 in total.', 1.0, None),
    (GSM8K, '100', '$100', 1.0, None),
    (GSM8K, '72', '#### 72.0', 1.0, None),
    (MATH, '\\frac{1}{2}', '\\boxed{\\frac{1}{2}}', 1.0, None),
    (MATH, '\\frac{1}{2}', '\\boxed{0.5}', 1.0, None),
    (MATH, '\\frac{1}{2}', '\\boxed{\\dfrac12}', 1.0, None),
    (MATH, '\\frac{1}{2}', 'The final answer is $\\frac{1}{2}$.', 1.0, None),
    (MATH, '\\frac{1}{3}', '\\boxed{0.333}', 0.0, None),
    (MATH, '\\frac{2}{3}', '\\boxed{\\frac{4}{6}}', 1.0, None),
    (MATH, '-\\frac{3}{4}', '\\boxed{\\frac{-3}{4}}', 1.0, None),
    (MATH, '\\sqrt{2}', '\\boxed{\\sqrt{2}}', 1.0, None),
    (MATH, '\\frac{\\sqrt{2}}{2}', '\\boxed{\\frac{1}{\\sqrt{2}}}', 1.0, None),
    (MATH, '2\\sqrt{3}', '\\boxed{\\sqrt{12}}', 1.0, None),
    (MATH, '3\\sqrt{2}', '\\boxed{\\sqrt{18}+1}', 0.0, None),
    (MATH, '(1,2]', '\\boxed{(1,2]}', 1.0, None),
    (MATH, '(1,2]', '\\boxed{[1,2)}', 0.0, None),
    (MATH, '[0,\\infty)', '\\boxed{[0, \\infty)}', 1.0, None),
    (MATH, '\\{1,2\\}', '\\boxed{\\{2,1\\}}', 1.0, None),
    (MATH, '\\{1,2\\}', '\\boxed{\\{1,3\\}}', 0.0, None),
    (MATH, '(1,2)', '\\boxed{(1, 2)}', 1.0, None),
    (MATH, '(1,2)', '\\boxed{(2, 1)}', 0.0, None),
    (MATH, '\\begin{pmatrix}1\\\\2\\end{pmatrix}', '\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}', 1.0, None),
    (MATH, '\\begin{pmatrix}1\\\\2\\end{pmatrix}', '\\boxed{\\begin{pmatrix}2\\\\1\\end{pmatrix}}', 0.0, None),
    (MATH, '\\text{Monday}', '\\boxed{\\text{Monday}}', 1.0, None),
    (MATH, '\\text{Monday}', '\\boxed{\\text{Tuesday}}', 0.0, None),
    (MATH, '\\text{(B)}', '\\boxed{\\text{(B)}}', 1.0, None),
    (MATH, '2x+2', '\\boxed{2(x+1)}', 1.0, None),
    (MATH, '2x+1', '\\boxed{2(x+1)}', 0.0, None),
    (MATH, 'x^2+2x+1', '\\boxed{(x+1)^2}', 1.0, None),
    (MATH, '3', 'First \\boxed{2}, then the answer is \\boxed{3}', 0.0, LAST_BOX),
    (MATH, '3', 'Each box holds \\boxed{2}, so in total \\boxed{3} boxes.', 0.0, LAST_BOX),
    (MATH, '2,3', '\\boxed{2} and \\boxed{3}', 1.0, LAST_BOX),
    (MATH, '5', '\\boxed{5}. Let me double check: 2 + 3 = 5, yes, and 7 is wrong.', 1.0, None),
    (MATH, '5', 'The answer is $5$, since 2 + 3 = 5.', 1.0, None),
    (MATH, '5', 'I cannot solve this.', 0.0, None),
    (MATH, '\\pi', '\\boxed{\\pi}', 1.0, None),
    (MATH, '\\frac{\\pi}{2}', '\\boxed{\\pi/2}', 1.0, None),
    (MATH, '30^\\circ', '\\boxed{30}', 1.0, None),
    (MATH, '10\\%', '\\boxed{10}', 1.0, None),
    (MATH, '5\\text{ cm}', '\\boxed{5}', 1.0, None),
    (MATH, 'x=5', '\\boxed{5}', 1.0, None),
    (MATH, '1000', '\\boxed{1,\\!000}', 1.0, None),
    (MATH, '-7', '\\boxed{-7}', 1.0, None),
    (MATH, '-7', '\\boxed{7}', 0.0, None),
    (MATH, '\\frac{7}{2}', '\\boxed{3\\frac{1}{2}}', 1.0, None),
    (MATH, 'e', '\\boxed{e}', 1.0, None),
    (MATH, '\\infty', '\\boxed{\\infty}', 1.0, None),]
DIFFERENCES = [case for case in CASES if case[4] is not None]


@pytest.fixture(autouse=True, scope="module")
def stop_the_checker_worker():
    yield
    shutdown_symbolic_workers()


def correctness(style: str, gold: str, response: str) -> float:
    result = score_gsm8k("", response, gold) if style == GSM8K else score_math("", response, gold)
    assert not result.unscored, result.info
    return result.terms["correctness"]


def test_the_table_covers_both_styles_with_at_least_sixty_cases():
    assert len(CASES) >= 60
    assert {case[0] for case in CASES} == {GSM8K, MATH}
    assert len(DIFFERENCES) == 5


@pytest.mark.parametrize(("style", "gold", "response", "verdict", "difference"), CASES)
def test_the_table_is_math_verifys_verdict(style, gold, response, verdict, difference):
    assert float(verify(parse("\\boxed{" + gold + "}"), parse(response))) == verdict


@pytest.mark.parametrize(("style", "gold", "response", "verdict", "difference"), CASES)
def test_our_correctness_agrees_with_math_verify_except_where_marked(style, gold, response, verdict, difference):
    expected = verdict if difference is None else 1.0 - verdict
    assert correctness(style, gold, response) == expected

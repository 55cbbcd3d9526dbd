"""Boxed-answer extraction, the text math-verify reads, and the worker's check in this process."""

import pytest

from roles.rewards import extract_last_boxed
from roles.rewards.correctness import answer_text, combined_score
from roles.sandbox.symbolic_worker import check_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{5}$.", "5"),
        (r"first \boxed{1}, finally \boxed{2}", "2"),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"the answer is $\boxed 5$", "5"),
        (r"\boxed  12 apples", "12"),
        (r"\fbox{x+1}", "x+1"),
        (r"\boxed {7}", "7"),
    ],
)
def test_last_box_content_is_extracted_with_nested_braces(text, expected):
    assert extract_last_boxed(text) == expected


@pytest.mark.parametrize("text", ["no box", r"\boxed{\frac{1}{2}", r"\boxedx{3}", ""])
def test_missing_or_unclosed_box_has_no_answer(text):
    assert extract_last_boxed(text) is None


def test_an_unclosed_last_box_falls_back_to_the_previous_complete_one():
    assert extract_last_boxed(r"\boxed{3} and then \boxed{4") == "3"


@pytest.mark.parametrize(
    ("response", "gsm8k_answer", "expected"),
    [
        (r"so \boxed{1} and finally \boxed{2}.", None, r"\boxed{2}"),
        ("The answer is 7.", None, "The answer is 7."),
        (r"#### 7 and \boxed{8}", "7", "7"),
    ],
)
def test_the_text_math_verify_reads_is_the_marked_answer_else_the_last_box_else_the_response(response, gsm8k_answer, expected):
    assert answer_text(response, gsm8k_answer) == expected


@pytest.mark.parametrize(
    ("correct", "answered", "formatted", "format_score", "format_weight", "expected"),
    [
        (True, True, True, 0.0, 0.0, 1.0),
        (False, True, True, 0.1, 0.0, 0.1),
        (False, False, False, 0.1, 0.0, 0.0),
        (True, True, True, 0.0, 0.25, 1.25),
        (False, True, True, 0.0, 0.25, 0.25),
        (True, False, False, 0.1, 0.25, 1.0),
    ],
)
def test_the_score_is_verls_formula_plus_the_weighted_format_term(correct, answered, formatted, format_score, format_weight, expected):
    assert combined_score(correct, answered, formatted, format_score, format_weight) == expected


@pytest.mark.parametrize(
    ("gold", "answer", "symbolic", "expected"),
    [
        (r"\frac{1}{2}", r"\boxed{0.5}", True, (True, r"\frac{1}{2}")),
        ("2(x+1)", r"\boxed{2x+2}", True, (True, "2x+2")),
        ("2(x+1)", r"\boxed{2x+2}", False, (False, "2x+2")),
        ("3", "nothing to read", True, (False, None)),
    ],
)
def test_the_worker_check_is_math_verifys_verdict_and_what_it_read(gold, answer, symbolic, expected):
    assert check_answer(gold, answer, symbolic) == expected

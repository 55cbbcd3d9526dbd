"""Boxed-answer extraction, LaTeX normalisation and the LaTeX-to-sympy translation."""

import pytest

from roles.rewards import extract_last_boxed, normalize_math_answer
from roles.rewards.latex_to_sympy import latex_to_sympy_text
from roles.rewards.symbolic_worker import expressions_equivalent, is_safe_sympy_text


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
    ("answer", "expected"),
    [
        (r"\frac{1}{2}", "1/2"),
        (r"\dfrac{1}{2}", "1/2"),
        (r"\tfrac12", "1/2"),
        (r"\frac 1 2", "1/2"),
        ("0.5", "1/2"),
        (".5", "1/2"),
        ("1/2", "1/2"),
        ("72.0", "72"),
        (r"-\frac{3}{4}", "-3/4"),
        (r"\frac{-3}{4}", "-3/4"),
        (r"2\frac{1}{2}", "5/2"),
        (r"1,\!000", "1000"),
        ("1{,}000", "1000"),
        (r"50\%", "50"),
        (r"\$5.", "5"),
        (r"30^\circ", "30"),
        (r"30^{\circ}", "30"),
        (r"5\text{ cm}^2", "5"),
        (r"12\mbox{ inches}", "12"),
        (r"x = 5", "5"),
        (r"\text{(B)}", "(B)"),
        (r"\textbf{Monday}", "Monday"),
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"\left\{ 3 \right.", r"\{3"),
        (r"\sqrt3", r"\sqrt{3}"),
        (r"\frac{\sqrt3}{2}", r"\frac{\sqrt{3}}{2}"),
        (r"\sqrt[3]{x}", r"\sqrt[3]{x}"),
        (r"\pi/2", r"\frac{\pi}{2}"),
        (r"2 \! \cdot \, 3", r"2\cdot3"),
        (r"x \cdot y", r"x\cdot y"),
        ("\u22125", "-5"),
    ],
)
def test_normalisation_makes_equal_answers_equal_strings(answer, expected):
    assert normalize_math_answer(answer) == expected


def test_text_group_is_a_unit_only_when_it_ends_the_answer():
    assert normalize_math_answer(r"\text{5 apples}") == "5apples"
    assert normalize_math_answer(r"5 \text{ and } 6") == "5and6"


@pytest.mark.parametrize(
    ("latex", "sympy_text"),
    [
        (r"\frac{1}{2}", "1/2"),
        (r"\frac{x+1}{2}", "(x + 1)/2"),
        (r"\frac{1}{2}x", "x/2"),
        (r"\sqrt{2}", "sqrt(2)"),
        (r"3\sqrt{2}", "3*sqrt(2)"),
        (r"\sqrt[3]{8}", "2"),
        (r"x^{2}y", "x**2*y"),
        ("x^2", "x**2"),
        (r"2^{10}", "1024"),
        (r"e^{-x}", "e**(-x)"),
        (r"2\pi", "2*pi"),
        (r"\infty", "oo"),
        (r"3\cdot4", "12"),
        (r"3\times4", "12"),
        (r"6\div4", "3/2"),
        ("xy", "x*y"),
        (r"\ln{x}", "log(x)"),
        (r"\sin{x}", "sin(x)"),
        ("(1,2)", "(1, 2)"),
    ],
)
def test_common_latex_forms_translate_to_the_same_value(latex, sympy_text):
    translated = latex_to_sympy_text(latex)

    assert translated is not None and is_safe_sympy_text(translated)
    assert expressions_equivalent(translated, sympy_text)


@pytest.mark.parametrize(
    "latex",
    ["", r"x_1", r"y=2x", r"x<3", r"[1,2)", r"\{1,2\}", r"|x|", r"5!", r"\alpha", r"\frac{1}{2", "é", r"\sqrt"],
)
def test_unsupported_forms_are_refused(latex):
    assert latex_to_sympy_text(latex) is None


@pytest.mark.parametrize(
    "text", ["__import__('os')", "x.func", "eval(1)", "lambda: 1", "Symbol('x')", "a[0]", "x; y", "'a'"]
)
def test_text_outside_the_safe_grammar_is_never_parsed(text):
    assert not is_safe_sympy_text(text)
    with pytest.raises(ValueError, match="refusing to parse"):
        expressions_equivalent(text, "1")


@pytest.mark.parametrize(
    ("text_a", "text_b", "expected"),
    [
        ("sqrt(2)/2", "1/sqrt(2)", True),
        ("2 x + 2", "2 (x + 1)", True),
        ("x (x + 1)", "x**2 + x", True),
        ("sin(x)**2 + cos(x)**2", "1", True),
        ("(1, 0.5)", "(1, 1/2)", True),
        ("(1, 2)", "(2, 1)", False),
        ("(1, 2)", "1", False),
        ("sqrt(2)", "1.41421356", False),
        ("x + 1", "x + 2", False),
        ("oo", "oo", True),
    ],
)
def test_symbolic_equivalence_in_process(text_a, text_b, expected):
    assert expressions_equivalent(text_a, text_b) is expected

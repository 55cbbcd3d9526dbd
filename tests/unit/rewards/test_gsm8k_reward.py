"""The GSM8K reward: correctness however the answer is phrased, the '#### <number>' format as
its own term, and verl's strict and flexible methods as config choices."""

import pytest

from roles.rewards import extract_gsm8k_answer, score_gsm8k
from roles.rewards.gsm8k import normalize_number, parse_gsm8k_ground_truth

SOLUTION = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 72", "72"),
        ("so the total is\n####   72", "72"),
        ("#### $1,234", "1234"),
        ("#### 1,234,567.", "1234567"),
        ("#### 72.0", "72"),
        ("#### 72.50", "72.5"),
        ("#### -5", "-5"),
        ("#### -$5", "-5"),
        ("#### $-5", "-5"),
        ("#### 0.25", "0.25"),
        ("#### -0", "0"),
    ],
)
def test_strict_answer_is_read_after_the_hashes_and_normalised(text, expected):
    assert extract_gsm8k_answer(text, "strict") == expected


def test_strict_uses_the_first_answer_so_text_appended_after_it_is_ignored():
    response = "#### 72\n\nQuestion: how many apples?\n#### 5"
    assert extract_gsm8k_answer(response, "strict") == "72"


@pytest.mark.parametrize("text", ["The answer is 72.", "#### seventy-two", "####", ""])
def test_strict_finds_nothing_without_a_number_after_the_hashes(text):
    assert extract_gsm8k_answer(text, "strict") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She sold 48 in April and 24 in May, so 72 in total.", "72"),
        ("The cost is $1,234.", "1234"),
        ("The temperature dropped to -5.", "-5"),
        ("Read pages 3-5", "5"),
        ("x2 = 4.0", "4"),
        ("no digits here", None),
    ],
)
def test_flexible_takes_the_last_number(text, expected):
    assert extract_gsm8k_answer(text, "flexible") == expected


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="'strict' or 'flexible'"):
        extract_gsm8k_answer("#### 1", "loose")


@pytest.mark.parametrize(
    ("text", "expected"),
    [(" $1,234.50. ", "1234.5"), ("72.0", "72"), ("-3", "-3"), ("abc", None), ("1 2", None)],
)
def test_normalize_number_accepts_exactly_one_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize(("ground_truth", "expected"), [(SOLUTION, "72"), ("72", "72"), ("1,234", "1234"), (72, "72"), (2.5, "2.5")])
def test_ground_truth_may_be_a_full_solution_or_a_bare_number(ground_truth, expected):
    assert parse_gsm8k_ground_truth(ground_truth) == expected


@pytest.mark.parametrize("ground_truth", ["no answer here", "#### none", None, True, float("nan")])
def test_unreadable_ground_truth_is_rejected(ground_truth):
    with pytest.raises(ValueError, match="GSM8K ground_truth"):
        parse_gsm8k_ground_truth(ground_truth)


def test_correct_answer_scores_one_with_normalised_extraction():
    result = score_gsm8k("q", "48 + 24 = 72 clips\n#### $72.00", SOLUTION)
    assert (result.score, result.extracted, result.info["reference"]) == (1.0, "72", "72")


def test_wrong_answer_scores_the_format_score():
    assert score_gsm8k("q", "#### 71", SOLUTION).score == 0.0
    assert score_gsm8k("q", "#### 71", SOLUTION, format_score=0.1).score == 0.1


def test_strict_method_scores_a_missing_answer_zero_even_with_a_format_score():
    result = score_gsm8k("q", "I think it is 72", SOLUTION, method="strict", format_score=0.1)
    assert (result.score, result.extracted) == (0.0, None)
    assert result.terms == {"correctness": 1.0, "format": 0.0}  # right, but not in the format verl's strict reads


def test_flexible_mode_grades_a_response_without_hashes():
    assert score_gsm8k("q", "So she sold 72 clips.", "72", method="flexible").score == 1.0
    assert score_gsm8k("q", "So she sold 72 clips.", "72", method="strict").score == 0.0


def test_thousands_separators_do_not_change_the_value():
    assert score_gsm8k("q", "#### 1,234", "1234").score == 1.0


@pytest.mark.parametrize(
    "response",
    ["#### 72", "The final answer is 72.", "So the answer is $\\boxed{72}$.", "She earns $72.00 in total.",
     "Answer: 72 clips", "#### 72\n\nQuestion: how many pears?\n#### 5"],
)
def test_the_default_method_counts_a_right_answer_however_it_is_phrased(response):
    result = score_gsm8k("q", response, SOLUTION)
    assert (result.score, result.terms["correctness"], result.unscored) == (1.0, 1.0, False)


def test_format_is_its_own_term_and_does_not_change_the_default_score():
    in_format, plain = score_gsm8k("q", "#### 72", "72"), score_gsm8k("q", "The answer is 72", "72")
    assert (in_format.score, in_format.terms) == (1.0, {"correctness": 1.0, "format": 1.0})
    assert (plain.score, plain.terms) == (1.0, {"correctness": 1.0, "format": 0.0})


def test_format_weight_adds_the_format_term_as_trl_adds_a_format_reward():
    assert score_gsm8k("q", "#### 72", "72", format_weight=0.2).score == 1.2
    assert score_gsm8k("q", "#### 71", "72", format_weight=0.2).score == 0.2
    assert score_gsm8k("q", "The answer is 72", "72", format_weight=0.2).score == 1.0
    assert score_gsm8k("q", "The answer is 71", "72", format_weight=0.2).score == 0.0


def test_format_score_pays_a_wrong_answer_only_in_the_format_as_verl_does():
    assert score_gsm8k("q", "#### 71", "72", format_score=0.1).score == 0.1
    assert score_gsm8k("q", "The answer is 71", "72", format_score=0.1).score == 0.0


def test_a_response_without_any_answer_is_wrong_not_unscored():
    result = score_gsm8k("q", "I do not know.", "72")
    assert (result.score, result.extracted, result.unscored, result.terms) == (0.0, None, False, {"correctness": 0.0, "format": 0.0})


def test_unknown_score_method_is_rejected():
    with pytest.raises(ValueError, match="'answer', 'strict' or 'flexible'"):
        score_gsm8k("q", "#### 1", "1", method="loose")

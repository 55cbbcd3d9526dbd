"""The final_number reward reads a numeric answer wherever a chat model puts it."""

import pytest

from roles.rewards import RewardRouter, RewardsConfig, extract_final_number, score_final_number
from roles.rewards.final_answer import parse_number_ground_truth


@pytest.mark.parametrize(
    ("response", "answer", "rule"),
    [
        ("84", "84", "last_number"),
        ("12*7 = 84", "84", "last_number"),
        ("84.", "84", "last_number"),
        ("12 * 7 = 84.\n", "84", "last_number"),
        ("The answer is -3.", "-3", "answer_is"),
        ("The final answer is 10.", "10", "answer_is"),
        ("Answer: 42", "42", "answer_is"),
        ("The answer is **56**.", "56", "answer_is"),
        ("so the answer is $1,234$", "1234", "answer_is"),
        ("The answer is 12*7 = 84.", "84", "answer_is"),
        ("The answer is 84.\nNext, 5 = 5", "84", "answer_is"),
        ("The answer is 5. Then I also checked 3 + 4 = 7.", "5", "answer_is"),
        ("The answer is 3.50", "3.5", "answer_is"),
        ("\\boxed{1,234}", "1234", "boxed"),
        ("First 2 + 2 = 4, then \\boxed{4} and \\boxed{8} is final.", "8", "boxed"),
        ("The answer is 7, so $\\boxed{x = 9}$", "9", "boxed"),
        ("\\boxed{\\text{72}}", "72", "boxed"),
        ("<answer>19</answer> and then 20", "19", "tag"),
        ("<answer> 84. </answer>", "84", "tag"),
        ("We have 3 apples and 4 pears, 7 in total", "7", "last_number"),
        ("56 - 9 = 47", "47", "last_number"),
        ("Read pages 3-5", "5", "last_number"),
        ("It costs $1,000.50 in the end.", "1000.5", "last_number"),
        ("-0", "0", "last_number"),
        ("The result is 84.0", "84", "last_number"),
    ],
)
def test_the_answer_is_found_however_it_is_phrased(response, answer, rule):
    assert extract_final_number(response) == (answer, rule)


@pytest.mark.parametrize("response", ["", "I do not know.", "seven", "\\boxed{"])
def test_a_response_without_a_number_has_no_answer(response):
    assert extract_final_number(response) == (None, "none")


@pytest.mark.parametrize(
    ("response", "answer"),
    [("\\boxed{\\frac{1}{2}} so 0.5", "\\frac{1}{2}"), ("<answer>seven</answer> or 7", "seven")],
)
def test_a_box_or_tag_without_a_number_is_the_answer_and_no_other_number_is_tried(response, answer):
    assert extract_final_number(response) == (answer, "boxed" if "boxed" in response else "tag")


@pytest.mark.parametrize(
    ("response", "ground_truth", "score"),
    [
        ("\\boxed{\\frac{1}{2}} so 0.5", 0.5, 1.0),  # a box holding a fraction is read as LaTeX by math-verify
        ("\\boxed{\\frac{1}{3}} so 0.5", 0.5, 0.0),
        ("<answer>seven</answer> or 7", 7, 0.0),  # a word is not a number to math-verify either
        ("\\boxed{2^{3}}", 8, 1.0),
    ],
)
def test_a_box_or_tag_without_one_number_is_compared_by_math_verify(response, ground_truth, score):
    result = score_final_number("", response, ground_truth)
    assert (result.score, result.terms, result.unscored) == (score, {"correctness": score}, False)
    assert result.info["match"] == "math_verify"


def test_two_numbers_are_compared_exactly_in_process():
    result = score_final_number("", "The answer is 84.0", 84)
    assert (result.score, result.info["match"]) == (1.0, "number")
    assert score_final_number("", "The answer is 84.0000001", 84).score == 0.0


@pytest.mark.parametrize(
    ("response", "ground_truth"),
    [
        ("12*7 = 84", "84"),
        ("84.", 84),
        ("The answer is -3.", "-3"),
        ("\\boxed{1,234}", "1234"),
        ("The total is 1234", "1,234"),
        ("The answer is 19.0", 19),
        ("So 0.50", "0.5"),
        ("x = 2.5", 2.5),
        ("First 3 + 4 = 7, and 7 * 2 = 14.", "14"),
    ],
)
def test_a_right_answer_scores_one_compared_as_a_number(response, ground_truth):
    result = score_final_number("What is it?", response, ground_truth)
    assert result.score == 1.0
    assert result.info["reference"] == parse_number_ground_truth(ground_truth)


@pytest.mark.parametrize(
    ("response", "ground_truth"),
    [
        ("12*7 = 89", "84"),
        ("84 is what I thought, but it is 85", "84"),  # the last number counts, not the first
        ("The answer is 3.", "-3"),
        ("no number at all", "0"),
        ("12,34", "1234"),  # not grouped in threes: two numbers, 12 and 34
    ],
)
def test_a_wrong_or_missing_answer_scores_zero(response, ground_truth):
    assert score_final_number("", response, ground_truth).score == 0.0


def test_the_result_names_the_rule_that_found_the_answer():
    result = score_final_number("", "6 x 9 = 54. The answer is 54.", "54")
    assert (result.score, result.extracted, result.info["rule"]) == (1.0, "54", "answer_is")


@pytest.mark.parametrize(("ground_truth", "canonical"), [("1,234", "1234"), (" -3.50 ", "-3.5"), (19.0, "19"), (7, "7")])
def test_ground_truths_are_read_as_numbers(ground_truth, canonical):
    assert parse_number_ground_truth(ground_truth) == canonical


@pytest.mark.parametrize("ground_truth", ["seven", "1/2", None, True, float("nan"), ["3"]])
def test_a_ground_truth_that_is_not_one_number_is_a_dataset_error_naming_the_column(ground_truth):
    with pytest.raises(ValueError, match="final_number ground_truth must be one number.*ground_truth column"):
        score_final_number("", "3", ground_truth)


def test_the_router_builds_it_from_config_by_its_type_name():
    router = RewardRouter.from_config(
        RewardsConfig.model_validate({"by_data_source": {"reasoning_gym/basic_arithmetic": {"type": "final_number"}}})
    )
    result = router("Calculate 12 * 7.", "12 * 7 = 84", "84", data_source="reasoning_gym/basic_arithmetic")
    assert result.score == 1.0


def test_the_config_has_no_options_so_a_misspelt_one_is_an_error():
    with pytest.raises(ValueError, match="extra"):
        RewardsConfig.model_validate({"default": {"type": "final_number", "method": "last"}})

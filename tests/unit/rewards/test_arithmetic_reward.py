"""The arithmetic reward grades the integer a response starts with."""

import pytest

from roles.rewards import RewardResult, extract_leading_integer, score_arithmetic


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("19", "19"),
        ("19\n5+5=10", "19"),
        ("  19 is the answer", "19"),
        ("-3", "-3"),
        ("19abc", "19"),
        ("007", "007"),
        ("19.5", "19.5"),
        ("19.", "19"),
    ],
)
def test_leading_number_is_extracted_as_written(response, expected):
    assert extract_leading_integer(response) == expected


@pytest.mark.parametrize("response", ["", "   ", "answer: 19", "+19", "=19", "- 3"])
def test_response_not_starting_with_a_number_has_no_answer(response):
    assert extract_leading_integer(response) is None
    assert score_arithmetic("12+7=", response, 19) == RewardResult(score=0.0, extracted=None)


def test_correct_leading_answer_scores_one_despite_trailing_junk():
    assert score_arithmetic("12+7=", "19 3+3=6 junk", 19) == RewardResult(score=1.0, extracted="19")


def test_wrong_answer_scores_zero_and_shows_what_was_graded():
    assert score_arithmetic("12+7=", "18\n", 19) == RewardResult(score=0.0, extracted="18")


def test_only_the_first_number_counts():
    assert score_arithmetic("12+7=", "18 19", 19).score == 0.0


def test_negative_answer_matches_negative_ground_truth():
    assert score_arithmetic("3-8=", "-5", -5).score == 1.0
    assert score_arithmetic("3-8=", "5", -5).score == 0.0


def test_decimal_answer_scores_zero_even_when_its_value_is_integral():
    assert score_arithmetic("12+7=", "19.0", 19) == RewardResult(score=0.0, extracted="19.0")


def test_leading_zeros_do_not_change_the_value():
    assert score_arithmetic("3+4=", "07", 7).score == 1.0


@pytest.mark.parametrize("ground_truth", [19, "19", " 19 ", 19.0])
def test_integer_ground_truth_is_accepted_in_common_storage_forms(ground_truth):
    assert score_arithmetic("12+7=", "19", ground_truth).score == 1.0


@pytest.mark.parametrize("ground_truth", [19.5, "nineteen", "", None, True])
def test_non_integer_ground_truth_is_rejected_with_the_value_named(ground_truth):
    with pytest.raises(ValueError, match="arithmetic ground_truth must be an integer"):
        score_arithmetic("12+7=", "19", ground_truth)


def test_extra_row_fields_are_ignored():
    assert score_arithmetic("12+7=", "19", 19, data_source="arithmetic", index=3).score == 1.0

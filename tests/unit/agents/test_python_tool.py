"""The ``python`` tool of multi-turn episodes: the model's code runs in the real sandbox
and the tool message is what it printed, or why it failed."""

from __future__ import annotations

from roles.agents.environments import Action
from roles.agents.tool_calls import ToolCall
from roles.python_tool import MAX_ANSWER_CHARACTERS, PythonToolEnvironment
from tests.unit.rewards.test_sandbox import uid_range  # noqa: F401 - an autouse fixture: no sandbox process is left


def environment(tmp_path, uid_range) -> PythonToolEnvironment:  # type: ignore[no-untyped-def]  # noqa: F811
    python = PythonToolEnvironment(time_limit_s=1.0, root_dir=str(tmp_path), uid_range=uid_range, max_processes=8)
    python.reset({"prompt": "What is 12*7?", "ground_truth": 84})
    return python


def call(python: PythonToolEnvironment, code: str) -> str:
    [message] = python.step(Action("", "", [ToolCall("python", {"code": code})], [], turn=1)).messages
    assert message["role"] == "tool" and message["name"] == "python"
    return message["content"]


def test_the_program_output_is_the_tool_answer_and_the_final_answer_is_scored(tmp_path, uid_range):  # noqa: F811
    python = environment(tmp_path, uid_range)
    assert call(python, "print(12 * 7)") == "84\n"
    assert python.step(Action("84", "84", [], [], turn=2)).reward == 1.0


def test_a_failing_a_looping_and_a_flooding_program_answer_with_what_went_wrong(tmp_path, uid_range):  # noqa: F811
    python = environment(tmp_path, uid_range)
    failed = call(python, "print('partial')\nraise ValueError('bad input')")
    assert failed.startswith("partial\nerror: ") and "ValueError" in failed
    assert call(python, "while True:\n    pass").startswith("error: the program ran past its 1 s limit")
    assert len(call(python, "print('x' * 100_000)")) == MAX_ANSWER_CHARACTERS

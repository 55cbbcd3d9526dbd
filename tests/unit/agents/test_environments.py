"""The built-in environments: the calculator answers calls and errors as tool messages and
scores the final answer; the number-guessing game answers with hints and a final reward."""

from __future__ import annotations

import pytest

from roles.agents.environments import (
    Action,
    CalculatorEnvironment,
    NumberGuessingGame,
    Observation,
    evaluate_arithmetic,
)
from roles.agents.tool_calls import tool_call_format

HERMES = tool_call_format("hermes")


def action(text: str, turn: int = 1) -> Action:
    parsed = HERMES.parse(text)
    return Action(text, parsed.content, parsed.calls, parsed.malformed, turn)


def calculator(ground_truth: int = 84) -> CalculatorEnvironment:
    environment = CalculatorEnvironment()
    assert environment.reset({"prompt": "What is 12*7?", "ground_truth": ground_truth}) == [
        {"role": "user", "content": "What is 12*7?"}]
    return environment


def test_a_calculator_call_is_answered_with_its_result_as_a_tool_message():
    observation = calculator().step(action('<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>'))
    assert observation == Observation([{"role": "tool", "name": "calculator", "content": "84"}], 0.0, False,
                                      {"tool_calls": 1, "tool_errors": 0})


def test_the_turn_without_a_call_ends_the_episode_with_the_answers_score():
    environment = calculator()
    assert environment.step(action("84", turn=2)) == Observation([], 1.0, True)
    assert calculator().step(action("85")).reward == 0.0


def test_a_chat_models_sentence_is_graded_by_its_final_number_when_the_calculator_is_told_so():
    sentence = action("The product of 37 and 84 is 3,108.", turn=2)
    chat = CalculatorEnvironment(answer="final_number")
    chat.reset({"messages": [{"role": "user", "content": "What is 37 * 84?"}], "ground_truth": "3108"})
    assert chat.step(sentence) == Observation([], 1.0, True)
    leading = CalculatorEnvironment()  # the default reads the number a reply starts with: a sentence scores 0
    leading.reset({"prompt": "37*84=", "ground_truth": "3108"})
    assert leading.step(sentence).reward == 0.0
    with pytest.raises(ValueError, match="answer must be one of"):
        CalculatorEnvironment(answer="first")


@pytest.mark.parametrize(("turn", "error"), [
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"</tool_call>', "could not be read: the call is not valid JSON"),
    ('<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>', "there is no tool named 'search'; the tools are ['calculator']"),
    ('<tool_call>{"name": "calculator", "arguments": {"expr": "1"}}</tool_call>', "calculator cannot take these arguments"),
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "1/0"}}</tool_call>', "calculator failed: division by zero"),
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "__import__(\'os\')"}}</tool_call>', "only numbers"),
])
def test_a_bad_call_is_answered_with_an_error_the_model_can_read_and_the_episode_goes_on(turn: str, error: str):
    observation = calculator().step(action(turn))
    [message] = observation.messages
    assert message["role"] == "tool" and message["content"].startswith("error: ") and error in message["content"]
    assert not observation.done and observation.info["tool_errors"] == 1


def test_the_calculator_evaluates_arithmetic_without_eval_and_refuses_huge_exponents():
    assert evaluate_arithmetic("(12 + 7) * -3") == -57 and evaluate_arithmetic("7 / 2") == 3.5
    assert evaluate_arithmetic("8 / 2") == 4 and evaluate_arithmetic("2 ** 10 % 1000") == 24
    with pytest.raises(ValueError, match="exponents above 64"):
        evaluate_arithmetic("9 ** 9 ** 9")
    with pytest.raises(ValueError, match="not an arithmetic expression"):
        evaluate_arithmetic("12 +")
    with pytest.raises(ValueError, match="longer than 200"):
        evaluate_arithmetic("1+" * 150 + "1")


def test_the_guessing_game_answers_higher_or_lower_and_rewards_the_right_guess():
    game = NumberGuessingGame()
    [prompt] = game.reset({"secret": 42, "low": 1, "high": 100, "max_guesses": 5})
    assert "between 1 and 100" in prompt["content"]
    assert game.step(action("50")).messages == [{"role": "user", "content": "Lower."}]
    assert game.step(action("I guess 25")).messages == [{"role": "user", "content": "Higher."}]
    assert game.step(action("no idea")).messages == [{"role": "user", "content": "Answer with a number."}]
    assert game.step(action("42")) == Observation([], 1.0, True, {"guesses": 4})


def test_the_guessing_game_ends_without_reward_when_the_guesses_run_out_and_refuses_a_secret_out_of_range():
    game = NumberGuessingGame()
    game.reset({"secret": 3, "max_guesses": 2})
    assert not game.step(action("1")).done
    assert game.step(action("2")) == Observation([], 0.0, True, {"guesses": 2})
    with pytest.raises(ValueError, match=r"the secret 0 is outside \[1, 100\]"):
        NumberGuessingGame().reset({"secret": 0})

"""A multi-turn trajectory's tokens against a sequence written out by hand: the prompt,
each sampled turn exactly as sampled (loss mask 1, the generator's log-probs beside
it), each observation as the chat template writes it (loss mask 0), and the limits."""

from __future__ import annotations

import pytest

from roles.agents.chat_tokens import TemplateError, observation_tokens, prompt_tokens
from roles.agents.environments import Action, CalculatorEnvironment
from roles.agents.tool_calls import tool_call_format
from roles.agents.trajectory import Trajectory, TrajectoryLimits
from tests.unit.agents.chat_fixtures import CHATML, CHATML_WITH_TOOLS, characters, chat_tokenizer

HERMES = tool_call_format("hermes")
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>'
LIMITS = TrajectoryLimits(max_turns=4, max_total_tokens=1024, max_new_tokens_per_turn=128)


def sampled(tokenizer, text: str, first_logprob: float) -> tuple[list[int], list[float]]:  # type: ignore[no-untyped-def]
    """A turn as the generator returns it: the text's tokens then the end-of-sequence
    token, with made-up log-probs that tell the tokens apart."""
    tokens = characters(tokenizer, text) + [tokenizer.eos_token_id]
    return tokens, [first_logprob - 0.01 * index for index in range(len(tokens))]


def play_two_turns(template: str) -> tuple[Trajectory, list[int], list[int], list[int], list[int], list[float]]:
    """The calculator episode: a call, its result, the answer."""
    tokenizer = chat_tokenizer(template)
    environment = CalculatorEnvironment()
    history = environment.reset({"prompt": "What is 12*7?", "ground_truth": 84})
    trajectory = Trajectory(prompt_tokens(tokenizer, history, environment.tools, HERMES))
    first, first_logprobs = sampled(tokenizer, CALL, -0.5)
    trajectory.add_turn(first, first_logprobs, version=3)
    parsed = HERMES.parse(CALL)
    observation = environment.step(Action(CALL, parsed.content, parsed.calls, parsed.malformed, turn=1))
    between = observation_tokens(tokenizer, history, CALL, True, observation.messages, environment.tools, HERMES)
    assert trajectory.add_observation(between, observation.reward, LIMITS)
    history = history + [{"role": "assistant", "content": CALL}, *observation.messages]
    second, second_logprobs = sampled(tokenizer, "84", -0.2)
    trajectory.add_turn(second, second_logprobs, version=4)
    final = environment.step(Action("84", "84", [], [], turn=2))
    assert final.done and final.reward == 1.0
    trajectory.rewards.append(final.reward)
    trajectory.end("done")
    return trajectory, first, between, second, first_logprobs + [0.0] * len(between), second_logprobs


def test_a_two_turn_tool_call_is_the_hand_written_sequence_with_the_loss_on_sampled_tokens_only():
    trajectory, first, between, second, logprobs_so_far, second_logprobs = play_two_turns(CHATML)
    tokenizer = chat_tokenizer(CHATML)
    system = HERMES.system_prompt(CalculatorEnvironment.tools)  # this template takes no tools: they go in a system message
    assert trajectory.prompt_ids == characters(
        tokenizer, f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWhat is 12*7?<|im_end|>\n<|im_start|>assistant\n")
    assert first == characters(tokenizer, CALL + "<|im_end|>")
    # the model sampled <|im_end|>; the template's "\n" after it, the tool message and the next prompt follow
    assert between == characters(tokenizer, "\n<|im_start|>tool\n84<|im_end|>\n<|im_start|>assistant\n")
    assert trajectory.response_ids == first + between + second
    assert trajectory.loss_mask == [1] * len(first) + [0] * len(between) + [1] * len(second)
    assert trajectory.logprobs == logprobs_so_far + second_logprobs  # each log-prob beside the token it belongs to
    assert trajectory.versions == [3, 4] and trajectory.rewards == [0.0, 1.0] and trajectory.end_reason == "done"


def test_the_trajectory_is_the_template_rendering_of_the_whole_conversation():
    for template in (CHATML, CHATML_WITH_TOOLS):
        trajectory, *_ = play_two_turns(template)
        tokenizer = chat_tokenizer(template)
        tools = CalculatorEnvironment.tools
        messages = [{"role": "user", "content": "What is 12*7?"}, {"role": "assistant", "content": CALL},
                    {"role": "tool", "name": "calculator", "content": "84"}, {"role": "assistant", "content": "84"}]
        if template == CHATML:
            messages.insert(0, {"role": "system", "content": HERMES.system_prompt(tools)})
        extra = {"tools": tools} if template == CHATML_WITH_TOOLS else {}
        whole = tokenizer.apply_chat_template(messages, tokenize=False, **extra)
        # the template's rendering ends with the "\n" after the last turn's end, which is not sampled
        assert trajectory.prompt_ids + trajectory.response_ids == characters(tokenizer, whole.removesuffix("\n"))


def test_a_template_that_rewrites_earlier_turns_is_refused():
    # drops every turn but the last two once a conversation grows: earlier tokens would change
    forgetful = chat_tokenizer("{% for message in messages[-2:] %}{{ message['role'] }}:{{ message['content'] }}|{% endfor %}")
    with pytest.raises(TemplateError, match="renders earlier turns differently"):
        observation_tokens(forgetful, [{"role": "user", "content": "q"}], "a", True,
                           [{"role": "tool", "content": "r"}], [], HERMES)
    rewriting = chat_tokenizer("{% for message in messages %}{{ message['content'] | upper }}{% endfor %}")
    with pytest.raises(TemplateError, match="rewrites a model turn's text"):
        observation_tokens(rewriting, [{"role": "user", "content": "q"}], "a", True, [{"role": "tool", "content": "r"}], [], HERMES)


def test_the_limits_bound_the_next_turn_and_an_observation_that_does_not_fit_ends_the_trajectory():
    limits = TrajectoryLimits(max_turns=2, max_total_tokens=20, max_new_tokens_per_turn=8)
    trajectory = Trajectory([1] * 6)
    assert trajectory.room_for_next_turn(limits) == 8
    trajectory.add_turn([5] * 8, [-1.0] * 8, version=0)
    assert trajectory.room_for_next_turn(limits) == 6  # 20 - 14 tokens so far
    assert not trajectory.add_observation([7] * 6, 0.5, limits)  # 14 + 6 leaves no room for a sampled token
    assert trajectory.end_reason == "max_tokens" and trajectory.rewards == [0.5] and trajectory.length == 14
    assert trajectory.room_for_next_turn(limits) == 0
    with pytest.raises(ValueError, match=r"ended already \(max_tokens\)"):
        trajectory.add_turn([5], [-1.0], version=0)


def test_the_last_allowed_turn_leaves_no_room_and_a_turn_needs_a_log_prob_per_token():
    limits = TrajectoryLimits(max_turns=1)
    trajectory = Trajectory([1, 2])
    with pytest.raises(ValueError, match="a turn of 2 tokens came with 1 log-probs"):
        trajectory.add_turn([5, 6], [-1.0], version=0)
    trajectory.add_turn([5, 6], [-1.0, -2.0], version=0)
    assert trajectory.room_for_next_turn(limits) == 0

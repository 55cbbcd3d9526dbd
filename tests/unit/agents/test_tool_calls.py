"""Reading tool calls from a model turn: the hermes and json formats, malformed calls as
problems the model can read, never exceptions."""

from __future__ import annotations

import pytest

from roles.agents.tool_calls import (
    HermesFormat,
    MalformedToolCall,
    ParsedTurn,
    ToolCall,
    register_tool_call_format,
    tool_call_format,
)

HERMES = tool_call_format("hermes")
JSON = tool_call_format("json")


def test_a_hermes_call_is_read_with_the_text_around_it_as_content():
    turn = 'Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "12*7"}}\n</tool_call>'
    assert HERMES.parse(turn) == ParsedTurn("Let me compute.", [ToolCall("calculator", {"expression": "12*7"})], [])


def test_several_hermes_calls_keep_their_order_and_a_bad_one_does_not_stop_the_others():
    turn = ('<tool_call>{"name": "a", "arguments": {}}</tool_call> and '
            '<tool_call>{"name": "b", "arguments": {"x": 1</tool_call>'
            '<tool_call>{"name": "c", "arguments": "{\\"y\\": 2}"}</tool_call>')
    parsed = HERMES.parse(turn)
    assert parsed.calls == [ToolCall("a", {}), ToolCall("c", {"y": 2})]  # arguments written as a JSON string are read
    assert parsed.content == "and"
    [bad] = parsed.malformed
    assert bad.text == '{"name": "b", "arguments": {"x": 1' and bad.problem.startswith("the call is not valid JSON")


@pytest.mark.parametrize(("body", "problem"), [
    ('["calculator"]', "must be a JSON object with a name and arguments, not a list"),
    ('{"arguments": {}}', 'no "name" string'),
    ('{"name": "f", "arguments": [1]}', '"arguments" of f must be a JSON object'),
    ('{"name": "f", "arguments": "not json"}', 'string that is not a JSON object'),
])
def test_a_call_that_is_json_but_not_a_call_is_malformed_with_the_reason(body: str, problem: str):
    parsed = HERMES.parse(f"<tool_call>{body}</tool_call>")
    assert parsed.calls == [] and len(parsed.malformed) == 1 and problem in parsed.malformed[0].problem


def test_a_call_cut_off_by_the_token_limit_is_malformed_for_its_missing_tag():
    parsed = HERMES.parse('Sure. <tool_call>{"name": "calculator", "argum')
    assert parsed == ParsedTurn("Sure.", [], [MalformedToolCall('<tool_call>{"name": "calculator", "argum',
                                                                 "the call has no closing </tool_call> tag")])


def test_a_turn_without_a_call_is_all_content():
    assert HERMES.parse("  The answer is 84. ") == ParsedTurn("The answer is 84.", [], [])
    assert JSON.parse("The answer is 84.") == ParsedTurn("The answer is 84.", [], [])


def test_the_json_format_reads_a_whole_turn_call_with_parameters_or_arguments():
    assert JSON.parse('{"name": "calculator", "parameters": {"expression": "1+1"}}').calls == [
        ToolCall("calculator", {"expression": "1+1"})]
    assert JSON.parse(' {"name": "f", "arguments": {}} ').calls == [ToolCall("f", {})]
    assert JSON.parse('{"name": 3}').malformed[0].problem == 'the call has no "name" string'


@pytest.mark.parametrize("name", ["hermes", "json"])
def test_a_rendered_call_parses_back_to_itself(name: str):
    format = tool_call_format(name)
    call = ToolCall("calculator", {"expression": "(2+3)*4"})
    assert format.parse(format.render([call])) == ParsedTurn("", [call], [])


def test_the_system_prompt_names_every_tool_and_the_format():
    tools = [{"type": "function", "function": {"name": "calculator"}}, {"type": "function", "function": {"name": "search"}}]
    prompt = HERMES.system_prompt(tools)
    assert '"calculator"' in prompt and '"search"' in prompt and "<tool_call>" in prompt


def test_an_unknown_format_is_refused_with_the_known_ones_and_a_taken_name_cannot_be_registered_again():
    with pytest.raises(ValueError, match=r"no tool call format named 'qwen'; known: \['hermes', 'json'\]"):
        tool_call_format("qwen")
    with pytest.raises(ValueError, match="named 'hermes' exists already"):
        register_tool_call_format(HermesFormat())

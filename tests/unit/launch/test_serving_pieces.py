"""Pure pieces of the inference service: what a stream may send yet, how schema errors
read, which requests the schemas refuse, the sampling parameters a request gets, and
the Prometheus text the metrics render."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest

from launch.serving.app import describe_validation_errors, is_json_media_type
from launch.serving.batcher import streamable_text
from launch.serving.metrics import CONTENT_TYPE, ServingMetrics
from launch.serving.schemas import (
    GREEDY_BELOW_TEMPERATURE, MAX_STOP_CHARACTERS, ChatCompletionRequest, CompletionRequest, GenerateRequest,
)
from launch.serving.service import sampling_params


@pytest.mark.parametrize(("text", "stop", "sendable"), [
    ("12 + 7 is 19", [], "12 + 7 is 19"),
    ("19\n\nQ", ["\n\n"], "19"),          # a whole stop string: cut before it
    ("19\n", ["\n\n"], "19"),             # might become "\n\n": held back
    ("19 EN", ["END"], "19 "),            # "EN" might become "END"
    ("19 E.", ["END"], "19 E."),          # it cannot any more
    ("caf\ufffd", [], "caf"),             # an incomplete multi-byte character
    ("ab", ["abc", "b"], ""),             # "b" is a stop string itself
])
def test_a_stream_sends_only_text_that_no_later_token_can_take_back(text: str, stop: list[str], sendable: str) -> None:
    assert streamable_text(text, stop) == sendable


def schema_errors(model: type, body: object) -> list[dict]:
    with pytest.raises(pydantic.ValidationError) as caught:
        model.model_validate(body)
    return [{**error, "loc": ("body", *error["loc"])} for error in caught.value.errors()]  # as FastAPI reports them


def test_schema_errors_read_as_field_and_problem() -> None:
    message, param = describe_validation_errors(schema_errors(GenerateRequest, {"prompt": 3, "temperature": 9}))
    # in the schema's field order; the first names the param
    assert message == "temperature: Input should be less than or equal to 2; prompt: Input should be a valid string"
    assert param == "temperature"
    message, param = describe_validation_errors(schema_errors(GenerateRequest, {"prompt": "1", "stop": 5}))
    assert message == "stop: Input should be a valid string; stop: Input should be a valid list" and param == "stop"
    message, param = describe_validation_errors(
        schema_errors(ChatCompletionRequest, {"messages": [{"role": "user", "content": 1}]}))
    assert message.startswith("messages.0.content: ") and param == "messages.0.content"


def test_body_level_errors_say_what_the_body_should_be() -> None:
    assert describe_validation_errors([{"type": "missing", "loc": ("body",), "msg": "Field required"}]) == (
        "send a JSON object as the body (content-type: application/json)", None)
    assert describe_validation_errors([{"type": "json_invalid", "loc": ("body", 12), "msg": "JSON decode error",
                                        "ctx": {"error": "Expecting value"}}]) == (
        "the body is not valid JSON: Expecting value", None)


@pytest.mark.parametrize(("content_type", "is_json"), [
    ("application/json", True), ("Application/JSON; charset=utf-8", True), ("application/vnd.api+json", True),
    ("text/plain", False), ("application/x-www-form-urlencoded", False), ("text/json", False), ("", False),
    (None, False),
])
def test_a_body_is_json_only_under_application_json_or_a_json_suffix(content_type: str | None, is_json: bool) -> None:
    assert is_json_media_type(content_type) is is_json


def test_a_stop_string_longer_than_the_bound_is_refused_naming_stop() -> None:
    message, param = describe_validation_errors(
        schema_errors(GenerateRequest, {"prompt": "1", "stop": ["ok", "x" * (MAX_STOP_CHARACTERS + 1)]}))
    assert message == (f"stop: Value error, a stop string is at most {MAX_STOP_CHARACTERS} characters, got one of "
                       f"{MAX_STOP_CHARACTERS + 1}") and param == "stop"
    assert GenerateRequest.model_validate({"prompt": "1", "stop": "x" * MAX_STOP_CHARACTERS}).stop_strings()


@pytest.mark.parametrize("body", [{"stream_options": {"include_usage": True}},
                                  {"stream": False, "stream_options": {}}])
def test_stream_options_without_stream_true_are_refused_naming_stream_options(body: dict) -> None:
    message, param = describe_validation_errors(schema_errors(CompletionRequest, {"prompt": "1", **body}))
    assert message == ('stream_options: Value error, stream_options is only allowed when stream is true: '
                       'set "stream": true or leave stream_options out')
    assert param == "stream_options"
    assert CompletionRequest.model_validate({"prompt": "1", "stream": True, "stream_options": {"include_usage": True}})
    assert CompletionRequest.model_validate({"prompt": "1", "stream_options": None})


@pytest.mark.parametrize(("model", "body", "param"), [
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": "12\ud800"}]}, "messages.0.content"),
    (ChatCompletionRequest, {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
     "messages.0.content"),
    (GenerateRequest, {"prompt": "1", "stop": ["\n", "\ud83d"]}, "stop"),
])
def test_text_with_a_lone_surrogate_is_refused_naming_the_field(model: type, body: dict, param: str) -> None:
    message, found = describe_validation_errors(schema_errors(model, body))
    assert message.startswith(f"{param}: Value error, ") and "lone surrogate" in message and found == param
    # a surrogate pair escaped in JSON is one character once parsed: accepted
    paired = ChatCompletionRequest.model_validate_json('{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}')
    assert paired.messages[0].text() == "\U0001f600"


@pytest.mark.parametrize("temperature", [0.0, 5e-324, 1e-45, 1e-30, GREEDY_BELOW_TEMPERATURE / 2])
def test_a_temperature_below_the_greedy_bound_decodes_greedily(temperature: float) -> None:
    params = sampling_params(GenerateRequest(prompt="1", temperature=temperature, top_k=5, seed=3),
                             max_new_tokens=4, n=2, vocabulary_size=64)
    assert (params.temperature, params.top_k, params.n, params.max_new_tokens) == (1.0, 1, 2, 4)


def test_a_temperature_at_the_greedy_bound_samples_with_it() -> None:
    params = sampling_params(GenerateRequest(prompt="1", temperature=GREEDY_BELOW_TEMPERATURE, top_k=5),
                             max_new_tokens=4, n=1, vocabulary_size=64)
    assert (params.temperature, params.top_k) == (GREEDY_BELOW_TEMPERATURE, 5)


@pytest.mark.parametrize(("top_k", "applied"), [(0, 0), (1, 1), (63, 63), (64, 0), (10**9, 0), (10**30, 0)])
def test_a_top_k_at_or_above_the_vocabulary_size_turns_top_k_off(top_k: int, applied: int) -> None:
    params = sampling_params(GenerateRequest(prompt="1", top_k=top_k), max_new_tokens=4, n=1, vocabulary_size=64)
    assert params.top_k == applied


def documented_metric_families() -> dict[str, str]:
    """name -> type, from the metrics table of docs/serving.md."""
    table = (Path(__file__).resolve().parents[3] / "docs" / "serving.md").read_text().split("### Metrics", 1)[1]
    families = {}
    for row in table.splitlines():
        if row.startswith("| `troupe_"):
            names, kind = row.split("|")[1:3]
            families.update((name, kind.strip()) for name in re.findall(r"`(troupe_\w+)", names))
    return families


def test_the_metrics_render_exactly_the_documented_families_each_with_help_and_type() -> None:
    text = ServingMetrics().render().decode()
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")}
    documented = documented_metric_families()
    assert len(documented) == 11 and types == documented and sorted(helps) == sorted(documented)
    assert CONTENT_TYPE.startswith("text/plain; version=")


def test_observations_show_up_under_their_labels_in_cumulative_buckets() -> None:
    metrics = ServingMetrics()
    for seconds in (0.004, 0.3, 100.0):
        metrics.request_latency.labels(endpoint="/generate").observe(seconds)
    metrics.requests.labels(endpoint="/generate", status="200").inc()
    text = metrics.render().decode()
    assert 'troupe_request_latency_seconds_bucket{endpoint="/generate",le="0.005"} 1.0' in text
    assert 'troupe_request_latency_seconds_bucket{endpoint="/generate",le="+Inf"} 3.0' in text
    assert metrics.value("troupe_request_latency_seconds_count", endpoint="/generate") == 3
    assert metrics.value("troupe_requests_total", endpoint="/generate", status="200") == 1
    assert metrics.value("troupe_requests_total", endpoint="/generate", status="500") == 0

# Tools in chat completions
CALCULATOR = {"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}


def test_an_answer_that_calls_tools_comes_back_as_openai_tool_calls():
    from launch.serving.openai import assistant_message
    from roles.agents.tool_calls import tool_call_format

    hermes = tool_call_format("hermes")
    text = 'Let me compute. <tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>'
    choice = assistant_message(text, "stop", hermes)
    [call] = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me compute."
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "calculator", "arguments": '{"expression": "12*7"}'}
    # without tools, or with a call that cannot be read, the model's text is the answer
    assert assistant_message(text, "stop", None) == {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    broken = '<tool_call>{"name": "calculator", "arguments": {</tool_call>'
    assert assistant_message(broken, "stop", hermes)["message"] == {"role": "assistant", "content": broken}


def test_chat_requests_take_tools_tool_messages_and_assistant_calls_and_refuse_what_openai_refuses():
    conversation = [
        {"role": "user", "content": "12*7?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "12*7"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "84"},
    ]
    request = ChatCompletionRequest(messages=conversation, tools=[CALCULATOR])
    assert request.messages[1].text() == "" and request.messages[2].role == "tool"
    with pytest.raises(pydantic.ValidationError, match="content may be null only in an assistant message with tool_calls"):
        ChatCompletionRequest(messages=[{"role": "user", "content": None}])
    with pytest.raises(pydantic.ValidationError, match="stream with tools is not supported yet"):
        ChatCompletionRequest(messages=conversation, tools=[CALCULATOR], stream=True)
    assert ChatCompletionRequest(messages=conversation, tools=[CALCULATOR], stream=True, tool_choice="none").stream
    with pytest.raises(pydantic.ValidationError):
        ChatCompletionRequest(messages=conversation, tools=[{"type": "function", "function": {"name": ""}}])

"""Pure pieces of the inference service: what a stream may send yet, how schema errors
read, and the Prometheus text the metrics render."""

from __future__ import annotations

import pydantic
import pytest

from launch.serving.app import describe_validation_errors
from launch.serving.batcher import streamable_text
from launch.serving.metrics import Counter, Histogram, ServingMetrics
from launch.serving.schemas import ChatCompletionRequest, GenerateRequest


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


def test_histograms_render_cumulative_buckets_with_sum_and_count() -> None:
    histogram = Histogram("latency_seconds", "Latency.", ("endpoint",), buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value, endpoint="/generate")
    assert histogram.render() == [
        "# HELP latency_seconds Latency.",
        "# TYPE latency_seconds histogram",
        'latency_seconds_bucket{endpoint="/generate",le="0.1"} 2',
        'latency_seconds_bucket{endpoint="/generate",le="1"} 3',
        'latency_seconds_bucket{endpoint="/generate",le="+Inf"} 4',
        'latency_seconds_sum{endpoint="/generate"} 3.65',
        'latency_seconds_count{endpoint="/generate"} 4',
    ]
    with pytest.raises(ValueError, match="takes labels"):
        histogram.observe(1.0)


def test_counters_escape_label_values_and_show_zero_before_the_first_count() -> None:
    errors = Counter("errors_total", "Errors.", ("reason",))
    errors.inc(reason='say "no"\n')
    assert errors.render()[-1] == 'errors_total{reason="say \\"no\\"\\n"} 1'
    assert Counter("tokens_total", "Tokens.").render()[-1] == "tokens_total 0"


def test_every_family_has_help_and_type_lines() -> None:
    text = ServingMetrics().render()
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert helps == types and len(helps) == 11 and all(name.startswith("troupe_") for name in helps)

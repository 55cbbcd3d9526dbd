"""Tool calls in a model's turn: reading the formats chat templates teach models to write.

A model asks for a tool by writing a call into its turn, in the format its chat template
taught it. A `ToolCallFormat` reads one turn's text into what the model said around the
calls (``content``), the calls, and one `MalformedToolCall` for each call it could not
read. Nothing here raises on a malformed call: the environment answers it with an error
observation, so the policy learns from the mistake instead of the run stopping.

Formats, chosen by name (`tool_call_format`), one per model family:

* ``hermes``: Qwen2.5, Qwen3, Hermes and the many templates that copied them; each call
  is a JSON object between tags, ``<tool_call>{"name": "f", "arguments": {...}}</tool_call>``.
* ``json``: the whole turn is one JSON object ``{"name": "f", "parameters": {...}}``
  (Llama 3.1's custom-tool format; ``arguments`` is accepted too); any other turn is
  content.

A format also writes the calls back (`render`, for serving's OpenAI ``tool_calls`` and
tests) and says how to describe the tools in a system message (`system_prompt`) for
chat templates that do not take a ``tools`` argument themselves. `register_tool_call_format`
adds a format for another family.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple, Protocol


class ToolCall(NamedTuple):
    """One call the model asked for."""

    name: str
    """The tool's name, as the model wrote it."""
    arguments: dict[str, Any]
    """The call's arguments (a JSON object)."""


class MalformedToolCall(NamedTuple):
    """A call the format could not read, and why: the environment's error observation."""

    text: str
    """The call's text as the model wrote it."""
    problem: str
    """What is wrong with it, in words the model can read."""


class ParsedTurn(NamedTuple):
    """One model turn read by a `ToolCallFormat`."""

    content: str
    """The turn's text outside the calls, stripped."""
    calls: list[ToolCall]
    """The calls, in the order written."""
    malformed: list[MalformedToolCall]
    """The calls that could not be read, in the order written."""


class ToolCallFormat(Protocol):
    """How one model family writes tool calls."""

    name: str

    def parse(self, text: str) -> ParsedTurn:
        """One turn's decoded text (special tokens left out) -> content, calls, malformed calls."""
        ...

    def render(self, calls: list[ToolCall]) -> str:
        """The text a model of this family writes for `calls`."""
        ...

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        """A system message that describes `tools` (OpenAI function schemas) and this format."""
        ...


def read_call(text: str) -> ToolCall | MalformedToolCall:
    """A JSON call object ``{"name": ..., "arguments" | "parameters": {...}}`` (the
    arguments may also be a JSON string holding an object, as some models write them)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return MalformedToolCall(text, f"the call is not valid JSON: {error.msg} at character {error.pos}")
    if not isinstance(value, dict):
        return MalformedToolCall(text, f"the call must be a JSON object with a name and arguments, not a {type(value).__name__}")
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return MalformedToolCall(text, 'the call has no "name" string')
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return MalformedToolCall(text, f'the "arguments" of {name} are a string that is not a JSON object')
    if not isinstance(arguments, dict):
        return MalformedToolCall(text, f'the "arguments" of {name} must be a JSON object')
    return ToolCall(name, arguments)


def describe_tools(tools: list[dict[str, Any]]) -> str:
    """One JSON schema per line, as the function schemas were given."""
    return "\n".join(json.dumps(tool, sort_keys=True) for tool in tools)


class HermesFormat:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, any number per turn."""

    name = "hermes"
    _CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> ParsedTurn:
        calls: list[ToolCall] = []
        malformed: list[MalformedToolCall] = []
        for match in self._CALL.finditer(text):
            body, closed = match.group(1).strip(), bool(match.group(2))
            if not closed:
                malformed.append(MalformedToolCall(match.group(0), "the call has no closing </tool_call> tag"))
                continue
            call = read_call(body)
            (calls if isinstance(call, ToolCall) else malformed).append(call)  # type: ignore[arg-type]
        content = self._CALL.sub("", text).strip()
        return ParsedTurn(content, calls, malformed)

    def render(self, calls: list[ToolCall]) -> str:
        return "\n".join(f'<tool_call>\n{json.dumps({"name": call.name, "arguments": call.arguments})}\n</tool_call>'
                         for call in calls)

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        return ("You may call tools. The tools, as JSON schemas:\n"
                f"<tools>\n{describe_tools(tools)}\n</tools>\n"
                "To call one, write a JSON object with its name and arguments between tags:\n"
                '<tool_call>\n{"name": <tool name>, "arguments": <arguments object>}\n</tool_call>')


class JsonFormat:
    """The whole turn is one call object; anything else is content."""

    name = "json"

    def parse(self, text: str) -> ParsedTurn:
        stripped = text.strip()
        if not stripped.startswith("{"):
            return ParsedTurn(stripped, [], [])
        call = read_call(stripped)
        if isinstance(call, ToolCall):
            return ParsedTurn("", [call], [])
        return ParsedTurn("", [], [call])

    def render(self, calls: list[ToolCall]) -> str:
        if len(calls) != 1:
            raise ValueError(f"the json format holds one call per turn, got {len(calls)}")
        return json.dumps({"name": calls[0].name, "parameters": calls[0].arguments})

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        return ("You may call one tool per turn. The tools, as JSON schemas:\n"
                f"{describe_tools(tools)}\n"
                'To call one, answer with only a JSON object: {"name": <tool name>, "parameters": <arguments object>}')


TOOL_CALL_FORMATS: dict[str, ToolCallFormat] = {"hermes": HermesFormat(), "json": JsonFormat()}
"""The formats by name."""


def register_tool_call_format(format: ToolCallFormat) -> None:
    """Makes `format` available under its ``name`` (a name taken already is refused)."""
    if format.name in TOOL_CALL_FORMATS:
        raise ValueError(f"a tool call format named {format.name!r} exists already")
    TOOL_CALL_FORMATS[format.name] = format


def tool_call_format(name: str) -> ToolCallFormat:
    """The format called `name`; an unknown name is refused with the known ones."""
    try:
        return TOOL_CALL_FORMATS[name]
    except KeyError:
        raise ValueError(f"no tool call format named {name!r}; known: {sorted(TOOL_CALL_FORMATS)}") from None

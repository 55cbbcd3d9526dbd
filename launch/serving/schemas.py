"""Request bodies of the inference service: `/generate` and the OpenAI-compatible pair.

Bodies validate strictly (a string where a number belongs is an error, not coerced)
and reject unknown fields, so a misspelt parameter is a 422 naming it instead of a
silently ignored setting. Ranges follow OpenAI's where it has one (temperature 0..2,
0 meaning greedy); ``top_k`` and ``ignore_eos`` are the usual extensions of
OpenAI-compatible servers. Limits that depend on the model (the context length, the
vocabulary) are applied after tokenizing, in `launch.serving.service`.

Text is taken as it comes, control characters and NUL included (they are Unicode
characters like any other, and go to the tokenizer as they are), but not a lone
surrogate: JSON can spell one (``"\\ud800"``), Python parses it, and the tokenizer
then fails on a string that has no UTF-8 form.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

MAX_STOP_STRINGS = 4
MAX_STOP_CHARACTERS = 256
"""Longest stop string. Holding back a streamed tail that may begin a stop string costs
the square of its length per token on the generation thread (a 100 KB one, a tenth of a
second per token for the whole batch), and no stop string in use comes near it."""
MAX_CHOICES = 16
GREEDY_BELOW_TEMPERATURE = 1e-5
"""Temperatures below this decode greedily, their limit as the temperature goes to 0.
Sampling with them would divide float32 logits by nearly 0: a logit of 10 overflows to
inf below about 3e-38 (the softmax turns to NaN and the whole batch fails), and already
at 1e-5 a token 0.001 ahead in logit is e^100 times likelier than the next (vLLM's
sampling epsilon has the same value)."""


def refuse_lone_surrogates(text: str) -> str:
    """`text`, or a ValueError naming the first lone surrogate in it (no UTF-8 form)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"holds a lone surrogate (\\u{ord(text[error.start]):04x}) at character {error.start}, "
                         f"which is not Unicode text: a JSON \\u escape of a surrogate must be one of a high-low "
                         f"pair") from None
    return text


class SamplingFields(BaseModel):
    """Sampling settings every generation endpoint takes."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    temperature: float = Field(1.0, ge=0, le=2)
    """Divides the logits before the softmax; 0 (or anything below
    ``GREEDY_BELOW_TEMPERATURE``) decodes greedily."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: draw from the most likely tokens whose probabilities reach it (1: off)."""
    top_k: int = Field(0, ge=0)
    """Draw from the ``top_k`` most likely tokens (0: off; so is a value of at least the
    vocabulary's size, which keeps every token)."""
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    """Seeds this request's sampling: the same request gives the same response, whatever
    else shares its batch (up to float rounding that padding can change)."""
    stop: str | list[str] | None = None
    """Up to four strings of up to 256 characters; a response ends where one appears and
    leaves it out."""
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token up to the token limit."""

    @field_validator("stop")
    @classmethod
    def _stop_strings_are_few_short_and_not_empty(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(strings)}")
        if any(not string for string in strings):
            raise ValueError("stop strings must not be empty")
        longest = max((len(string) for string in strings), default=0)
        if longest > MAX_STOP_CHARACTERS:
            raise ValueError(f"a stop string is at most {MAX_STOP_CHARACTERS} characters, got one of {longest}")
        for string in strings:
            refuse_lone_surrogates(string)
        return stop

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def decodes_greedily(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE


class GenerateRequest(SamplingFields):
    """``POST /generate``."""

    prompt: str = Field(min_length=1)
    """The text to continue, as is (no chat template)."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Most tokens to generate; by default the model's generation config's, within the context."""


class GenerateResponse(BaseModel):
    """What ``POST /generate`` answers."""

    response: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False
    """Send one more chunk before ``[DONE]`` with the token counts."""


class OpenAIFields(SamplingFields):
    """What the two OpenAI-compatible endpoints share."""

    model: str | None = None
    """Accepted for compatibility; the service serves one model whatever this says."""
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    """Choices to sample for the prompt."""
    stream: bool = False
    """Send the response as server-sent events, ending with ``data: [DONE]``."""
    stream_options: StreamOptions | None = None
    """Only with ``stream: true`` (OpenAI refuses it otherwise too)."""
    user: str | None = None
    """Accepted and ignored."""
    presence_penalty: float = 0.0
    """Only 0 (clients send it by default)."""
    frequency_penalty: float = 0.0
    """Only 0 (clients send it by default)."""

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalties(cls, value: float) -> float:
        if value != 0:
            raise ValueError("only 0 is supported: this service samples without repetition penalties")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options_only_with_stream(cls, options: StreamOptions | None,
                                         info: ValidationInfo) -> StreamOptions | None:
        # `stream` comes first, so it is validated by now (absent from info.data if invalid)
        if options is not None and info.data.get("stream") is False:
            raise ValueError('stream_options is only allowed when stream is true: set "stream": true or leave '
                             'stream_options out')
        return options


class CompletionRequest(OpenAIFields):
    """``POST /v1/completions``."""

    prompt: str = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=1)
    """Most tokens to generate (OpenAI's default, 16); null: as many as the context leaves."""


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1)
    arguments: str
    """The arguments as a JSON object in a string (OpenAI's form)."""


class ToolCallPart(BaseModel):
    """One call an assistant message made (in a conversation sent back with its results)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    """Null only for an assistant message that made tool calls."""
    name: str | None = None
    tool_calls: list[ToolCallPart] | None = None
    """An assistant message's calls."""
    tool_call_id: str | None = None
    """A tool message: the call it answers."""

    @field_validator("content")
    @classmethod
    def _content_is_unicode(cls, content: str | list[TextPart] | None) -> str | list[TextPart] | None:
        # checked on the whole union, so the error names the field once, not once per branch
        for text in [] if content is None else [content] if isinstance(content, str) else [part.text for part in content]:
            refuse_lone_surrogates(text)
        return content

    @model_validator(mode="after")
    def _content_unless_calls(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content may be null only in an assistant message with tool_calls")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class FunctionSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """A JSON schema of the arguments object."""
    strict: bool | None = None


class ToolSchema(BaseModel):
    """A tool the model may call (OpenAI's ``tools`` entries)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: FunctionSchema


class ChatCompletionRequest(OpenAIFields):
    """``POST /v1/chat/completions``: the messages go through the tokenizer's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolSchema] | None = Field(None, max_length=128)
    """Tools the model may call: given to the chat template (its ``tools`` variable, or a
    system message in the server's tool format); calls in the answer come back as
    ``tool_calls``."""
    tool_choice: Literal["auto", "none"] | None = None
    """``none``: tools are described but the answer is returned as text; ``auto`` (the
    default with tools): calls are read from the answer."""

    @model_validator(mode="after")
    def _tools_without_stream(self) -> ChatCompletionRequest:
        if self.tools and self.tool_choice != "none" and self.stream:
            raise ValueError("stream with tools is not supported yet: ask without stream (the calls come back whole)")
        return self
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens to generate; null: as many as the context leaves."""
    max_completion_tokens: int | None = Field(None, ge=1)
    """OpenAI's newer name for ``max_tokens``; wins when both are given."""

"""Request bodies of the inference service: `/generate` and the OpenAI-compatible pair.

Bodies validate strictly (a string where a number belongs is an error, not coerced)
and reject unknown fields, so a misspelt parameter is a 422 naming it instead of a
silently ignored setting. Ranges follow OpenAI's where it has one (temperature 0..2,
0 meaning greedy); ``top_k`` and ``ignore_eos`` are the usual extensions of
OpenAI-compatible servers. Limits that depend on the model (the context length) are
checked after tokenizing, in `launch.serving.service`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 4
MAX_CHOICES = 16


class SamplingFields(BaseModel):
    """Sampling settings every generation endpoint takes."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    temperature: float = Field(1.0, ge=0, le=2)
    """Divides the logits before the softmax; 0 decodes greedily."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: draw from the most likely tokens whose probabilities reach it (1: off)."""
    top_k: int = Field(0, ge=0)
    """Draw from the ``top_k`` most likely tokens (0: off)."""
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    """Seeds this request's sampling: the same request gives the same response, whatever
    else shares its batch (up to float rounding that padding can change)."""
    stop: str | list[str] | None = None
    """Up to four strings; a response ends where one appears and leaves it out."""
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token up to the token limit."""

    @field_validator("stop")
    @classmethod
    def _stop_strings_are_few_and_not_empty(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(strings)}")
        if any(not string for string in strings):
            raise ValueError("stop strings must not be empty")
        return stop

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


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


class CompletionRequest(OpenAIFields):
    """``POST /v1/completions``."""

    prompt: str = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=1)
    """Most tokens to generate (OpenAI's default, 16); null: as many as the context leaves."""


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(OpenAIFields):
    """``POST /v1/chat/completions``: the messages go through the tokenizer's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens to generate; null: as many as the context leaves."""
    max_completion_tokens: int | None = Field(None, ge=1)
    """OpenAI's newer name for ``max_tokens``; wins when both are given."""

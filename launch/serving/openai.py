"""OpenAI-shaped bodies: completions, chat completions, their stream chunks as
server-sent events, and the error body every route of the service uses.

A stream sends one ``data: <json>`` event per chunk and ends with ``data: [DONE]``; a
chat stream opens each choice with a ``{"role": "assistant"}`` delta and closes it
with an empty delta carrying the finish reason; ``stream_options.include_usage`` adds
a last chunk with the token counts. A failure after the status line has gone is sent
as an error event before ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from launch.serving.batcher import Completion, GenerationFailed, TextDelta, Ticket
from launch.serving.schemas import OpenAIFields
from roles.agents.tool_calls import ToolCallFormat

ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
               415: "invalid_request_error", 422: "invalid_request_error", 500: "server_error",
               503: "overloaded_error", 504: "timeout_error"}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": status}}


def event_stream(chunks: AsyncIterator[dict[str, Any]], ticket: Ticket) -> StreamingResponse:
    """Server-sent events: one ``data: <json>`` per chunk, then ``data: [DONE]``. A
    failure mid-stream is sent as an error chunk (the status line has gone already)."""

    async def lines() -> AsyncIterator[str]:
        try:
            try:
                async for chunk in chunks:
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                yield f"data: {json.dumps(error_body(504, 'no token within request_timeout_s'))}\n\n"
            except GenerationFailed as error:
                yield f"data: {json.dumps(error_body(500, str(error)))}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # done, or the client went away (Starlette cancels us): drop whatever is still coming
            ticket.abandon()

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def assistant_message(text: str, finish_reason: str, tool_format: ToolCallFormat | None) -> dict[str, Any]:
    """``{"message", "finish_reason"}`` of one choice. With a tool format, the calls read
    from `text` become OpenAI ``tool_calls`` (arguments as a JSON string, content the
    text around them or null); a turn whose calls cannot all be read stays text, as the
    model wrote it."""
    parsed = tool_format.parse(text) if tool_format is not None else None
    if parsed is None or not parsed.calls or parsed.malformed:
        return {"message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
    calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
              "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
             for call in parsed.calls]
    return {"message": {"role": "assistant", "content": parsed.content or None, "tool_calls": calls},
            "finish_reason": "tool_calls"}


class OpenAIReply:
    """Builds OpenAI-shaped bodies and stream chunks for one request."""

    def __init__(self, prefix: str, kind: str, model: str, prompt_tokens: int, body: OpenAIFields) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.kind = kind
        self.model = model
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens
        self.include_usage = body.stream_options is not None and body.stream_options.include_usage

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def completion(self, choices: list[Completion]) -> dict[str, Any]:
        body = self._envelope(self.kind, [
            {"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason} for c in choices])
        return {**body, "usage": self.usage(sum(c.completion_tokens for c in choices))}

    def chat(self, choices: list[Completion], tool_format: ToolCallFormat | None = None) -> dict[str, Any]:
        """The chat completion; with `tool_format`, an answer that calls tools comes back
        as ``tool_calls`` (finish reason ``tool_calls``)."""
        body = self._envelope(self.kind, [{"index": c.index, **assistant_message(c.text, c.finish_reason, tool_format),
                                           "logprobs": None} for c in choices])
        return {**body, "usage": self.usage(sum(c.completion_tokens for c in choices))}

    async def completion_chunks(self, ticket: Ticket, timeout_s: float) -> AsyncIterator[dict[str, Any]]:
        tokens = 0
        async for event in ticket.stream_events(timeout_s):
            if isinstance(event, TextDelta):
                yield self._envelope(self.kind, [{"index": event.index, "text": event.text, "logprobs": None,
                                                  "finish_reason": None}])
            else:
                tokens += event.completion_tokens
                yield self._envelope(self.kind, [{"index": event.index, "text": "", "logprobs": None,
                                                  "finish_reason": event.finish_reason}])
        if self.include_usage:
            yield {**self._envelope(self.kind, []), "usage": self.usage(tokens)}

    async def chat_chunks(self, ticket: Ticket, timeout_s: float) -> AsyncIterator[dict[str, Any]]:
        kind = "chat.completion.chunk"
        for index in range(ticket.params.n):
            yield self._envelope(kind, [{"index": index, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}])
        tokens = 0
        async for event in ticket.stream_events(timeout_s):
            if isinstance(event, TextDelta):
                yield self._envelope(kind, [{"index": event.index, "delta": {"content": event.text}, "logprobs": None,
                                             "finish_reason": None}])
            else:
                tokens += event.completion_tokens
                yield self._envelope(kind, [{"index": event.index, "delta": {}, "logprobs": None,
                                             "finish_reason": event.finish_reason}])
        if self.include_usage:
            yield {**self._envelope(kind, []), "usage": self.usage(tokens)}

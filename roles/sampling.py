"""What every generation backend shares: the sampling parameters, the layout of the
responses it returns, and drawing one token from logits.

The PPO/GRPO ratio divides the trainer's probability of each sampled token by the
generator's, so both sides must mean the same thing by it: the softmax of the logits
divided by the temperature, before any top-k/top-p truncation (truncation only decides
which tokens may be drawn). `sample_next_tokens` returns exactly that, and
`roles.logprobs.response_logprobs` recomputes it in one forward over prompt and
response, so the two agree to float precision (the unit tests check it).

The backends live in roles.generation (transformers) and roles.vllm_backend (vLLM).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator


class SamplingParams(BaseModel):
    """How responses are sampled for a batch of prompts."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    n: int = Field(1, ge=1)
    """Samples per prompt."""
    temperature: float = Field(1.0, ge=1e-5)
    """Divides the logits before the softmax; for greedy decoding use ``top_k=1``. At least
    1e-5: smaller values overflow float32 logits into inf/NaN (and the log-probs the
    trainer's ratio uses are of softmax(logits / temperature), so no silent switch to
    greedy is made here)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: draw only from the most likely tokens whose probabilities sum to
    at least ``top_p`` (1 turns it off)."""
    top_k: int = Field(0, ge=0)
    """Draw only from the ``top_k`` most likely tokens (0 turns it off)."""
    max_new_tokens: int = Field(32, ge=1)
    """Most tokens generated per response."""
    stop: list[str] = []
    """Stop strings: a response ends with the token that completes one; its text leaves
    the stop string out."""
    seed: int | None = None
    """Seeds the sampling: the same prompts, parameters, weights and micro-batch size give
    the same responses. None draws from torch's global generator."""
    ignore_eos: bool = False
    """Keep generating past eos tokens, up to ``max_new_tokens`` (stop strings still end a
    response): load tests and benchmarks fix the response length with it."""

    @field_validator("stop")
    @classmethod
    def _stop_strings_are_not_empty(cls, stop: list[str]) -> list[str]:
        if any(not string for string in stop):
            raise ValueError("stop strings must not be empty (an empty one would end every response at once)")
        return stop


@dataclass
class GenerationOutput:
    """Responses to ``len(prompts)`` prompts, ``n`` samples each: N = len(prompts) * n rows,
    prompt-major (prompt 0's n samples, then prompt 1's, ...). Tensors are on the CPU.

    Attributes:
        prompt_ids: [N, P] long, left-padded with the pad token.
        prompt_mask: [N, P] long, 1 on real prompt tokens.
        response_ids: [N, R] long, right-padded with the pad token; R is the longest response.
        response_mask: [N, R] float32, 1 on generated tokens (the eos token, or the token
            completing a stop string, included), 0 after.
        logprobs: [N, R] float32, log-probability of each sampled token under
            softmax(logits / temperature), without top-k/top-p renormalisation; 0 where
            the mask is 0.
        texts: decoded responses, special tokens skipped, cut before the stop string.
        finish_reasons: ``"stop"`` (eos or a stop string) or ``"length"`` per row.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    texts: list[str]
    finish_reasons: list[str]


class GenerationRequest(NamedTuple):
    """Prompts (token ids, unpadded) that share sampling parameters, one of several
    requests decoded together by `HFBackend.generate_requests`."""

    prompts: Sequence[Sequence[int]]
    params: SamplingParams


class DecodingStep(NamedTuple):
    """What one decoding step drew, as an ``on_step`` callback sees it.

    Rows are numbered as in the outputs: prompt-major within a request (``n`` rows per
    prompt), request after request.
    """

    tokens: dict[int, int]
    """Row -> the token drawn at this step, for every row that was still generating
    (the token that ends a row included)."""
    finished: dict[int, str]
    """Row -> ``"stop"`` or ``"length"``, for the rows that ended at this step."""


StepCallback = Callable[[DecodingStep], None]
"""Called on the generating thread once per decoding step, before the next forward."""


@runtime_checkable
class GenerationBackend(Protocol):
    """What a generator role needs from a sampling engine."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> GenerationOutput:
        """Samples ``params.n`` responses to each prompt (token ids, unpadded)."""
        ...

    def clear_caches(self) -> None:
        """Drops whatever was computed with the previous weights (called after loading new ones)."""
        ...


def truncate_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Sets to -inf every logit outside the top ``top_k``, then outside the smallest set of
    most likely tokens whose probability reaches ``top_p`` (as vLLM orders them)."""
    if 0 < top_k < logits.shape[-1]:
        kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~kept, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # the most likely token always stays: its mass_before is 0
        dropped = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, mass_before >= top_p)
        logits = logits.masked_fill(dropped, float("-inf"))
    return logits


def sample_next_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws one token per row from [B, V] logits; returns the tokens [B] and their
    log-probabilities [B] under the untruncated softmax(logits / temperature)."""
    scaled = logits.float() / params.temperature
    truncated = truncate_logits(scaled, params.top_k, params.top_p)
    if params.top_k == 1:
        tokens = truncated.argmax(dim=-1)
    else:
        tokens = torch.multinomial(truncated.softmax(dim=-1), 1, generator=generator).squeeze(-1)
    logprobs = torch.log_softmax(scaled, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, logprobs


def token_list(prompt: Sequence[int] | torch.Tensor) -> list[int]:
    """A prompt's token ids as plain ints (prompts may arrive as lists or 1-D tensors)."""
    return prompt.tolist() if isinstance(prompt, torch.Tensor) else [int(token) for token in prompt]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the earliest stop string in it."""
    cuts = [index for index in (text.find(string) for string in stop) if index >= 0]
    return text[: min(cuts)] if cuts else text


def collate(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]],
    texts: list[str], finish_reasons: list[str], pad_token_id: int,
) -> GenerationOutput:
    """Pads one prompt, response and log-probabilities per row into a `GenerationOutput`."""
    rows = len(prompts)
    prompt_width = max((len(prompt) for prompt in prompts), default=0)
    response_width = max((len(response) for response in responses), default=0)
    output = GenerationOutput(
        prompt_ids=torch.full((rows, prompt_width), pad_token_id, dtype=torch.long),
        prompt_mask=torch.zeros(rows, prompt_width, dtype=torch.long),
        response_ids=torch.full((rows, response_width), pad_token_id, dtype=torch.long),
        response_mask=torch.zeros(rows, response_width, dtype=torch.float32),
        logprobs=torch.zeros(rows, response_width, dtype=torch.float32),
        texts=texts,
        finish_reasons=finish_reasons,
    )
    for row, (prompt, response, row_logprobs) in enumerate(zip(prompts, responses, logprobs)):
        if prompt:
            output.prompt_ids[row, -len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            output.prompt_mask[row, -len(prompt):] = 1
        output.response_ids[row, : len(response)] = torch.tensor(response, dtype=torch.long)
        output.response_mask[row, : len(response)] = 1.0
        output.logprobs[row, : len(response)] = torch.tensor(row_logprobs, dtype=torch.float32)
    return output

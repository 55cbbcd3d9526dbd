"""The generator's default sampler: `HFBackend`, a decoding loop over a transformers
causal LM.

It samples with a loop of its own, rather than ``model.generate``, so that it controls
what the log-probabilities it returns mean: those of softmax(logits / temperature)
before top-k/top-p truncation (roles.sampling), with the same left padding and position
ids as `roles.logprobs.response_logprobs` recomputes them with.

`HFBackend.generate_requests` decodes several requests with different sampling
parameters in shared micro-batches (each request's rows are drawn with its own
parameters, and with its own generator when it has a seed), and an optional
``on_step`` callback sees each step's tokens as they are drawn: the inference service
(launch/serving) batches and streams with these. Nothing here sends or receives
messages: a generator role wires these in.

The sampling types (roles.sampling), model loading (roles.models) and the vLLM backend
(roles.vllm_backend) used to live here; their names stay importable from this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from roles.models import positions_from_mask
from roles.sampling import (
    DecodingStep, GenerationOutput, GenerationRequest, SamplingParams, StepCallback, collate, cut_at_stop,
    sample_next_tokens, token_list,
)
from runtime.cores import rebalance as rebalance_cores

# Re-exported: these names were defined here before the split, and launch/, benchmarks/
# and users' scripts import them from this module.
from roles.model_settings import CpuThreads  # noqa: F401
from roles.models import (  # noqa: F401
    AUTO_THREADS_MIN_PARAMETERS, AUTOCAST_DTYPES, DTYPES, autocast_for, cpu_thread_count, limit_cpu_threads,
    load_causal_lm,
)
from roles.sampling import GenerationBackend, truncate_logits  # noqa: F401
from roles.vllm_backend import VllmBackend, outputs_from_vllm, replay_steps, vllm_sampling_arguments  # noqa: F401

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class Sampled(NamedTuple):
    """One micro-batch's responses, unpadded, one entry per row."""

    responses: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]


class HFBackend:
    """Samples with a transformers causal LM: micro-batches of left-padded prompts, one
    token per step through the KV cache; the rows of one prompt share its prefill.

    Responses are drawn with temperature, top-k and top-p, and end at an eos token (the
    tokenizer's and the model's generation config's) or at the token completing a stop
    string. Caches nothing between calls.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: str = "cpu",
                 micro_batch: int = 64) -> None:
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be at least 1, got {micro_batch}")
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token")
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.micro_batch = micro_batch
        self.pad_token_id = int(pad_token_id)
        self.eos_token_ids = sorted(eos_token_ids(model, tokenizer))

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_step: StepCallback | None = None) -> GenerationOutput:
        return self.generate_requests([GenerationRequest(prompts, params)], on_step)[0]

    def generate_requests(self, requests: Sequence[GenerationRequest],
                          on_step: StepCallback | None = None) -> list[GenerationOutput]:
        """Samples every request with its own parameters, its rows sharing micro-batches
        with the other requests' rows; one `GenerationOutput` per request, in order.

        A seeded request draws from its own generator over its own rows of the logits, so
        its samples do not depend on the other requests' parameters or seeds (they can
        still differ in the last float bits with the micro-batch's padding and size);
        unseeded requests draw from torch's global generator. A micro-batch decodes until
        its longest row ends: rows that end sooner idle.
        """
        rows: list[list[int]] = []
        spans: list[RowSpan] = []
        for request in requests:
            start = len(rows)
            rows += [token_list(prompt) for prompt in request.prompts for _ in range(request.params.n)]
            generator = None
            if request.params.seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(request.params.seed)
            spans.append(RowSpan(start, len(rows), request.params, generator))
        if any(not row for row in rows):
            raise ValueError("every prompt needs at least one token")
        responses, logprobs, reasons = [], [], []
        with torch.inference_mode():
            for start in range(0, len(rows), self.micro_batch):
                end = min(start + self.micro_batch, len(rows))
                local = [span.within(start, end) for span in spans if span.start < end and span.end > start]
                sampled = self._sample(rows[start:end], local, on_step, start)
                responses += sampled.responses
                logprobs += sampled.logprobs
                reasons += sampled.finish_reasons
        outputs = []
        for span in spans:
            texts = [cut_at_stop(text, span.params.stop) for text in
                     self.tokenizer.batch_decode(responses[span.start : span.end], skip_special_tokens=True)]
            # built outside inference mode: the trainer uses these tensors under autograd,
            # which refuses to save inference tensors for backward
            outputs.append(collate(rows[span.start : span.end], responses[span.start : span.end],
                                   logprobs[span.start : span.end], texts, reasons[span.start : span.end],
                                   self.pad_token_id))
        return outputs

    def clear_caches(self) -> None:
        """Nothing to clear: the KV cache lives for one `generate` call."""

    def _sample(self, rows: list[list[int]], spans: list[RowSpan], on_step: StepCallback | None,
                row_offset: int) -> Sampled:
        """Decodes one micro-batch; `spans` cover its rows (numbered from 0 here, from
        ``row_offset`` for ``on_step``)."""
        batch = len(rows)
        # a prompt's n samples share one prefill: its keys and values are computed once and
        # copied to each of its rows (the same numbers a prefill per row would give)
        distinct: dict[tuple[int, ...], int] = {}
        copies = torch.tensor([distinct.setdefault(tuple(row), len(distinct)) for row in rows], device=self.device)
        width = max(len(row) for row in rows)
        prompt_ids = torch.full((len(distinct), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(len(distinct), width, dtype=torch.long)
        for index, row in enumerate(distinct):
            prompt_ids[index, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention_mask[index, width - len(row):] = 1
        prompt_ids, attention_mask = prompt_ids.to(self.device), attention_mask.to(self.device)
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=self.device)
        limits = torch.zeros(batch, dtype=torch.long, device=self.device)
        ends_at_eos = torch.zeros(batch, dtype=torch.bool, device=self.device)
        groups = sampling_groups(spans, self.device)
        span_masks = []
        for span in spans:
            limits[span.start : span.end] = span.params.max_new_tokens
            ends_at_eos[span.start : span.end] = not span.params.ignore_eos
            span_masks.append(torch.zeros(batch, dtype=torch.bool, device=self.device))
            span_masks[-1][span.start : span.end] = True

        out = self.model(input_ids=prompt_ids, attention_mask=attention_mask,
                         position_ids=positions_from_mask(attention_mask), use_cache=True, logits_to_keep=1)
        logits, cache = out.logits[:, -1], out.past_key_values
        if len(distinct) < batch:
            cache.reorder_cache(copies)
            logits, attention_mask = logits.index_select(0, copies), attention_mask.index_select(0, copies)
        next_positions = attention_mask.sum(dim=1, keepdim=True)
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        responses: list[list[int]] = [[] for _ in rows]
        logprobs: list[list[float]] = [[] for _ in rows]
        reasons = ["length"] * batch
        for step in range(max(span.params.max_new_tokens for span in spans)):
            tokens, token_logprobs = sample_groups(logits, groups)
            active = ~finished
            tokens = torch.where(active, tokens, self.pad_token_id)
            ended = active & torch.isin(tokens, eos) & ends_at_eos
            for index, token, logprob, is_active in zip(
                range(batch), tokens.tolist(), token_logprobs.tolist(), active.tolist(),
            ):
                if is_active:
                    responses[index].append(token)
                    logprobs[index].append(logprob)
            for span, in_span in zip(spans, span_masks):
                if span.params.stop:
                    stop_window = 4 * max(len(string) for string in span.params.stop) + 8
                    ended |= self._completes_stop_string(responses, active & ~ended & in_span, span.params.stop,
                                                         stop_window)
            for index in ended.nonzero().flatten().tolist():
                reasons[index] = "stop"
            out_of_room = active & ~ended & (limits <= step + 1)
            finished |= ended | out_of_room
            if on_step is not None:
                on_step(DecodingStep(
                    {row_offset + index: responses[index][-1] for index in active.nonzero().flatten().tolist()},
                    {row_offset + index: reasons[index] for index in (ended | out_of_room).nonzero().flatten().tolist()},
                ))
            if bool(finished.all()):
                break
            rebalance_cores()  # another process started or stopped computing: resize this one's share
            # finished rows keep feeding pad tokens: they only ever attend to themselves
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
            out = self.model(input_ids=tokens.unsqueeze(-1), attention_mask=attention_mask, position_ids=next_positions,
                             past_key_values=cache, use_cache=True)
            logits, cache = out.logits[:, -1], out.past_key_values
            next_positions = next_positions + 1
        return Sampled(responses, logprobs, reasons)

    def _completes_stop_string(self, responses: list[list[int]], candidates: torch.Tensor, stop: list[str],
                               window: int) -> torch.Tensor:
        """Which candidate rows' latest token completes a stop string [B] bool.

        Decodes only each row's last ``window`` tokens: a stop string completed now lies
        inside them, and one completed earlier would have ended the row already.
        """
        indices = candidates.nonzero().flatten().tolist()
        tails = self.tokenizer.batch_decode([responses[index][-window:] for index in indices], skip_special_tokens=True)
        completes = torch.zeros_like(candidates)
        for index, tail in zip(indices, tails):
            completes[index] = any(string in tail for string in stop)
        return completes


@dataclass(frozen=True)
class RowSpan:
    """Rows ``start:end`` of a batch that one request's parameters and generator sample."""

    start: int
    end: int
    params: SamplingParams
    generator: torch.Generator | None

    def within(self, start: int, end: int) -> RowSpan:
        """This span's part of rows ``start:end``, numbered from ``start``."""
        return RowSpan(max(self.start, start) - start, min(self.end, end) - start, self.params, self.generator)


class SamplingGroup(NamedTuple):
    """Rows of a micro-batch drawn in one `sample_next_tokens` call."""

    rows: slice | torch.Tensor
    params: SamplingParams
    generator: torch.Generator | None


def sampling_groups(spans: Sequence[RowSpan], device: torch.device) -> list[SamplingGroup]:
    """A group per seeded span (its own generator), and one per distinct temperature,
    top-k and top-p among the unseeded spans: those all draw from torch's global
    generator, so drawing them together changes nothing but the number of calls."""
    groups, unseeded = [], {}
    for span in spans:
        if span.generator is not None:
            groups.append(SamplingGroup(slice(span.start, span.end), span.params, span.generator))
        else:
            key = (span.params.temperature, span.params.top_k, span.params.top_p)
            unseeded.setdefault(key, (span.params, []))[1].extend(range(span.start, span.end))
    for params, rows in unseeded.values():
        contiguous = rows == list(range(rows[0], rows[-1] + 1))
        groups.append(SamplingGroup(slice(rows[0], rows[-1] + 1) if contiguous else torch.tensor(rows, device=device),
                                    params, None))
    return groups


def sample_groups(logits: torch.Tensor, groups: Sequence[SamplingGroup]) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_next_tokens` for each group's rows of the [B, V] logits, with its
    parameters and generator; the groups cover every row once."""
    if len(groups) == 1 and groups[0].rows == slice(0, logits.shape[0]):
        return sample_next_tokens(logits, groups[0].params, groups[0].generator)
    tokens = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    logprobs = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    for group in groups:
        tokens[group.rows], logprobs[group.rows] = sample_next_tokens(logits[group.rows], group.params, group.generator)
    return tokens, logprobs


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokenizer's eos id and the model generation config's eos ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(configured)
    return ids

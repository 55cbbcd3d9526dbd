"""The generator's model side: loading a causal LM and sampling responses.

The PPO/GRPO ratio divides the trainer's probability of each sampled token by the
generator's, so both sides must mean the same thing by it: the softmax of the logits
divided by the temperature, before any top-k/top-p truncation (truncation only decides
which tokens may be drawn). `HFBackend` samples with a loop of its own so that it
controls exactly that, and `roles.logprobs.response_logprobs` recomputes it in one
forward over prompt and response with the same left padding and position ids, so the
two agree to float precision (the unit tests check it).

`HFBackend.generate_requests` decodes several requests with different sampling
parameters in shared micro-batches (each request's rows are drawn with its own
parameters, and with its own generator when it has a seed), and an optional
``on_step`` callback sees each step's tokens as they are drawn: the inference service
(launch/serving) batches and streams with these.

`VllmBackend` does the same through vLLM, an optional extra imported only when one is
built. Nothing here sends or receives messages: a generator role wires these in.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from roles.weight_loaders import VllmLoader

if TYPE_CHECKING:  # transformers is imported where a model is loaded: the controller,
    # evaluator and reward processes use this module's settings only, and start faster
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def load_causal_lm(
    path: str | Path, dtype: str = "float32", device: str = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a causal LM and its tokenizer from a local Hugging Face directory, in eval mode.

    The tokenizer pads on the left, with its eos token when it has no pad token.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist (give a local directory written by save_pretrained)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: it is not a Hugging Face model directory")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] that count real tokens only, so left padding shifts nothing."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


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


class VllmBackend:
    """Samples with vLLM from a local model directory.

    vLLM returns log-probabilities after temperature *and* after top-k/top-p truncation
    (``logprobs_mode="processed_logprobs"``, vLLM >= 0.10.2): with ``top_k=0`` and
    ``top_p=1`` they are the log-probabilities `GenerationOutput` defines; with truncation
    they are renormalised over the kept tokens.

    The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set
    otherwise), so `load_weights` hands tensors to the model without serialising them.
    """

    def __init__(self, path: str | Path, dtype: str = "bfloat16", enforce_eager: bool = False,
                 gpu_memory_utilization: float = 0.9, **engine_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as error:
            raise ImportError("VllmBackend needs vLLM, an optional extra: pip install troupe-rl[vllm]") from error
        if "logprobs_mode" not in {field.name for field in dataclasses.fields(vllm.EngineArgs)}:
            raise ImportError(f"vLLM {vllm.__version__} returns log-probabilities that ignore the temperature; "
                              "VllmBackend needs vLLM >= 0.10.2 (logprobs_mode)")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self._vllm = vllm
        self.llm = vllm.LLM(model=str(path), dtype=dtype, enforce_eager=enforce_eager,
                            gpu_memory_utilization=gpu_memory_utilization,
                            **{"logprobs_mode": "processed_logprobs", **engine_kwargs})
        tokenizer = self.llm.get_tokenizer()
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> GenerationOutput:
        sampling = self._vllm.SamplingParams(**vllm_sampling_arguments(params))
        requests = [{"prompt_token_ids": token_list(prompt)} for prompt in prompts]
        request_outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        return outputs_from_vllm(prompts, request_outputs, self.pad_token_id)

    def generate_requests(self, requests: Sequence[GenerationRequest],
                          on_step: StepCallback | None = None) -> list[GenerationOutput]:
        """`HFBackend.generate_requests` through vLLM: one engine call, a sampling
        parameter set per prompt.

        The offline engine hands back whole responses, so ``on_step`` runs afterwards,
        replaying each row's tokens one step at a time.
        """
        prompts = [token_list(prompt) for request in requests for prompt in request.prompts]
        sampling = [self._vllm.SamplingParams(**vllm_sampling_arguments(request.params))
                    for request in requests for _ in request.prompts]
        request_outputs = self.llm.generate([{"prompt_token_ids": prompt} for prompt in prompts], sampling,
                                            use_tqdm=False)
        outputs, start = [], 0
        for request in requests:
            end = start + len(request.prompts)
            outputs.append(outputs_from_vllm(request.prompts, request_outputs[start:end], self.pad_token_id))
            start = end
        if on_step is not None:
            replay_steps(outputs, on_step)
        return outputs

    def load_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copies full, Hugging Face-named tensors into the running model (vLLM fuses and
        slices them). Call `clear_caches` afterwards: cached prefixes hold old activations."""
        weights = list(named)
        if hasattr(self.llm, "apply_model"):
            self.llm.apply_model(lambda model: VllmLoader(model)(weights))
        else:  # vLLM before apply_model: the V0 engine keeps the model on its driver worker, in this process
            VllmLoader(self.llm.llm_engine.model_executor.driver_worker.model_runner.model)(weights)

    def clear_caches(self) -> None:
        self.llm.reset_prefix_cache()


def vllm_sampling_arguments(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for `params` (logprobs=0: the sampled token's only)."""
    return {
        "n": params.n, "temperature": params.temperature, "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1, "max_tokens": params.max_new_tokens,
        "stop": list(params.stop), "seed": params.seed, "logprobs": 0, "ignore_eos": params.ignore_eos,
    }


def replay_steps(outputs: Sequence[GenerationOutput], on_step: StepCallback) -> None:
    """Calls ``on_step`` as if `outputs` had been decoded one step at a time."""
    rows = [(ids[: int(mask.sum())].tolist(), reason) for output in outputs
            for ids, mask, reason in zip(output.response_ids, output.response_mask, output.finish_reasons)]
    for step in range(max((len(tokens) for tokens, _ in rows), default=0)):
        on_step(DecodingStep(
            {row: tokens[step] for row, (tokens, _) in enumerate(rows) if step < len(tokens)},
            {row: reason for row, (tokens, reason) in enumerate(rows) if step == len(tokens) - 1},
        ))


def outputs_from_vllm(prompts: Sequence[Sequence[int]], request_outputs: Sequence[Any],
                      pad_token_id: int) -> GenerationOutput:
    """A `GenerationOutput` from vLLM's request outputs, one per prompt, in prompt order."""
    rows, responses, logprobs, texts, reasons = [], [], [], [], []
    for prompt, request in zip(prompts, request_outputs, strict=True):
        for completion in sorted(request.outputs, key=lambda completion: completion.index):
            if completion.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM ended a response with finish reason {completion.finish_reason!r}")
            tokens = list(completion.token_ids)
            rows.append(token_list(prompt))
            responses.append(tokens)
            logprobs.append([float(position[token].logprob) for position, token in zip(completion.logprobs, tokens)])
            texts.append(completion.text)
            reasons.append(completion.finish_reason)
    return collate(rows, responses, logprobs, texts, reasons, pad_token_id)


CpuThreads = Annotated[int, Field(ge=1)] | Literal["auto"] | None
"""A role's ``cpu_threads`` setting: a number of torch threads, ``auto`` (see
`cpu_thread_count`), or None (torch's default)."""

AUTO_THREADS_MIN_PARAMETERS = 20_000_000
"""``cpu_threads: auto`` gives a model this large every core, a smaller one a single
thread: a small model's kernels end before a second thread pays for waking up, and
its idle threads spinning between kernels take cores from the other role processes
(the arithmetic example's 0.5M-parameter model steps 19x slower with 2 threads per
role on a busy 2-core machine; SmolLM2-135M's forward and backward take half the time
with 2 threads on an idle one, docs/benchmarks.md)."""


def cpu_thread_count(threads: CpuThreads, model: torch.nn.Module | None = None) -> int | None:
    """The number of torch threads a ``cpu_threads`` setting means for `model` (None:
    leave torch's). ``auto``: every core this process may run on when the model has at
    least AUTO_THREADS_MIN_PARAMETERS parameters, else 1."""
    if threads != "auto":
        return threads
    if model is None or sum(parameter.numel() for parameter in model.parameters()) < AUTO_THREADS_MIN_PARAMETERS:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def limit_cpu_threads(device: str, threads: CpuThreads, model: torch.nn.Module | None = None) -> None:
    """Set torch's intra-op threads for a role on the CPU (`cpu_thread_count`).

    Role processes share the cores. Where several compute at the same time (async mode,
    the reference beside the critic, an evaluation beside training) and their threads
    together outnumber the cores, OpenMP threads spinning at barriers take turns with
    each other's work and a forward can take several times as long as with one thread:
    give such roles fewer threads, or set ``OMP_WAIT_POLICY=PASSIVE`` in their env (the
    topology's ``env``) so idle threads sleep instead of spinning."""
    count = cpu_thread_count(threads, model)
    if count is not None and not device.startswith("cuda"):
        torch.set_num_threads(count)


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_for(device: str, dtype: str | None) -> AbstractContextManager[Any]:
    """torch.autocast on the device's type in `dtype` ("bfloat16" or "float16"), or nothing for None."""
    if dtype is None:
        return nullcontext()
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast {dtype!r} is not one of {sorted(AUTOCAST_DTYPES)} (or null for none)")
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST_DTYPES[dtype])

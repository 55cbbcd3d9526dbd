"""The generator's model side: sampling responses, and recomputing their log-probabilities.

The PPO/GRPO ratio divides the trainer's probability of each sampled token by the
generator's, so both sides must mean the same thing by it: the softmax of the logits
divided by the temperature, before any top-k/top-p truncation (truncation only decides
which tokens may be drawn). `HFBackend` samples with a loop of its own so that it
controls exactly that, and `response_logprobs` recomputes it in one forward over prompt
and response with the same left padding and position ids, so the two agree to float
precision (the unit tests check it).

`VllmBackend` does the same through vLLM, an optional extra imported only when one is
built. Nothing here sends or receives messages: a generator role wires these in.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from roles.weight_loaders import VllmLoader

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SamplingParams(BaseModel):
    """How responses are sampled for a batch of prompts."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    n: int = Field(1, ge=1)
    """Samples per prompt."""
    temperature: float = Field(1.0, gt=0)
    """Divides the logits before the softmax; for greedy decoding use ``top_k=1``."""
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


def response_logprobs(
    model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
    response_ids: torch.Tensor, response_mask: torch.Tensor,
    temperature: float = 1.0, with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of the response tokens under softmax(logits / temperature), in one
    differentiable forward over prompt and response.

    Args:
        prompt_ids, prompt_mask: [N, P], left-padded (as in `GenerationOutput`).
        response_ids, response_mask: [N, R], right-padded.

    Returns:
        log-probabilities [N, R] float32 and, ``with_entropy``, the entropy [N, R] of each
        position's softmax(logits / temperature); both 0 where ``response_mask`` is 0.
    """
    response_length = response_ids.shape[1]
    valid = response_mask > 0
    attention_mask = torch.cat([prompt_mask.long(), valid.long()], dim=1)
    # only the positions that predict response tokens reach the lm head: the last prompt
    # token's up to the second-to-last response token's
    logits = model(
        input_ids=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=attention_mask,
        position_ids=positions_from_mask(attention_mask),
        use_cache=False,
        logits_to_keep=response_length + 1,
    ).logits[:, :-1]
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    token_logprobs = torch.where(valid, log_probs.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1), 0.0)
    if not with_entropy:
        return token_logprobs, None
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return token_logprobs, torch.where(valid, entropy, 0.0)


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
    token per step through the KV cache.

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

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> GenerationOutput:
        rows = [token_list(prompt) for prompt in prompts for _ in range(params.n)]
        if any(not row for row in rows):
            raise ValueError("every prompt needs at least one token")
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        responses, logprobs, reasons = [], [], []
        with torch.inference_mode():
            for start in range(0, len(rows), self.micro_batch):
                sampled = self._sample(rows[start : start + self.micro_batch], params, generator)
                responses += sampled.responses
                logprobs += sampled.logprobs
                reasons += sampled.finish_reasons
        texts = [cut_at_stop(text, params.stop)
                 for text in self.tokenizer.batch_decode(responses, skip_special_tokens=True)]
        # built outside inference mode: the trainer uses these tensors under autograd,
        # which refuses to save inference tensors for backward
        return collate(rows, responses, logprobs, texts, reasons, self.pad_token_id)

    def clear_caches(self) -> None:
        """Nothing to clear: the KV cache lives for one `generate` call."""

    def _sample(self, rows: list[list[int]], params: SamplingParams, generator: torch.Generator | None) -> Sampled:
        batch = len(rows)
        width = max(len(row) for row in rows)
        prompt_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(batch, width, dtype=torch.long)
        for index, row in enumerate(rows):
            prompt_ids[index, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention_mask[index, width - len(row):] = 1
        prompt_ids, attention_mask = prompt_ids.to(self.device), attention_mask.to(self.device)
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=self.device)
        stop_window = 4 * max((len(string) for string in params.stop), default=0) + 8

        out = self.model(input_ids=prompt_ids, attention_mask=attention_mask,
                         position_ids=positions_from_mask(attention_mask), use_cache=True, logits_to_keep=1)
        next_positions = attention_mask.sum(dim=1, keepdim=True)
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        responses: list[list[int]] = [[] for _ in rows]
        logprobs: list[list[float]] = [[] for _ in rows]
        reasons = ["length"] * batch
        for step in range(params.max_new_tokens):
            tokens, token_logprobs = sample_next_tokens(out.logits[:, -1], params, generator)
            active = ~finished
            tokens = torch.where(active, tokens, self.pad_token_id)
            ended = active & torch.isin(tokens, eos)
            for index, token, logprob, is_active in zip(
                range(batch), tokens.tolist(), token_logprobs.tolist(), active.tolist(),
            ):
                if is_active:
                    responses[index].append(token)
                    logprobs[index].append(logprob)
            if params.stop:
                ended |= self._completes_stop_string(responses, active & ~ended, params.stop, stop_window)
            for index in ended.nonzero().flatten().tolist():
                reasons[index] = "stop"
            finished |= ended
            if bool(finished.all()) or step == params.max_new_tokens - 1:
                break
            # finished rows keep feeding pad tokens: they only ever attend to themselves
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
            out = self.model(input_ids=tokens.unsqueeze(-1), attention_mask=attention_mask, position_ids=next_positions,
                             past_key_values=out.past_key_values, use_cache=True)
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
        "stop": list(params.stop), "seed": params.seed, "logprobs": 0,
    }


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


def limit_cpu_threads(device: str, threads: int | None) -> None:
    """Cap torch's intra-op threads for a role on the CPU: several role processes share
    the cores, and oversubscribed threads slow tiny forwards down by orders of magnitude."""
    if threads is not None and not device.startswith("cuda"):
        torch.set_num_threads(threads)

"""Sampling with vLLM, an optional extra: ``vllm`` is imported only when a `VllmBackend`
is built, so this module imports (and its helpers test) without it.

`VllmBackend` answers the `roles.sampling.GenerationBackend` calls, with the rows and
columns of `roles.sampling.GenerationOutput`, and loads new weights from the trainer
into the running engine (roles.weight_loaders.VllmLoader), or, built with ``lora``, new
versions of a LoRA adapter through vLLM's LoRA API (roles.vllm_lora).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from roles.lora import LoraSettings
from roles.sampling import (
    DecodingStep,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
    StepCallback,
    collate,
    token_list,
)
from roles.vllm_lora import AdapterVersions, lora_engine_arguments
from roles.weight_loaders import VllmLoader


class VllmBackend:
    """Samples with vLLM from a local model directory.

    vLLM returns log-probabilities after temperature *and* after top-k/top-p truncation
    (``logprobs_mode="processed_logprobs"``, vLLM >= 0.10.2): with ``top_k=0`` and
    ``top_p=1`` they are the log-probabilities `GenerationOutput` defines; with truncation
    they are renormalised over the kept tokens.

    The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set
    otherwise), so `load_weights` hands tensors to the model without serialising them.

    With ``lora`` the engine runs one LoRA adapter of those settings beside the base
    weights: `load_adapter` (a version from the trainer) or `use_adapter` (a peft
    directory) sets the adapter every later request is sampled with; until then the
    base model alone samples, which is what a fresh adapter computes (B = 0).
    """

    def __init__(self, path: str | Path, dtype: str = "bfloat16", enforce_eager: bool = False,
                 gpu_memory_utilization: float = 0.9, lora: LoraSettings | None = None,
                 **engine_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as error:
            raise ImportError("VllmBackend needs vLLM, an optional extra: pip install troupe-rl[vllm]") from error
        if "logprobs_mode" not in {field.name for field in dataclasses.fields(vllm.EngineArgs)}:
            raise ImportError(f"vLLM {vllm.__version__} returns log-probabilities that ignore the temperature; "
                              "VllmBackend needs vLLM >= 0.10.2 (logprobs_mode)")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self._vllm = vllm
        self.path = Path(path)
        self.lora = lora
        if lora is not None:
            engine_kwargs = {**lora_engine_arguments(lora), **engine_kwargs}
        self.llm = vllm.LLM(model=str(path), dtype=dtype, enforce_eager=enforce_eager,
                            gpu_memory_utilization=gpu_memory_utilization,
                            **{"logprobs_mode": "processed_logprobs", **engine_kwargs})
        tokenizer = self.llm.get_tokenizer()
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self.adapter: Any = None
        """The ``vllm.lora.request.LoRARequest`` requests are sampled with (None: the base alone)."""
        self._adapter_ids = itertools.count(1)  # vLLM caches adapters by id: each load gets a new one
        self._adapter_versions = AdapterVersions(lora, self.path) if lora is not None else None

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> GenerationOutput:
        sampling = self._vllm.SamplingParams(**vllm_sampling_arguments(params))
        requests = [{"prompt_token_ids": token_list(prompt)} for prompt in prompts]
        request_outputs = self.llm.generate(requests, sampling, use_tqdm=False, lora_request=self.adapter)
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
                                            use_tqdm=False, lora_request=self.adapter)
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

    def load_adapter(self, named: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """Samples every later request with this adapter: the whole adapter, by adapter
        name (roles.lora), written as a peft directory and loaded through vLLM's LoRA API;
        the previous version leaves the engine and the disk. `version` only labels it."""
        if self._adapter_versions is None:
            raise RuntimeError("this VllmBackend was built without lora: pass lora=LoraSettings(...) to load adapters")
        directory = self._adapter_versions.write(named, version)
        self.use_adapter(directory, name=f"troupe-{directory.name}")
        self._adapter_versions.keep_only(directory)

    def use_adapter(self, directory: str | Path, name: str | None = None) -> None:
        """Samples every later request with the peft adapter in `directory` (a rank of at
        most the engine's ``max_lora_rank``); the adapter used before leaves the engine.

        vLLM tells adapters apart by name and caches them by id, so each call registers a
        new id and, unless `name` is given, a new name."""
        if self.lora is None:
            raise RuntimeError("this VllmBackend was built without lora (vLLM's enable_lora): pass lora=LoraSettings(...)")
        from vllm.lora.request import LoRARequest

        identifier = next(self._adapter_ids)
        request = LoRARequest(name or f"troupe-adapter-{identifier}", identifier, str(Path(directory).resolve()))
        engine = self.llm.llm_engine
        if self.adapter is not None:
            engine.remove_lora(self.adapter.lora_int_id)
            self.adapter = None
        if engine.add_lora(request) is False:  # a fresh id is always added; False means vLLM kept an old one
            raise RuntimeError(f"vLLM did not load the adapter in {directory} (id {identifier} was taken)")
        self.adapter = request

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

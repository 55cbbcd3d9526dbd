"""The generator role: samples responses to prompts with the policy's latest weights.

Each `Generate` request carries prompts (token id lists) and sampling settings; the
generator answers with a `Rollouts` batch: token ids, masks, the log-prob of every
sampled token, and the weights version that produced every row. The version is read
on the compute thread in the same call that generates, and new weights are loaded on
that thread between two calls (runtime.weights.receiver), so a row is never stamped
with a version other than the one that produced it.

Backends: Hugging Face transformers (roles.generation, default, CPU or GPU) and vLLM
(roles.vllm_backend, optional extra). Weights arrive over the broadcast channel from trainer-0.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, Field

from protocols.batch import Batch
from protocols.rl import Generate, Rollouts
from roles.generation import HFBackend
from roles.model_settings import AutocastDtype, ModelSettings
from roles.models import autocast_for, limit_cpu_threads, load_causal_lm
from roles.rollout import sampling_params
from roles.sampling import GenerationBackend, GenerationOutput, SamplingParams
from runtime.actor import handler
from runtime.weights.config import WeightChannelConfig
from runtime.weights.receiver import ModelLoader, ReceivesWeights, WeightReceiver

INITIAL_VERSION = -1
"""The version stamped on rows sampled with the weights the generator started with."""


class GeneratorConfig(ModelSettings):
    """Which model a generator serves (`ModelSettings`: ``model``, the initial policy's
    directory, ``dtype``, ``device``, ``cpu_threads``), and how."""

    backend: Literal["hf", "vllm"] = "hf"
    """``hf``: transformers (CPU or GPU); ``vllm``: the vLLM engine (optional extra, GPU)."""
    micro_batch: int = Field(64, ge=1)
    """Rows generated at once by the transformers backend."""
    autocast: AutocastDtype | None = None
    """The transformers backend samples under torch.autocast in this dtype (the weights
    stay in `dtype`; the log-probs it returns are those of the autocast forward). What
    TRL's GRPOTrainer does with ``bf16=True``. Its log-probs then differ slightly from a
    float32 trainer's: keep the trainer's old log-probs its own (``recompute_logprobs``
    auto or always) rather than the generator's."""
    channel: WeightChannelConfig = Field(default_factory=WeightChannelConfig)
    """The weight channel (must match the trainer's)."""
    join_channel: bool = True
    """Join the weight channel at start (False: serve the initial weights only)."""
    vllm: dict[str, Any] = Field(default_factory=dict)
    """Extra `vllm.LLM` arguments (gpu_memory_utilization, tensor_parallel_size, ...)."""


class Generator(ReceivesWeights):
    """Samples rollouts with the weights it holds (see the module docstring)."""

    role = "generator"
    Config: ClassVar[type[BaseModel]] = GeneratorConfig

    def __init__(self, name: str, config: GeneratorConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config
        self.backend: GenerationBackend | None = None

    async def on_start(self) -> None:
        config = self.config
        self.backend, loader, expected = await self.compute.run(_build_backend, config)
        model = getattr(self.backend, "model", None)  # the transformers backend's; vLLM manages its own threads
        await self.compute.run(limit_cpu_threads, config.device, config.cpu_threads, model)
        self.weights = WeightReceiver(
            self, loader, expected, clear_caches=self.backend.clear_caches, config=config.channel, device=config.device,
        )
        if config.join_channel:
            await self.weights.join()  # unroutable until it holds the current version

    @handler
    async def generate(self, request: Generate) -> Rollouts:
        params = sampling_params(request.sampling)
        started = time.monotonic()
        output, version = await self.compute.run(self._generate, request.batch, params)
        batch = rollout_batch(request.batch, output, params.n, version)
        return Rollouts(batch, version, self.name, time.monotonic() - started)

    def _generate(self, prompts: Batch, params: SamplingParams) -> tuple[GenerationOutput, int]:
        """On the compute thread: the version read here is the one generating."""
        assert self.backend is not None
        version = self.weights.version if self.weights.version is not None else INITIAL_VERSION
        with autocast_for(self.config.device, self.config.autocast if self.config.backend == "hf" else None):
            return self.backend.generate(prompts.columns["prompt_ids"], params), version


def _build_backend(config: GeneratorConfig) -> tuple[GenerationBackend, Any, dict[str, tuple[int, ...]] | None]:
    """The backend, the loader the weight channel hands tensors to, and the names and
    shapes that loader accepts."""
    if config.backend == "vllm":
        from roles.vllm_backend import VllmBackend

        backend = VllmBackend(config.model, dtype=config.dtype, **config.vllm)
        return backend, backend.load_weights, None  # vLLM's own loader fuses and slices full tensors
    model, tokenizer = load_causal_lm(config.model, config.dtype, config.device)
    loader = ModelLoader(model)
    return HFBackend(model, tokenizer, config.device, config.micro_batch), loader, loader.expected


def rollout_batch(prompts: Batch, output: GenerationOutput, n: int, version: int) -> Batch:
    """The prompts' columns, each repeated for its n samples, with the samples' tensors."""
    rows = prompts.without("prompt_ids").repeat(n) if len(prompts.names()) > 1 else Batch(size=prompts.size * n)
    return rows.with_columns(
        prompt_ids=output.prompt_ids,
        prompt_mask=output.prompt_mask,
        response_ids=output.response_ids,
        response_mask=output.response_mask.float(),
        behavior_logprobs=output.logprobs.float(),
        version=torch.full((prompts.size * n,), version, dtype=torch.long),
        response=output.texts,
        finish_reason=output.finish_reasons,
    )

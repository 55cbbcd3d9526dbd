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
from protocols.environments import GenerateEpisodes
from protocols.rl import Column, Generate, Rollouts
from roles.agents.tool_calls import tool_call_format
from roles.agents.trajectory import TrajectoryLimits
from roles.episode_batch import episode_batch
from roles.episode_sampling import backend_sampler
from roles.episodes import EpisodeRunner, RemoteEnvironments
from roles.generation import HFBackend
from roles.lora import LoraSettings
from roles.lora_loading import AdapterLoader, MergingLoader
from roles.model_settings import AutocastDtype, ModelSettings
from roles.models import autocast_for, limit_cpu_threads, load_causal_lm
from roles.rollout import sampling_params
from roles.sampling import GenerationBackend, GenerationOutput, SamplingParams
from runtime.actor import handler
from runtime.errors import ActorError
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
    lora: LoraSettings | None = None
    """The trainer's LoRA settings, when it trains an adapter (``troupe validate`` checks
    they are the same): the channel then brings the adapter alone, applied to the base
    weights this generator loaded from ``model`` (roles.lora_loading)."""
    lora_mode: Literal["merge", "unmerged"] = "merge"
    """How the transformers backend applies an adapter: ``merge`` it into the weights it
    adapts (from a kept copy of their base values: generation at full speed), or run it
    ``unmerged`` beside them (no copy; each forward computes the adapter too)."""


class Generator(ReceivesWeights):
    """Samples rollouts with the weights it holds (see the module docstring)."""

    role = "generator"
    Config: ClassVar[type[BaseModel]] = GeneratorConfig

    def __init__(self, name: str, config: GeneratorConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config
        self.backend: GenerationBackend | None = None
        self._episode_batches = 0

    async def on_start(self) -> None:
        config = self.config
        self.backend, loader, expected = await self.compute.run(_build_backend, config)
        model = getattr(self.backend, "model", None)  # the transformers backend's; vLLM manages its own threads
        await self.compute.run(limit_cpu_threads, config.device, config.cpu_threads, model, self.compute)
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

    @handler
    async def generate_episodes(self, request: GenerateEpisodes) -> Rollouts:
        """Runs ``n`` multi-turn episodes per row with the environment role (roles.episodes),
        each turn sampled by this generator's backend with the weights it holds then."""
        if not isinstance(self.backend, HFBackend):
            raise ActorError(f"multi-turn episodes run on the hf backend; {self.name} uses {self.config.backend}")
        params, settings, started = sampling_params(request.sampling), request.settings, time.monotonic()
        limits = TrajectoryLimits(max_turns=settings.max_turns, max_total_tokens=settings.max_total_tokens,
                                  max_new_tokens_per_turn=settings.max_new_tokens_per_turn)
        self._episode_batches += 1
        runner = EpisodeRunner(
            backend_sampler(self.backend, params, self._version, self._run_under_autocast),
            RemoteEnvironments(self, settings.environment_role, settings.call_timeout_s), self.backend.tokenizer,
            tool_call_format(settings.tool_format), limits, f"{self.name}-{self._episode_batches}",
            max_in_flight=settings.max_in_flight)
        episodes = await runner.run([row for row in request.batch.columns["episode_row"] for _ in range(params.n)])
        batch = episode_batch(request.batch, episodes, params.n, self.backend.tokenizer, settings.reward)
        return Rollouts(batch, int(batch.tensors[Column.VERSION].min()), self.name, time.monotonic() - started)

    def _version(self) -> int:
        return self.weights.version if self.weights.version is not None else INITIAL_VERSION

    async def _run_under_autocast(self, function: Any, *args: Any) -> Any:
        """`function` on the compute thread under the configured autocast."""
        def call() -> Any:
            with autocast_for(self.config.device, self.config.autocast):
                return function(*args)
        return await self.compute.run(call)

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

        backend = VllmBackend(config.model, dtype=config.dtype, lora=config.lora, **config.vllm)
        if config.lora is not None:  # the adapter, through vLLM's LoRA API (roles.vllm_lora)
            from roles.vllm_lora import VllmAdapterLoader

            adapter_loader = VllmAdapterLoader(backend)
            return backend, adapter_loader, adapter_loader.expected
        return backend, backend.load_weights, None  # vLLM's own loader fuses and slices full tensors
    model, tokenizer = load_causal_lm(config.model, config.dtype, config.device)
    loader: ModelLoader | MergingLoader | AdapterLoader
    if config.lora is None:
        loader = ModelLoader(model)
    elif config.lora_mode == "merge":
        loader = MergingLoader(model, config.lora)
    else:
        loader = AdapterLoader(model, config.lora)
        model = loader.model  # the peft model, which computes the adapter
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

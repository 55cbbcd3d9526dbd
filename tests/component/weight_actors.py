"""Trainer and generator actors for the weight channel tests: a tiny Qwen2 model
(built from a config, no download), FSDP2 over gloo on the trainer ranks."""

from __future__ import annotations

import datetime
import os
import signal
from typing import Any

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict

from protocols.messages import message
from runtime.actor import handler
from runtime.weights.config import WeightChannelConfig
from runtime.weights.publisher import PublishesWeights, WeightPublisher, gather
from runtime.weights.receiver import ModelLoader, ReceivesWeights, WeightReceiver


def tiny_qwen2(dtype: str, seed: int, layers: int = 2, hidden: int = 32) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=96, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).to(getattr(torch, dtype)).eval()


@message("test.weights.train_step")
class TrainStep:  # test -> every trainer rank: one optimizer step on a fixed batch
    seed: int


@message("test.weights.full_state")
class FullState:  # test -> every trainer rank (gathers) / a generator
    pass


@message("test.weights.state")
class State:  # trainer rank 0 / generator -> test
    tensors: dict[str, torch.Tensor]
    version: int | None


@message("test.weights.generate")
class Generate:  # test -> generator
    prompt: list[int]
    new_tokens: int


@message("test.weights.generated")
class Generated:  # generator -> test
    tokens: list[int]
    version: int | None
    cached: bool


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int
    world_size: int
    init_method: str
    """Rendezvous of the trainers' own (FSDP) group."""
    dtype: str = "float32"
    fsdp: bool = True
    layers: int = 2
    hidden: int = 32
    channel: WeightChannelConfig = WeightChannelConfig()


class ShardedTrainer(PublishesWeights):
    """A trainer rank: the tiny model, sharded with FSDP2 across the trainer ranks."""

    role = "trainer"
    Config = TrainerConfig

    def __init__(self, name: str, *, config: TrainerConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config
        self.weights = WeightPublisher(self, config.rank, config.channel)

    async def on_start(self) -> None:
        await self.compute.run(self._build)

    def _build(self) -> None:
        c = self.config
        dist.init_process_group(
            "gloo", init_method=c.init_method, rank=c.rank, world_size=c.world_size, timeout=datetime.timedelta(seconds=60),
        )
        self.model = tiny_qwen2(c.dtype, seed=0, layers=c.layers, hidden=c.hidden).train()
        if c.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (c.world_size,))
            for layer in self.model.model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(self.model, mesh=mesh)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2)

    def weights_model(self) -> torch.nn.Module:
        return self.model

    @handler
    async def train_step(self, request: TrainStep) -> None:
        await self.compute.run(self._step, request.seed)

    def _step(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed + self.config.rank)
        ids = torch.randint(0, 96, (2, 8), generator=generator)
        loss = self.model(input_ids=ids, labels=ids).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()

    @handler
    async def full_state(self, request: FullState) -> State:
        tensors = await self.compute.run(lambda: {name: gather(t).clone() for name, t in self.model.state_dict().items()})
        return State(tensors if self.config.rank == 0 else {}, self.weights.version)

    async def on_stop(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class GeneratorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dtype: str = "float32"
    seed: int = 1
    """Different from the trainers' seed, so weights that never arrived show."""
    layers: int = 2
    hidden: int = 32
    channel: WeightChannelConfig = WeightChannelConfig()
    adopt: bool = False
    """Load by making the model's tensors views of the received buckets (no copy)."""
    kill_after_buckets: int | None = None
    """SIGKILL this process after receiving this many pieces of a transfer (one piece per
    bucket at the tests' bucket sizes)."""
    stall_after_buckets: int | None = None
    """SIGSTOP this process after receiving this many pieces of a transfer."""
    faults_on_catch_up: bool = False
    """Strike in the first transfer (the catch-up at start) instead of the later ones."""


class FaultyReceiver(WeightReceiver):
    def __init__(self, *args: Any, kill_after: int | None, stall_after: int | None, on_catch_up: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kill_after = kill_after
        self.stall_after = stall_after
        self.on_catch_up = on_catch_up

    def received_piece(self, index: int) -> None:
        strikes = (self.version is None) if self.on_catch_up else (self.version is not None)
        if self.kill_after is not None and index + 1 >= self.kill_after and strikes:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.stall_after is not None and index + 1 >= self.stall_after and strikes:
            os.kill(os.getpid(), signal.SIGSTOP)


class TinyGenerator(ReceivesWeights):
    """A generator: greedy decoding with the tiny model, answers memoised per prompt
    (the cache that must be cleared when the weights change). Faults, when configured,
    strike from the second transfer on (the first catches it up at start)."""

    role = "generator"
    Config = GeneratorConfig

    def __init__(self, name: str, *, config: GeneratorConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config
        self.model = tiny_qwen2(config.dtype, seed=config.seed, layers=config.layers, hidden=config.hidden)
        self.cache: dict[tuple[int, ...], list[int]] = {}
        loader = ModelLoader(self.model, adopt=config.adopt)
        self.weights = FaultyReceiver(
            self, loader, loader.expected, self.cache.clear, config.channel,
            kill_after=config.kill_after_buckets, stall_after=config.stall_after_buckets, on_catch_up=config.faults_on_catch_up,
        )

    async def on_start(self) -> None:
        await self.weights.join()

    @handler
    async def generate(self, request: Generate) -> Generated:
        return await self.compute.run(self._generate, request.prompt, request.new_tokens)

    def _generate(self, prompt: list[int], new_tokens: int) -> Generated:
        key = (*prompt, new_tokens)
        if key in self.cache:
            return Generated(self.cache[key], self.weights.version, cached=True)
        with torch.no_grad():
            out = self.model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        tokens = out[0, len(prompt):].tolist()
        self.cache[key] = tokens
        return Generated(tokens, self.weights.version, cached=False)

    @handler
    async def full_state(self, request: FullState) -> State:
        tensors = await self.compute.run(lambda: {name: t.detach().clone() for name, t in self.model.state_dict().items()})
        return State(tensors, self.weights.version)

"""Sparse deltas over the real channel: a bfloat16 trainer taking real AdamW steps at
lr 1e-6 .. 1e-5 (and one at 1e-3, where most values change) publishes to generator
processes over a real gloo group, and every generator holds the trainer's exact bits
after every version, as a full transfer would give it, including one that joins late
and is caught up with a full version first.

The trainer, the registry and the late generator run in this test's event loop (each
on threads of its own, the late one in the broadcast group like any other rank); the
first generator is a process of its own (tests/component/weight_actors.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from protocols.weights import PublishReport
from runtime.actor import Actor
from runtime.registry import Registry
from runtime.settings import RuntimeSettings
from runtime.spawn import ActorProcess, spawn_actor
from runtime.weights.config import WeightChannelConfig
from runtime.weights.publisher import PublishesWeights, WeightPublisher
from tests.component.weight_actors import FullState, GeneratorConfig, State, TinyGenerator, tiny_qwen2

pytestmark = pytest.mark.timeout(120)

SETTINGS = RuntimeSettings(heartbeat_interval_s=0.5, heartbeat_timeout_s=10.0)
CHANNEL = {"bucket_mb": 0.02, "chunk_mb": 0.002, "delta": True, "announce_timeout_s": 10, "ready_timeout_s": 30,
           "transfer_timeout_s": 20, "commit_timeout_s": 20}
GENERATOR = "tests.component.weight_actors:TinyGenerator"


class SteppingTrainer(PublishesWeights):
    """Trainer rank 0 of one: the generators' tiny Qwen2 in bfloat16 and AdamW."""

    role = "trainer"

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.model = tiny_qwen2("bfloat16", seed=0).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        self.weights = WeightPublisher(self, 0, WeightChannelConfig(**CHANNEL))

    def weights_model(self) -> torch.nn.Module:
        return self.model

    def step(self, seed: int, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ids = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(seed))
        self.model(input_ids=ids, labels=ids).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()

    def state(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}


async def serve(actor: Actor, **kwargs: Any) -> asyncio.Task[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(actor.run(on_ready=lambda _: ready.set(), **kwargs))
    await asyncio.wait_for(ready.wait(), 30)
    return task


class Channel:
    def __init__(self, registry: str, trainer: SteppingTrainer, run_dir: Path) -> None:
        self.registry, self.trainer, self.run_dir = registry, trainer, run_dir
        self.processes: list[ActorProcess] = []
        self.here: list[tuple[Actor, asyncio.Task[None]]] = []

    async def start_generator_process(self, index: int, adopt: bool) -> None:
        self.processes.append(await spawn_actor(
            GENERATOR, f"generator-{index}", instance=index, registry=self.registry, settings=SETTINGS, run_dir=self.run_dir,
            config={"dtype": "bfloat16", "channel": CHANNEL, "adopt": adopt},
        ))

    async def start_generator_here(self, index: int, adopt: bool) -> None:
        config = GeneratorConfig(dtype="bfloat16", channel=WeightChannelConfig(**CHANNEL), adopt=adopt)
        generator = TinyGenerator(f"generator-{index}", config=config, instance=index, settings=SETTINGS)
        self.here.append((generator, await serve(generator, registry=self.registry)))  # returns once caught up

    async def assert_generators_hold_the_trainers_bits(self, names: list[str], version: int) -> None:
        expected = self.trainer.state()
        states: list[State] = await asyncio.gather(*(self.trainer.ask(name, FullState(), timeout=30) for name in names))
        for name, state in zip(names, states):
            assert state.version == version, name
            differing = [key for key, tensor in expected.items() if not same_bits(tensor, state.tensors[key])]
            assert not differing, f"{name} differs from the trainer after version {version} in {differing[:5]}"


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[Channel]:
    registry = Registry("registry", settings=SETTINGS)
    tasks = [await serve(registry)]
    assert registry.endpoint is not None
    trainer = SteppingTrainer("trainer-0", settings=SETTINGS)
    tasks.append(await serve(trainer, registry=registry.endpoint))
    running = Channel(registry.endpoint, trainer, tmp_path)
    try:
        yield running
    finally:
        await asyncio.gather(*(process.stop(timeout=10) for process in running.processes))
        for actor, task in [*running.here, (trainer, tasks[1]), (registry, tasks[0])]:
            actor.stop()
            await task


async def test_generators_patched_with_deltas_hold_the_trainers_exact_bits_version_after_version(channel: Channel) -> None:
    trainer = channel.trainer
    await channel.start_generator_process(0, adopt=False)  # copies what it receives into its model
    members = ["generator-0"]
    first: PublishReport = await trainer.weights.publish(trainer.model)
    assert first.committed == members and first.delta_share == 0.0 and first.sent_bytes == first.nbytes
    await channel.assert_generators_hold_the_trainers_bits(members, 1)

    rates = [1e-5, 1e-5, 1e-6, 1e-6, 1e-3, 1e-5, 1e-6, 1e-5, 1e-6, 1e-5]
    sent, full = [], []
    for version, lr in enumerate(rates, start=2):
        if version == 5:  # a generator joins late: caught up with the full version 4 before it is routable
            await channel.start_generator_here(1, adopt=True)  # its model becomes views of the received buckets
            members.append("generator-1")
            await channel.assert_generators_hold_the_trainers_bits(["generator-1"], 4)
        await trainer.compute.run(trainer.step, version, lr)
        report: PublishReport = await trainer.weights.publish(trainer.model)
        assert report.committed == members and not report.dropped and not report.retried, report
        assert report.delta_share > 0.0, f"version {version} travelled whole"
        sent.append(report.sent_bytes)
        full.append(report.nbytes)
        await channel.assert_generators_hold_the_trainers_bits(members, version)

    small = [s for s, lr in zip(sent, rates) if lr <= 1e-5]
    assert max(small) < 0.6 * full[0], f"deltas at lr <= 1e-5 sent {small} bytes of {full[0]}"
    assert sent[rates.index(1e-3)] > max(small)  # most values changed: most pieces travelled whole

"""The weight channel end to end: real trainer and generator processes, FSDP2 over
gloo on the trainer ranks, a gloo broadcast group, the registry, and real faults
(SIGKILL and SIGSTOP in the middle of a transfer)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from typing import Any

import pytest
import torch

from protocols.weights import PublishReport, PublishWeights
from runtime.settings import RuntimeSettings
from runtime.weights.config import WeightChannelConfig
from tests.component.test_registry import Watcher
from tests.component.weight_actors import FullState, Generate, TrainStep

pytestmark = pytest.mark.timeout(180)

SETTINGS = RuntimeSettings(heartbeat_interval_s=0.3, heartbeat_timeout_s=3.0)
CHANNEL = {"bucket_mb": 0.02, "announce_timeout_s": 3, "ready_timeout_s": 10, "transfer_timeout_s": 4, "commit_timeout_s": 10}
TRAINER = "tests.component.weight_actors:ShardedTrainer"
GENERATOR = "tests.component.weight_actors:TinyGenerator"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    def __init__(self, spawn: Any, driver: Watcher, registry: str) -> None:
        self.spawn = spawn
        self.driver = driver
        self.registry = registry
        self.trainers = 0
        self.processes: dict[str, Any] = {}

    async def start_trainers(self, ranks: int, dtype: str = "float32", channel: dict[str, Any] | None = None) -> None:
        init = f"tcp://127.0.0.1:{free_port()}"
        self.trainers = ranks
        started = await asyncio.gather(*(
            self.spawn(
                TRAINER, f"trainer-{rank}", instance=rank, registry=self.registry, settings=SETTINGS,
                config={"rank": rank, "world_size": ranks, "init_method": init, "dtype": dtype, "fsdp": ranks > 1,
                        "channel": channel or CHANNEL},
            )
            for rank in range(ranks)
        ))
        self.processes.update({f"trainer-{rank}": process for rank, process in enumerate(started)})

    async def start_generator(self, index: int, dtype: str = "float32", channel: dict[str, Any] | None = None, **faults: Any) -> None:
        self.processes[f"generator-{index}"] = await self.spawn(
            GENERATOR, f"generator-{index}", instance=index, registry=self.registry, settings=SETTINGS,
            config={"dtype": dtype, "channel": channel or CHANNEL, **faults},
        )

    async def publish(self) -> PublishReport:
        reports = await asyncio.gather(
            *(self.driver.ask(f"trainer-{rank}", PublishWeights(), timeout=120) for rank in range(self.trainers))
        )
        return reports[0]

    async def train_step(self, seed: int) -> None:
        await asyncio.gather(*(self.driver.ask(f"trainer-{rank}", TrainStep(seed)) for rank in range(self.trainers)))

    async def trainer_state(self) -> dict[str, torch.Tensor]:
        states = await asyncio.gather(*(self.driver.ask(f"trainer-{rank}", FullState()) for rank in range(self.trainers)))
        return states[0].tensors

    async def assert_generator_holds(self, index: int, expected: dict[str, torch.Tensor], version: int) -> None:
        state = await self.driver.ask(f"generator-{index}", FullState())
        assert state.version == version
        assert set(state.tensors) == set(expected)
        differing = [name for name, tensor in expected.items() if not _same_bits(tensor, state.tensors[name])]
        assert not differing, f"generator-{index} differs from the trainer in {differing[:5]}"

    async def registered_version(self, name: str) -> int | None:
        records = await self.driver.lookup(name=name)
        return records[0].weights_version


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


@pytest.fixture
async def cluster(spawn: Any, run_here: Any) -> Cluster:
    registry = await spawn("runtime.registry:Registry", "registry", settings=SETTINGS)
    driver = Watcher("driver", settings=SETTINGS)
    await run_here(driver, registry=registry.endpoint)
    await driver.watch_membership()
    return Cluster(spawn, driver, registry.endpoint)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
async def test_fsdp_trainers_publish_bit_identical_weights_to_every_generator(cluster: Cluster, dtype: str) -> None:
    await cluster.start_trainers(2, dtype)
    await cluster.start_generator(0, dtype)
    await cluster.start_generator(1, dtype, adopt=True)  # one copies, one adopts the received buckets
    prompt = Generate([5, 7, 11], 4)
    before = await cluster.driver.ask("generator-0", prompt)
    assert before.version is None and not before.cached

    report = await cluster.publish()
    assert report.committed == ["generator-0", "generator-1"] and report.dropped == {} and report.version == 1
    assert report.buckets > 1  # the test's bucket size splits the model
    first = await cluster.trainer_state()
    for index in (0, 1):
        await cluster.assert_generator_holds(index, first, version=1)
        assert await cluster.registered_version(f"generator-{index}") == 1
    after = await cluster.driver.ask("generator-0", prompt)
    assert after.version == 1 and not after.cached  # the answer memoised under the old weights is gone

    await cluster.train_step(seed=3)
    report = await cluster.publish()
    assert report.committed == ["generator-0", "generator-1"] and report.version == 2
    second = await cluster.trainer_state()
    assert any(not torch.equal(first[name], second[name]) for name in first), "the optimizer step changed nothing"
    for index in (0, 1):
        await cluster.assert_generator_holds(index, second, version=2)
        assert await cluster.registered_version(f"generator-{index}") == 2
    stamped = await cluster.driver.ask("generator-1", prompt)
    assert stamped.version == 2


@pytest.mark.parametrize("keep_last", [True, False])
async def test_a_generator_killed_mid_transfer_is_dropped_and_the_trainer_goes_on(cluster: Cluster, keep_last: bool) -> None:
    channel = {**CHANNEL, "keep_last": keep_last}
    await cluster.start_trainers(1, channel=channel)
    await cluster.start_generator(0, channel=channel)
    await cluster.start_generator(1, channel=channel, kill_after_buckets=2)
    assert (await cluster.publish()).committed == ["generator-0", "generator-1"]
    victim = cluster.processes["generator-1"]

    await cluster.train_step(seed=1)
    started = time.monotonic()
    report = await cluster.publish()
    elapsed = time.monotonic() - started
    assert await victim.wait(timeout=10) == -signal.SIGKILL  # it really died mid-transfer
    config = WeightChannelConfig(**channel)
    assert elapsed < 2 * config.announce_timeout_s + config.transfer_timeout_s + config.commit_timeout_s
    assert set(report.dropped) == {"generator-1"}, report
    if keep_last:  # the survivor was caught up from the retained buckets at once
        assert report.retried and report.committed == ["generator-0"] and report.missed == []
        await cluster.assert_generator_holds(0, await cluster.trainer_state(), version=2)
    else:  # the survivor keeps version 1 until the next publication
        assert report.committed == [] and report.missed == ["generator-0"]

    await cluster.train_step(seed=2)
    report = await cluster.publish()
    assert report.committed == ["generator-0"] and report.dropped == {} and report.version == 3
    await cluster.assert_generator_holds(0, await cluster.trainer_state(), version=3)


async def test_a_stalled_generator_cannot_hang_the_trainer(cluster: Cluster) -> None:
    await cluster.start_trainers(1)
    await cluster.start_generator(0)
    await cluster.start_generator(1, stall_after_buckets=1)
    await cluster.publish()
    stalled = cluster.processes["generator-1"]
    try:
        await cluster.train_step(seed=1)
        started = time.monotonic()
        report = await cluster.publish()
        elapsed = time.monotonic() - started
        config = WeightChannelConfig(**CHANNEL)
        assert elapsed < 2 * config.announce_timeout_s + config.transfer_timeout_s + config.commit_timeout_s + 5
        assert set(report.dropped) == {"generator-1"} and report.committed == ["generator-0"]
        await cluster.assert_generator_holds(0, await cluster.trainer_state(), version=2)
    finally:
        os.kill(stalled.pid, signal.SIGKILL)
        await stalled.wait(timeout=10)


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "T"
    except FileNotFoundError:
        return False


async def test_a_generator_stalled_in_its_catch_up_does_not_hold_up_publications(cluster: Cluster) -> None:
    channel = {**CHANNEL, "transfer_timeout_s": 40}  # the stalled catch-up stays stuck this long
    await cluster.start_trainers(2, channel=channel)  # rank 1 waits in the gathers: it must not wait on the join
    await cluster.start_generator(0, channel=channel)
    await cluster.publish()
    joining = asyncio.ensure_future(
        cluster.start_generator(1, channel=channel, stall_after_buckets=1, faults_on_catch_up=True)
    )
    pid = None
    try:
        for _ in range(200):
            records = [event.record for event in cluster.driver.events if event.record.name == "generator-1"]
            pid = records[-1].pid if records else None
            if pid is not None and _stopped(pid):
                break
            await asyncio.sleep(0.1)
        assert pid is not None and _stopped(pid), "generator-1 never stalled in its catch-up"
        await cluster.train_step(seed=2)
        started = time.monotonic()
        report = await cluster.publish()
        assert time.monotonic() - started < channel["transfer_timeout_s"] / 2  # nowhere near the stuck catch-up's end
        assert report.version == 2 and report.committed == ["generator-0"] and not report.dropped
        assert _stopped(pid)  # its catch-up is still stuck: the publication did not wait for it
        await cluster.assert_generator_holds(0, await cluster.trainer_state(), version=2)
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        joining.cancel()
        await asyncio.gather(joining, return_exceptions=True)


async def test_a_generator_attached_mid_run_is_caught_up_before_it_is_routable(cluster: Cluster) -> None:
    await cluster.start_trainers(2)
    await cluster.start_generator(0)
    await cluster.publish()
    await cluster.train_step(seed=4)
    await cluster.publish()
    current = await cluster.trainer_state()

    await cluster.start_generator(2)  # returns once it reports ready
    await cluster.assert_generator_holds(2, current, version=2)
    seen = [event.record for event in cluster.driver.events if event.record.name == "generator-2"]
    assert any(record.state == "starting" for record in seen)
    ready = [record for record in seen if record.state == "ready"]
    assert ready and all(record.weights_version == 2 for record in ready), seen
    reply = await cluster.driver.ask("generator-2", Generate([1, 2, 3], 3))
    assert reply.version == 2

    # and it is a member from now on: the next publication reaches both
    await cluster.train_step(seed=5)
    report = await cluster.publish()
    assert report.committed == ["generator-0", "generator-2"]
    await cluster.assert_generator_holds(2, await cluster.trainer_state(), version=3)

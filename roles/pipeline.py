"""A small pipeline of built-in roles: producer -> stage -> sink.

It exercises everything a real topology needs without any model: tensor batches
travel between processes, work is routed to whichever stage instances are live
(instances attached at runtime get work at once), and work held by a stage that
dies is re-delivered to another without being done twice. `examples/pipeline.yaml`
runs it; the launcher's end-to-end tests use it.

* producer: sends `items` work items, each a [rows, width] float32 tensor, to the
  `stage` role, at most `in_flight` at a time, and stops (ending the run) when all
  are acknowledged.
* stage: transforms each item (optionally taking `work_s` seconds) and stores the
  result at the `sink` role before acknowledging it.
* sink: appends one JSON line per stored item to `<run_dir>/pipeline/<name>.jsonl`.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from protocols.messages import message
from protocols.specs import FLOATING, TensorSpec
from runtime.actor import Actor, handler


@message("pipeline.item")
class Item:  # producer -> stage
    index: int
    values: Annotated[torch.Tensor, TensorSpec(FLOATING, ndim=2)]


@message("pipeline.processed")
class Processed:  # stage -> producer
    index: int
    stage: str


@message("pipeline.store")
class Store:  # stage -> sink
    index: int
    checksum: float
    stage: str


@message("pipeline.stored")
class Stored:  # sink -> stage
    index: int


class ProducerConfig(BaseModel):
    """What the producer sends."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    items: int = Field(100, ge=1)
    """How many work items to send."""
    rows: int = Field(16, ge=1)
    """Rows of each item's tensor."""
    width: int = Field(64, ge=1)
    """Columns of each item's tensor."""
    in_flight: int = Field(8, ge=1)
    """Items sent but not yet acknowledged, at most."""
    interval_s: float = Field(0.0, ge=0)
    """Pause before sending each item (stretches a run for demos and tests)."""
    stage_role: str = "stage"
    """The role that processes items."""
    item_timeout_s: float = Field(120.0, gt=0)
    """How long one item may take, re-deliveries included, before the producer fails."""


class StageConfig(BaseModel):
    """How a stage processes items."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    work_s: float = Field(0.0, ge=0)
    """Extra time each item takes (simulated work, on the compute thread)."""
    sink_role: str = "sink"
    """The role that stores results."""


class SinkConfig(BaseModel):
    """Where the sink writes."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    directory: str = "pipeline"
    """Folder, relative to the run directory, for `<name>.jsonl` with one line per stored item."""


class Producer(Actor):
    role = "producer"
    Config: ClassVar[type[BaseModel]] = ProducerConfig

    def __init__(self, name: str, config: ProducerConfig | None = None, **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.config = config or ProducerConfig()
        self.acknowledged: set[int] = set()

    async def on_start(self) -> None:
        self.start_background(self._produce(), "produce")

    async def _produce(self) -> None:
        config = self.config
        slots = asyncio.Semaphore(config.in_flight)
        generator = torch.Generator().manual_seed(0)

        async def send(index: int, values: torch.Tensor) -> None:
            try:
                done: Processed = await self.ask_role(config.stage_role, Item(index, values), config.item_timeout_s)
                self.acknowledged.add(done.index)
            finally:
                slots.release()

        pending = []
        for index in range(config.items):
            await slots.acquire()
            await asyncio.sleep(config.interval_s)
            values = torch.randn(config.rows, config.width, generator=generator)
            pending.append(asyncio.ensure_future(send(index, values)))
        await asyncio.gather(*pending)
        self.log.lifecycle("pipeline.produced", items=config.items, acknowledged=len(self.acknowledged))
        self.stop()


class Stage(Actor):
    role = "stage"
    Config: ClassVar[type[BaseModel]] = StageConfig

    def __init__(self, name: str, config: StageConfig | None = None, **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.config = config or StageConfig()

    @handler
    async def process(self, item: Item) -> Processed:
        checksum = await self.compute.run(self._transform, item.values)
        await self.ask_role(self.config.sink_role, Store(item.index, checksum, self.name))
        return Processed(item.index, self.name)

    def _transform(self, values: torch.Tensor) -> float:
        if self.config.work_s:
            time.sleep(self.config.work_s)
        return float((values * 2.0 + 1.0).square().sum())


class Sink(Actor):
    role = "sink"
    Config: ClassVar[type[BaseModel]] = SinkConfig

    def __init__(self, name: str, config: SinkConfig | None = None, **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.config = config or SinkConfig()
        self.stored = 0

    async def on_start(self) -> None:
        base = self.run_dir if self.run_dir is not None else Path.cwd()
        self.output = base / self.config.directory / f"{self.name}.jsonl"
        self.output.parent.mkdir(parents=True, exist_ok=True)

    @handler
    async def store(self, request: Store) -> Stored:
        line = {"index": request.index, "checksum": request.checksum, "stage": request.stage, "ts": time.time()}
        with open(self.output, "a", encoding="utf-8") as output:
            output.write(json.dumps(line) + "\n")
        self.stored += 1
        return Stored(request.index)

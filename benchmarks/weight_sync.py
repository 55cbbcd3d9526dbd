"""The weight channel versus one raw broadcast of the same bytes, in one run.

One trainer process (a full replica: gathering is a no-op) publishes a bfloat16
model shaped like a transformer (attention, gated MLP and norm tensors per layer)
to two generator processes. For each model size, interleaved:

* channel: `PublishWeights` to the trainer until every generator acknowledged the
  version: planning, packing per-dtype buckets, the announce/ready/transfer/commit
  phases, and the generators' load into their models;
* raw: one `broadcast` of a preallocated buffer of the same number of bytes in the
  same process group, timed from the trainer's call to the last generator's return.

Prints a table (GB/s of each, their ratio, the trainer's packing time, the
generators' pause) with medians and, as "best", the fastest of the repeats of each
(on a machine shared with other work, the least disturbed); then the real demo model
(SmolLM2-135M, examples/smollm2/data/model) after real AdamW steps at the examples'
learning rates, each version sent as a delta and again in full
(benchmarks/weight_sync_real.py: bytes and seconds of each); and, last, one JSON line
of ratios: channel GB/s / raw GB/s per size, and per real-model row the delta's bytes
and seconds over the full version's.

    python benchmarks/weight_sync.py [--sizes-mb 100 500 1000] [--repeats 3] [--backend gloo|nccl]
                                     [--real-steps 2] [--real-setups float32 float32->bfloat16 bfloat16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import weight_sync_real as real
from benchmarks.processes import stop_all
from protocols.messages import message
from protocols.weights import PublishReport, PublishWeights
from runtime.actor import Actor, handler, start_actor
from runtime.settings import RuntimeSettings
from runtime.spawn import spawn_actor
from runtime.weights import group as groups
from runtime.weights.config import WeightChannelConfig
from runtime.weights.publisher import PublishesWeights, WeightPublisher
from runtime.weights.receiver import ModelLoader, ReceivesWeights, WeightReceiver

MB = 1 << 20
LAYER_BYTES = 2 * (2 * 1024 * 1024 + 2 * 256 * 1024 + 3 * 2816 * 1024 + 2 * 1024)


class Transformerish(torch.nn.Module):
    """Per layer: q/o 1024x1024, k/v 256x1024 (GQA), gate/up/down 1024<->2816, two norms."""

    def __init__(self, layers: int, device: str) -> None:
        super().__init__()
        shapes = {"q": (1024, 1024), "k": (256, 1024), "v": (256, 1024), "o": (1024, 1024),
                  "gate": (2816, 1024), "up": (2816, 1024), "down": (1024, 2816), "norm1": (1024,), "norm2": (1024,)}
        self.layers = torch.nn.ModuleList()
        for _ in range(layers):
            layer = torch.nn.Module()
            for name, shape in shapes.items():
                layer.register_parameter(name, torch.nn.Parameter(torch.randn(*shape, device=device).to(torch.bfloat16)))
            self.layers.append(layer)


@message("bench.weights.raw")
class RawBroadcast:  # driver -> trainer and generators: one broadcast of nbytes in the channel's group
    nbytes: int


@message("bench.weights.raw_done")
class RawDone:
    started: float
    finished: float


class Sizes(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers: int
    device: str = "cpu"
    adopt: bool = True
    channel: WeightChannelConfig = WeightChannelConfig()


class _Raw:
    """A preallocated buffer and one timed broadcast on the channel's current group."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def run(self, group: groups.BroadcastGroup | None, nbytes: int, device: str) -> RawDone:
        if group is None:
            raise RuntimeError("no broadcast group yet: publish once first")
        if self.buffer is None or self.buffer.numel() != nbytes:
            self.buffer = torch.ones(nbytes, dtype=torch.uint8, device=device)  # touched: no page faults timed
        started = time.time()
        group.broadcast(self.buffer, 600.0)
        if self.buffer.is_cuda:
            torch.cuda.synchronize()
        return RawDone(started, time.time())


class BenchTrainer(PublishesWeights):
    role = "trainer"
    Config = Sizes

    def __init__(self, name: str, *, config: Sizes, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config
        self.model = Transformerish(config.layers, config.device)
        self.weights = WeightPublisher(self, 0, config.channel)
        self.raw = _Raw()

    def weights_model(self) -> torch.nn.Module:
        return self.model

    @handler
    async def raw_broadcast(self, request: RawBroadcast) -> RawDone:
        await self.compute.run(lambda: None)  # the kept copy, queued after the publication, is done: time alone
        return await groups.in_thread(self.raw.run, self.weights._main.group, request.nbytes, self.config.device)


class BenchGenerator(ReceivesWeights):
    role = "generator"
    Config = Sizes

    def __init__(self, name: str, *, config: Sizes, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config
        self.model = Transformerish(config.layers, config.device)
        loader = ModelLoader(self.model, adopt=config.adopt)
        self.weights = WeightReceiver(self, loader, loader.expected, config=config.channel, device=config.device)
        self.raw = _Raw()

    async def on_start(self) -> None:
        await self.weights.join()

    @handler(urgent=True)
    async def raw_broadcast(self, request: RawBroadcast) -> RawDone:
        return await groups.in_thread(self.raw.run, self.weights._group, request.nbytes, self.config.device)


async def measure(
    layers: int, repeats: int, generators: int, backend: str, device: str, run_dir: str, adopt: bool, bucket_mb: float,
) -> dict[str, Any]:
    settings = RuntimeSettings(log_messages=False, heartbeat_timeout_s=30.0)
    channel = WeightChannelConfig(backend=backend, bucket_mb=bucket_mb)  # type: ignore[arg-type]
    config = Sizes(layers=layers, device=device, adopt=adopt, channel=channel).model_dump()
    processes = [await spawn_actor("runtime.registry:Registry", "registry", settings=settings, run_dir=run_dir)]
    registry = processes[0].endpoint
    driver = Actor("driver", settings=settings)
    task = None
    try:
        processes.append(await spawn_actor(
            "benchmarks.weight_sync:BenchTrainer", "trainer-0", registry=registry, settings=settings, run_dir=run_dir,
            config=config, ready_timeout=300,
        ))
        processes += await asyncio.gather(*(
            spawn_actor("benchmarks.weight_sync:BenchGenerator", f"generator-{i}", instance=i, registry=registry,
                        settings=settings, run_dir=run_dir, config=config, ready_timeout=300)
            for i in range(generators)
        ))
        task = await start_actor(driver, registry=registry)
        warm: PublishReport = await driver.ask("trainer-0", PublishWeights(), timeout=600)  # forms the group
        nbytes = warm.nbytes
        names = ["trainer-0"] + [f"generator-{i}" for i in range(generators)]
        await asyncio.gather(*(driver.ask(name, RawBroadcast(nbytes), timeout=600) for name in names))  # warm-up
        channel_s, raw_s, pause_s, pack_s = [], [], [], []
        for _ in range(repeats):
            started = time.monotonic()
            report: PublishReport = await driver.ask("trainer-0", PublishWeights(), timeout=600)
            channel_s.append(time.monotonic() - started)
            pause_s.append(report.pause_s)
            pack_s.append(report.gather_s)
            assert len(report.committed) == generators, report
            done = await asyncio.gather(*(driver.ask(name, RawBroadcast(nbytes), timeout=600) for name in names))
            raw_s.append(max(d.finished for d in done) - done[0].started)
        return {"nbytes": nbytes, "buckets": warm.buckets, "channel_s": statistics.median(channel_s),
                "raw_s": statistics.median(raw_s), "pause_s": statistics.median(pause_s),
                "pack_s": statistics.median(pack_s), "channel_best_s": min(channel_s), "raw_best_s": min(raw_s)}
    finally:
        await stop_all(driver, task, processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=int, nargs="*", default=[100, 500, 1000])
    parser.add_argument("--repeats", type=int, default=3, help="publications per size; medians are reported")
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    parser.add_argument("--bucket-mb", type=float, default=WeightChannelConfig().bucket_mb)
    parser.add_argument("--copy-load", action="store_true", help="generators copy into their models instead of adopting the buckets")
    parser.add_argument("--real-steps", type=int, default=2, help="optimizer steps per learning rate on the real model (0: skip)")
    parser.add_argument("--real-setups", nargs="*", choices=list(real.SETUPS), default=list(real.SETUPS))
    args = parser.parse_args()
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    device = "cuda" if args.backend == "nccl" else "cpu"
    print(f"# weight sync benchmark  {time.strftime('%Y-%m-%d')}  {platform.node()}  {os.cpu_count()} cpus  "
          f"torch {torch.__version__}  backend {args.backend}  1 trainer -> {args.generators} generators  "
          f"bucket {args.bucket_mb:g} MB  load {'copy' if args.copy_load else 'adopt'}  repeats {args.repeats} (medians)")
    print(f"\n{'model':>8} {'buckets':>8} {'raw GB/s':>9} {'channel GB/s':>13} {'ratio':>6} {'best':>6} {'pack s':>7} {'pause s':>8}")
    ratios: dict[str, float] = {}
    for size_mb in args.sizes_mb:
        layers = max(1, round(size_mb * MB / LAYER_BYTES))
        with tempfile.TemporaryDirectory() as run_dir:
            result = asyncio.run(measure(
                layers, args.repeats, args.generators, args.backend, device, run_dir, not args.copy_load, args.bucket_mb,
            ))
        raw_rate, channel_rate = result["nbytes"] / result["raw_s"], result["nbytes"] / result["channel_s"]
        ratio, best = channel_rate / raw_rate, result["raw_best_s"] / result["channel_best_s"]
        ratios[f"{args.backend}_ratio_{size_mb}mb"] = round(ratio, 3)
        ratios[f"{args.backend}_best_ratio_{size_mb}mb"] = round(best, 3)
        print(f"{result['nbytes'] / MB:>6.0f}MB {result['buckets']:>8} {raw_rate / 1e9:>9.2f} {channel_rate / 1e9:>13.2f} "
              f"{ratio:>6.2f} {best:>6.2f} {result['pack_s']:>7.3f} {result['pause_s']:>8.3f}", flush=True)
    if args.real_steps > 0 and args.real_setups:
        ratios.update(real_model_rows(args.real_setups, args.real_steps))
    print(json.dumps(ratios))


def real_model_rows(setups: list[str], steps: int) -> dict[str, float]:
    """Print the full-versus-delta table of the real model; returns its ratios."""
    missing = real.real_model_missing()
    if missing is not None:
        print(f"\n{missing}")
        return {}
    print(f"\n# real model: SmolLM2-135M, AdamW on the arithmetic prompts, medians of {steps} steps per learning rate; "
          "each version sent as a delta, then again in full")
    print(f"{'setup':>18} {'lr':>7} {'model MB':>9} {'delta share':>12} {'full MB':>8} {'delta MB':>9} {'bytes':>6} "
          f"{'full s':>7} {'delta s':>8} {'time':>6}")
    ratios: dict[str, float] = {}
    for setup in setups:
        with tempfile.TemporaryDirectory() as run_dir:
            rows = asyncio.run(real.measure_setup(setup, steps, run_dir, WeightChannelConfig().chunk_mb))
        for row in rows:
            key = f"{setup.replace('->', '_to_')}_lr{row['lr']:g}"
            ratios[f"delta_bytes_{key}"] = round(row["delta_bytes"] / row["full_bytes"], 3)
            ratios[f"delta_seconds_{key}"] = round(row["delta_s"] / row["full_s"], 3)
            print(f"{setup:>18} {row['lr']:>7.0e} {row['nbytes'] / MB:>9.0f} {row['share']:>12.2f} {row['full_bytes'] / MB:>8.1f} "
                  f"{row['delta_bytes'] / MB:>9.1f} {ratios[f'delta_bytes_{key}']:>6.2f} {row['full_s']:>7.3f} "
                  f"{row['delta_s']:>8.3f} {ratios[f'delta_seconds_{key}']:>6.2f}", flush=True)
    return ratios


if __name__ == "__main__":
    main()

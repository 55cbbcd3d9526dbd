"""Full versus delta versions of the real demo model, for benchmarks/weight_sync.py.

One trainer process holds SmolLM2-135M (examples/smollm2/data/model) with AdamW and
takes real optimizer steps on the demo's arithmetic prompts at the examples' learning
rates; two generator processes hold the same model and load what they receive with
`ModelLoader` (a copy, as the HF generator role does). After each step the same weights
are published twice: as the next version with ``delta`` on (a delta of the previous
version, piece by piece where that is smaller), then again as that version in full
(``republish``: a version sent again always travels whole). Both are timed from the
driver's `PublishWeights` to the last generator's acknowledgement.

Three set-ups: the examples' own (a float32 trainer sends float32), a float32 trainer
sending bfloat16 (``send_dtype``), and a bfloat16 trainer.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from benchmarks.processes import stop_all
from protocols.messages import message
from protocols.weights import PublishReport, PublishWeights
from runtime.actor import Actor, handler, start_actor
from runtime.settings import RuntimeSettings
from runtime.spawn import spawn_actor
from runtime.weights.config import WeightChannelConfig
from runtime.weights.publisher import PublishesWeights, WeightPublisher
from runtime.weights.receiver import ModelLoader, ReceivesWeights, WeightReceiver

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "smollm2" / "data" / "model"
PROMPTS = ROOT / "examples" / "smollm2" / "data" / "arithmetic" / "train.jsonl"
BUILD = "python examples/smollm2/build.py --out examples/smollm2/data"
SETUPS = {"float32": ("float32", None), "float32->bfloat16": ("float32", "bfloat16"), "bfloat16": ("bfloat16", None)}
"""Name -> (trainer dtype, send_dtype)."""
RATES = (2.0e-5, 1.0e-5)
"""The learning rates of examples/smollm2-grpo.yaml and examples/smollm2-humaneval.yaml."""


@message("bench.weights.train_step")
class TrainStep:  # driver -> trainer: one AdamW step on the demo's prompts
    lr: float
    seed: int


class RealConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dtype: str
    channel: WeightChannelConfig


def _load(dtype: str) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=getattr(torch, dtype))
    return model, AutoTokenizer.from_pretrained(str(MODEL))


class RealTrainer(PublishesWeights):
    role = "trainer"
    Config = RealConfig

    def __init__(self, name: str, *, config: RealConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config
        self.weights = WeightPublisher(self, 0, config.channel)

    async def on_start(self) -> None:
        await self.compute.run(self._build)

    def _build(self) -> None:
        self.model, tokenizer = _load(self.config.dtype)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=RATES[0])
        rows = [json.loads(line) for line in PROMPTS.read_text().splitlines()[:64]]
        texts = [f"{row['messages'][0]['content']} {row['ground_truth']}" for row in rows]
        self.batch = tokenizer(texts, return_tensors="pt", padding=True)
        self.labels = self.batch["input_ids"].masked_fill(self.batch["attention_mask"] == 0, -100)

    def weights_model(self) -> torch.nn.Module:
        return self.model

    @handler
    async def train_step(self, request: TrainStep) -> None:
        await self.compute.run(self._step, request.lr, request.seed)

    def _step(self, lr: float, seed: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        rows = torch.randperm(self.labels.shape[0], generator=torch.Generator().manual_seed(seed))[:8]
        loss = self.model(input_ids=self.batch["input_ids"][rows], attention_mask=self.batch["attention_mask"][rows],
                          labels=self.labels[rows]).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()


class RealGenerator(ReceivesWeights):
    role = "generator"
    Config = RealConfig

    def __init__(self, name: str, *, config: RealConfig, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.config = config

    async def on_start(self) -> None:
        model, _ = await self.compute.run(_load, self.config.dtype)
        loader = ModelLoader(model)
        self.weights = WeightReceiver(self, loader, loader.expected, config=self.config.channel)
        await self.weights.join()


async def measure_setup(setup: str, steps: int, run_dir: str, chunk_mb: float) -> list[dict[str, Any]]:
    """Rows for one set-up: per learning rate, the medians over `steps` optimizer steps."""
    trainer_dtype, send_dtype = SETUPS[setup]
    wire = send_dtype or trainer_dtype
    channel = WeightChannelConfig(delta=True, send_dtype=send_dtype, chunk_mb=chunk_mb, bucket_mb=128)  # type: ignore[arg-type]
    settings = RuntimeSettings(log_messages=False, heartbeat_timeout_s=60.0)
    processes = [await spawn_actor("runtime.registry:Registry", "registry", settings=settings, run_dir=run_dir)]
    registry = processes[0].endpoint
    driver = Actor("driver", settings=settings)
    task = None
    rows = []
    try:
        processes.append(await spawn_actor(
            "benchmarks.weight_sync_real:RealTrainer", "trainer-0", registry=registry, settings=settings, run_dir=run_dir,
            config={"dtype": trainer_dtype, "channel": channel.model_dump()}, ready_timeout=300,
        ))
        processes += await asyncio.gather(*(
            spawn_actor("benchmarks.weight_sync_real:RealGenerator", f"generator-{i}", instance=i, registry=registry,
                        settings=settings, run_dir=run_dir, config={"dtype": wire, "channel": channel.model_dump()},
                        ready_timeout=300)
            for i in range(2)
        ))
        task = await start_actor(driver, registry=registry)
        await driver.ask("trainer-0", PublishWeights(), timeout=600)  # the first version travels whole
        seed = 0
        for lr in RATES:
            samples: dict[str, list[float]] = {"delta_s": [], "full_s": [], "delta_bytes": [], "full_bytes": [], "share": []}
            for _ in range(steps):
                seed += 1
                await driver.ask("trainer-0", TrainStep(lr, seed), timeout=600)
                for kind, request in (("delta", PublishWeights()), ("full", PublishWeights(republish=True))):
                    started = time.monotonic()
                    report: PublishReport = await driver.ask("trainer-0", request, timeout=600)
                    samples[f"{kind}_s"].append(time.monotonic() - started)
                    samples[f"{kind}_bytes"].append(report.sent_bytes)
                    if len(report.committed) != 2:
                        raise RuntimeError(f"a generator did not load version {report.version}: {report}")
                    if kind == "delta":
                        samples["share"].append(report.delta_share)
                    nbytes = report.nbytes
            rows.append({"setup": setup, "lr": lr, "nbytes": nbytes,
                         **{key: statistics.median(values) for key, values in samples.items()}})
        return rows
    finally:
        await stop_all(driver, task, processes)


def real_model_missing() -> str | None:
    """Why the real-model rows cannot run (None: they can)."""
    if not (MODEL / "config.json").exists() or not PROMPTS.exists():
        return f"# real-model rows skipped: {MODEL.relative_to(ROOT)} is not built (build it with: {BUILD})"
    return None

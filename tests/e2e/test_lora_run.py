"""A LoRA GRPO run end to end through `troupe launch` (examples/arith-grpo-lora.yaml on
the tiny arithmetic model): two FSDP trainer ranks train the adapter, the weight
channel carries the adapter alone, the reference log-probs come from the trainer's
base model (no reference process), and a second launch resumes from the adapter
checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch.distributed.checkpoint as dcp
import yaml

from roles.lora import LoraSettings, adapter_shapes, channel_name
from roles.metrics import read_metrics
from tests.e2e.cli import troupe
from tests.e2e.test_rl_run import STEP_NAMES, arith, rl_topology  # noqa: F401 - arith is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def lora_topology(tmp_path: Path, data: Path, steps: int) -> Path:
    path = rl_topology(tmp_path, data, steps=steps, name=f"lora-{steps}", source="examples/arith-grpo-lora.yaml",
                       checkpoint_every=2)
    topology = yaml.safe_load(path.read_text())
    topology["roles"]["trainer"]["count"] = 2  # FSDP2 shards of a peft model
    path.write_text(yaml.safe_dump(topology, sort_keys=False))
    return path


def test_a_lora_run_on_two_ranks_syncs_the_adapter_alone_takes_the_reference_from_the_base_and_resumes(
        arith: Path, tmp_path: Path, run_dir: Path) -> None:  # noqa: F811 - arith is a fixture
    launched = troupe("launch", str(lora_topology(tmp_path, arith, steps=2)), "--run-dir", str(run_dir), "--no-status",
                      timeout=420)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert not (run_dir / "logs" / "reference-0.jsonl").exists()  # no reference process: the trainer's base serves

    from transformers import AutoConfig

    settings = LoraSettings(**yaml.safe_load((run_dir / "topology.yaml").read_text())["roles"]["trainer"]["config"]["lora"])
    shapes = adapter_shapes(AutoConfig.from_pretrained(arith / "model"), settings)
    adapter_bytes = 4 * sum(math.prod(shape) for shape in shapes.values())  # float32
    records = [record for record in read_metrics(run_dir) if "train/reward" in record]
    assert [record["step"] for record in records] == [1, 2]
    for record in records:
        assert STEP_NAMES <= record.keys()  # timing/reference_s and the KL numbers too: the base model's log-probs
        assert record["weights/sent_bytes"] == adapter_bytes  # the adapter, not the model
        assert record["train/kl_div"] >= 0.0 and math.isfinite(record["train/loss"])
    assert records[0]["train/kl_k1_token"] == pytest.approx(0.0, abs=1e-6)  # step 1 samples with B = 0: the base

    saved = dcp.FileSystemReader(str(run_dir / "checkpoints" / "step_2" / "trainer")).read_metadata().state_dict_metadata
    model_keys = [key.removeprefix("model.") for key in saved if key.startswith("model.")]
    assert {channel_name(key) for key in model_keys} == set(shapes)  # the adapter alone, every matrix of it

    resumed = troupe("launch", str(lora_topology(tmp_path, arith, steps=3)), "--run-dir", str(run_dir), "--no-status",
                     timeout=420)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    events = [json.loads(line) for line in (run_dir / "logs" / "controller-0.jsonl").read_text().splitlines()]
    assert any(event.get("event") == "controller.resumed" and event.get("step") == 2 for event in events)
    steps = [record["step"] for record in read_metrics(run_dir) if "train/reward" in record]
    assert steps == [1, 2, 3]

"""`troupe export` and the export behind `Run.export`, from a real run whose trainer is
sharded over two ranks (FSDP2, so each checkpoint is two DCP shard files).

The reference for "the trainer's model at step N" is read without any troupe code:
torch's own converter turns the DCP checkpoint the trainer wrote into a plain state
dict, loaded into a model built from the initial config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from launch.export import export_checkpoint
from tests.e2e.cli import troupe
from tests.e2e.test_rl_run import arith, rl_topology  # noqa: F401 - arith is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROMPTS = ["12+7=", "3-4=", "19+19=", "0+0="]


def trainer_model_at(checkpoint: Path, initial: Path, scratch: Path) -> PreTrainedModel:
    dcp_to_torch_save(checkpoint / "trainer", scratch / f"{checkpoint.name}.pt")
    state = torch.load(scratch / f"{checkpoint.name}.pt", weights_only=True)["model"]
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(initial, local_files_only=True))
    model.load_state_dict(state, strict=True)
    return model.eval()


def logits_of(model: PreTrainedModel, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_an_exported_checkpoint_gives_the_logits_of_the_trainers_model_at_that_step(
        tmp_path: Path, run_dir: Path, arith: Path) -> None:  # noqa: F811
    topology = rl_topology(tmp_path, arith, steps=2, checkpoint_every=1, trainer_ranks=2)
    launched = troupe("launch", str(topology), "--run-dir", str(run_dir), "--no-status",
                      "--set", "roles.trainer.count=2", "--set", "roles.trainer.config.ranks=2",
                      # an entropy bonus moves the weights even when every reward of the tiny model is 0
                      "--set", "roles.trainer.config.entropy_coef=0.05", timeout=400)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert len(list((run_dir / "checkpoints" / "step_1" / "trainer").glob("*.distcp"))) == 2  # one shard per rank

    exported = troupe("export", str(run_dir), str(tmp_path / "step1"), "--step", "1")
    assert exported.returncode == 0, exported.stderr
    assert f"exported {run_dir} (step_1) to {tmp_path / 'step1'}" in exported.stdout
    newest = export_checkpoint(run_dir, tmp_path / "newest")  # what Run.export calls

    initial = AutoModelForCausalLM.from_pretrained(arith / "model", local_files_only=True).eval()
    seen = []
    for step, out in ((1, tmp_path / "step1"), (2, newest)):
        for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
            assert (out / name).is_file(), name
        tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
        assert tokenizer.chat_template == AutoTokenizer.from_pretrained(arith / "model").chat_template
        batch = dict(tokenizer(PROMPTS, padding=True, return_tensors="pt"))
        exported_logits = logits_of(AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval(), batch)
        trainer_logits = logits_of(trainer_model_at(run_dir / "checkpoints" / f"step_{step}", arith / "model",
                                                    tmp_path), batch)
        torch.testing.assert_close(exported_logits, trainer_logits, rtol=0, atol=0)
        assert not torch.allclose(exported_logits, logits_of(initial, batch)), f"step {step} exported the initial model"
        meta = json.loads((out / "troupe_export.json").read_text())
        assert meta["checkpoint"] == f"step_{step}" and meta["weights_version"] == step
        seen.append(exported_logits)
    assert not torch.allclose(seen[0], seen[1]), "steps 1 and 2 exported the same weights"


def test_export_names_the_checkpoints_there_are_and_keeps_a_folder_that_is_in_use(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "step_3").mkdir(parents=True)
    (run / "checkpoints" / "step_3" / "controller.json").write_text("{}")
    (run / "checkpoints" / "step_4").mkdir()  # no controller.json: incomplete
    (run / "topology.yaml").write_text("name: x\nroles: {}\n")
    missing = troupe("export", str(run), str(tmp_path / "out"), "--step", "9")
    assert missing.returncode == 2
    assert "has no complete checkpoint of step 9 (complete checkpoints: step_3)" in missing.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    busy = troupe("export", str(run), str(tmp_path / "busy"))
    assert busy.returncode == 2 and "is not empty: choose another OUT_DIR or pass --overwrite" in busy.stderr
    not_a_run = troupe("export", str(tmp_path / "busy"), str(tmp_path / "out"))
    assert not_a_run.returncode == 2 and "is not a run directory" in not_a_run.stderr

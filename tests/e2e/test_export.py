"""`troupe export` and the export behind `Run.export`.

The export of a real run's checkpoints (the trainer sharded over two FSDP ranks)
against the trainer's own model is tested on the evaluation module's run
(tests/e2e/test_evaluation_runs.py, which uses `trainer_model_at` from here): the
reference for "the trainer's model at step N" is read without any troupe code, torch's
own converter turning the DCP checkpoint into a plain state dict loaded into a model
built from the initial config.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
)

from roles.checkpoints import write_marker
from tests.e2e.cli import troupe

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


def test_export_names_the_checkpoints_there_are_and_keeps_a_folder_that_is_in_use(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "step_3").mkdir(parents=True)
    (run / "checkpoints" / "step_3" / "trainer_meta.json").write_text("{}")
    write_marker(run / "checkpoints" / "step_3", {"step": 3, "sampler": {}, "kl_controller": {}, "version": 3, "prompt_counter": 3})
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

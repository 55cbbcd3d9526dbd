"""`troupe export --adapter` then `troupe serve` of the adapter directory, end to end: the
real commands (the export in this process), a real uvicorn server on a loopback port,
real HTTP.

The run is the tiny LoRA run of tests/unit/test_lora_export.py (a checkpoint laid out as
the trainer writes one); the served answers must be the merged model's.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from launch.cli import main as troupe_main
from launch.export import export_checkpoint
from roles.lora import trainable_state
from tests.e2e.test_serving import greedy_reference, troupe_serve
from tests.unit.test_lora_export import SETTINGS, build_base, trainer_adapter_model, write_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_troupe_serve_answers_from_an_exported_adapter_as_the_merged_export_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = build_base(tmp_path / "base")
    state = {name: tensor.clone() for name, tensor in trainable_state(trainer_adapter_model(base)).items()}
    run = write_run(tmp_path / "run", base, state, SETTINGS)
    assert troupe_main(["export", str(run), str(tmp_path / "adapter"), "--adapter"]) == 0
    assert "exported the adapter of" in capsys.readouterr().out
    merged = export_checkpoint(run, tmp_path / "merged")

    with troupe_serve([str(tmp_path / "adapter"), "--threads", "1"], tmp_path / "serve.log") as served:
        answer = served.post("/generate", {"prompt": "12+7=", "max_new_tokens": 8, "temperature": 0})
        assert answer.status_code == 200, answer.text
        assert answer.json()["response"] == greedy_reference(merged, "12+7=", 8)
        assert httpx.get(served.url + "/v1/models", timeout=10).json()["data"][0]["id"] == "adapter"

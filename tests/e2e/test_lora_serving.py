"""`troupe export --adapter` then `troupe serve` of the adapter directory, end to end: the
real commands (the export in this process), a real uvicorn server on a loopback port,
real HTTP.

The run is the tiny LoRA run of tests/unit/test_lora_export.py (a checkpoint laid out as
the trainer writes one); the served answers must be the merged model's.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from launch.cli import main as troupe_main
from launch.export import export_checkpoint
from roles.lora import trainable_state
from tests.e2e.cli import TROUPE, wait_for
from tests.e2e.test_serving import greedy_reference
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

    log = tmp_path / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([TROUPE, "serve", str(tmp_path / "adapter"), "--port", "0", "--threads", "1"],
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        found = wait_for(lambda: re.search(r"on (http://127\.0\.0\.1:\d+) ", log.read_text()) or process.poll(),
                         60, "the startup line")
        assert isinstance(found, re.Match), log.read_text()
        url = found.group(1)
        wait_for(lambda: httpx.get(url + "/ready", timeout=10).status_code == 200, 60, "GET /ready")
        answer = httpx.post(url + "/generate", json={"prompt": "12+7=", "max_new_tokens": 8, "temperature": 0},
                            timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["response"] == greedy_reference(merged, "12+7=", 8)
        assert httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"] == "adapter"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, log.read_text()[-3000:]

"""`troupe eval` on the GSM8K example's data reports correctness and format apart: the rows
are original GSM8K problems converted by examples/gsm8k/convert.py, the model the tiny
random Qwen2 of the example's own test, the reward ``--reward gsm8k`` (the answer method).
A random model answers nothing right; what is checked is that both terms reach the table,
summary.json and every sample of samples.jsonl, and that accuracy is the correctness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.cli import troupe
from tests.e2e.test_gsm8k_example import converted, tiny_model  # noqa: F401  (module fixtures)


@pytest.mark.timeout(300)
def test_troupe_eval_reports_correctness_and_format_separately(tiny_model: Path, converted: Path,  # noqa: F811
                                                              tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = troupe("eval", str(tiny_model), "--data", str(converted), "--reward", "gsm8k", "--max-new-tokens", "8",
                    "--temperature", "0", "--out", str(out), timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 20 and all(set(sample["terms"]) == {"correctness", "format"} for sample in samples)
    assert metrics["eval/correctness"] == sum(s["terms"]["correctness"] for s in samples) / len(samples)
    assert metrics["eval/format"] == sum(s["terms"]["format"] for s in samples) / len(samples)
    assert metrics["eval/accuracy"] == metrics["eval/correctness"]
    table_rows = {line.split("│")[1].strip() for line in result.stdout.splitlines() if line.count("│") >= 3}
    assert {"accuracy", "correctness", "format", "reward"} <= table_rows

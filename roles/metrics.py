"""Where a run's numbers go: one JSON object per step in ``metrics.jsonl`` and the same
values as TensorBoard scalars under ``tb/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends step records to ``<run_dir>/metrics.jsonl`` and TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))

    def write(self, step: int, values: dict[str, float]) -> dict[str, Any]:
        record: dict[str, Any] = {"step": step, **{name: _plain(value) for name, value in sorted(values.items())}}
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()
        return record

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    """Every record of a run's ``metrics.jsonl`` (a partly written last line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _plain(value: float) -> float:
    """A plain float (NaN and inf are kept: json writes them, and alerts look for them)."""
    return float(value)

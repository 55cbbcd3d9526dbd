"""Where a run's numbers go: one JSON object per step in ``metrics.jsonl`` and the same
values as TensorBoard scalars under ``tb/``, plus histograms, text and hyperparameters.

The controller and the evaluator role write to the same run: each record is appended
with a single ``write`` on a file opened for appending, so lines from two processes
never interleave; each process has its own TensorBoard event file in ``tb/``, which
TensorBoard reads as one run.

A run resumed from its checkpoint at step K first forgets what the stopped session
wrote after K (`rewind_metrics`), in both places, so every reader (`read_metrics`,
`troupe report` and `compare`, TensorBoard) sees one training row per step.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch

from runtime.files import replacing_atomically, write_atomically
from runtime.run_dir import RunDir


class MetricsLog:
    """Appends step records to ``<run_dir>/metrics.jsonl`` and TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.files = RunDir(run_dir)
        self.path = self.files.metrics
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.files.tensorboard))

    def write(self, step: int, values: Mapping[str, float], source: str | None = None) -> dict[str, Any]:
        """One record: ``{"step": N, ["source": ...,] name: value, ...}`` (names sorted)."""
        record: dict[str, Any] = {"step": step, **({"source": source} if source else {}),
                                  **{name: float(value) for name, value in sorted(values.items())}}
        line = (json.dumps(record) + "\n").encode("utf-8")  # NaN and inf are kept: alerts look for them
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()
        return record

    def histograms(self, step: int, values: Mapping[str, torch.Tensor]) -> None:
        """TensorBoard histograms (``hist/<name>``) of per-sample values; empty ones skipped."""
        if self.writer is None:
            return
        for name, tensor in values.items():
            finite = tensor.detach().float().flatten()
            finite = finite[torch.isfinite(finite)]
            if finite.numel():
                self.writer.add_histogram(f"hist/{name}", finite, step)
        self.writer.flush()

    def text(self, tag: str, markdown: str, step: int) -> None:
        """A markdown text entry (TensorBoard's text tab)."""
        if self.writer is not None:
            self.writer.add_text(tag, markdown, step)
            self.writer.flush()

    def hparams(self, hyperparameters: Mapping[str, Any], final: Mapping[str, float], step: int) -> None:
        """The run's hyperparameters with its final metrics (as ``final/<name>`` scalars),
        written into this run's own event file, so ``tensorboard --logdir runs`` lists
        every run in one HParams table."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"final/{name}": float(value) for name, value in final.items() if math.isfinite(value)}
        experiment, session_start, session_end = hparams(dict(hyperparameters), metrics)
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    """Every record of a run's ``metrics.jsonl`` (a partly written last line is skipped)."""
    path = RunDir(run_dir).metrics
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def is_training_record(record: Mapping[str, Any]) -> bool:
    """The controller's row of a training step (evaluations write rows of their own)."""
    return "train/reward" in record


def scheduled_evaluation_steps(records: list[dict[str, Any]]) -> set[int]:
    """Steps with a row of the controller's scheduled evaluation: written by the controller
    itself (no ``source``) or by the evaluator role (``source: evaluator``). Rows of the
    Python API's evaluators (``source: python-evaluators``) follow their own schedule."""
    return {int(r["step"]) for r in records if not is_training_record(r) and r.get("source") in (None, "evaluator")
            and any(name.startswith("eval/") for name in r)}


def rewind_metrics(run_dir: Path | str, step: int) -> list[dict[str, Any]]:
    """Forget what a run wrote after `step`, in ``metrics.jsonl`` and in ``tb/``; returns
    the records kept.

    A resumed run calls this with its checkpoint's step before anything writes again:
    the rows after it belong to a session that stopped (killed, crashed), and the
    resumed session writes them anew. Rows *at* `step` stay: its training row was written before the checkpoint,
    and an evaluation of `step` evaluated the very weights the checkpoint restores (the
    controller repeats it only when it is missing). A line cut short by the crash goes
    too. Kept lines are copied byte for byte; the file is replaced atomically.

    Nothing may be writing meanwhile: a relaunch starts every role anew, and the
    evaluator role writes only when the controller asks it to.
    """
    path = RunDir(run_dir).metrics
    kept: list[dict[str, Any]] = []
    if path.exists():
        text = path.read_text(encoding="utf-8")
        lines = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(record)
                lines.append(line + "\n")
        if "".join(lines) != text:
            write_atomically(path, "".join(lines))
    rewind_tensorboard(RunDir(run_dir).tensorboard, step)
    return kept


def rewind_tensorboard(tb_dir: Path, step: int) -> int:
    """Drop the events after `step` from every event file in `tb_dir`; returns how many.

    Files with no such event are left alone (among them the one a live evaluator role
    opened before the resume); the others are rewritten with the events kept, byte for
    byte, and replace the old file atomically. SummaryWriter's ``purge_step`` is not
    used: at its START event TensorBoard's loader purges every later point it has read
    so far, reading files in name (time) order, and the evaluator role's new event file
    is created before the controller's: its new points would be read first and purged.
    """
    if not tb_dir.is_dir():
        return 0
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    dropped = 0
    for path in sorted(tb_dir.rglob("events.out.tfevents.*")):
        events = list(RawEventFileLoader(str(path)).Load())  # a record cut short by the crash ends the list
        kept = [event for event in events if Event.FromString(event).step <= step]
        if len(kept) == len(events):
            continue
        with replacing_atomically(path) as partial, open(partial, "wb") as out:
            writer = RecordWriter(out)
            for event in kept:
                writer.write(event)
        dropped += len(events) - len(kept)
    return dropped


FINAL_METRICS = ("train/reward", "train/kl_div", "train/entropy", "train/response_length", "eval/accuracy", "eval/reward")
"""The numbers of a run that its TensorBoard HParams table shows, each at its last value."""


def final_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """The last value of each of FINAL_METRICS in a run's records (the HParams table's columns)."""
    final: dict[str, float] = {}
    for record in records:
        final.update({name: record[name] for name in FINAL_METRICS if isinstance(record.get(name), (int, float))})
    return final


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``a.b.c`` keys with values TensorBoard's HParams accepts
    (numbers, strings, booleans; lists and None as text)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


#: Settings that name places rather than choices; they differ between any two runs.
NOT_HYPERPARAMETERS = {"model", "tokenizer", "files", "hold_timeout_s", "startup_timeout_s",
                       "call_timeout_s", "channel", "tensorboard", "device", "cpu_threads"}


def run_hyperparameters(run_dir: Path | str) -> dict[str, Any]:
    """The settings of every role of a run (from its resolved ``topology.yaml``) as
    ``<role>.<setting>`` keys, without paths, timeouts and placement."""
    files = RunDir(run_dir)
    if not files.topology.exists():
        return {}
    resolved = files.read_topology() or {}
    settings: dict[str, Any] = {}
    for name, role in (resolved.get("roles") or {}).items():
        settings[f"{name}.count"] = role.get("count", 1)
        settings.update(flatten_config(_without(role.get("config") or {}), f"{name}."))
    return settings


def _without(config: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _without(value) if isinstance(value, Mapping) else value
            for key, value in config.items() if key not in NOT_HYPERPARAMETERS}


@asynccontextmanager
async def timed(timings: dict[str, float], name: str) -> AsyncIterator[None]:
    """``timings[name]``: the seconds the block took (a step logs it as ``timing/<name>_s``)."""
    started = time.monotonic()
    try:
        yield
    finally:
        timings[name] = time.monotonic() - started


async def timed_call(timings: dict[str, float], name: str, call: Awaitable[Any]) -> Any:
    """`call`'s result, its seconds in ``timings[name]``."""
    async with timed(timings, name):
        return await call

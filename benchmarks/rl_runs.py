"""Shared by the RL benchmarks: run a topology through `troupe launch` (the arithmetic
example, or a real Hugging Face model on chat prompts) and read back what it wrote,
with each role process's peak resident memory."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runtime.run_dir import RunDir

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "arith" / "data"


def ensure_data() -> Path:
    """The example's model and data (built once, as `make demo` does)."""
    if not (DATA / "build.json").exists():
        sys.path.insert(0, str(REPO))
        from examples.arith.build import build

        build(DATA)
    return DATA


def launch(run_dir: Path, overrides: list[str], topology: str | Path = "examples/arith-grpo.yaml",
           peak_rss: dict[str, int] | None = None) -> float:
    """Run the topology to its end; returns the wall seconds of the whole launch.

    With `peak_rss`, fills it with each role process's peak resident set size in bytes
    (Linux's VmHWM, read every half second while the run goes on), keyed by instance name.
    """
    command = [str(Path(sys.executable).parent / "troupe"), "launch", str(topology), "--run-dir", str(run_dir), "--no-status"]
    for override in overrides:
        command += ["--set", override]
    output = run_dir.with_name(run_dir.name + ".launch.log")  # a file, not a pipe: nobody drains a pipe while polling
    started = time.monotonic()
    with open(output, "w") as sink, subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT) as process:
        while process.poll() is None:
            if peak_rss is not None:
                peak_rss.update(role_peak_rss(process.pid, peak_rss))
            time.sleep(0.5)
    if process.returncode != 0:
        raise SystemExit(f"run failed ({process.returncode}):\n{output.read_text()[-6000:]}")
    return time.monotonic() - started


def role_peak_rss(launcher_pid: int, seen: dict[str, int]) -> dict[str, int]:
    """Peak RSS in bytes of every role process under the launcher, by instance name
    (the ``--name`` argument of ``python -m runtime.host``), at least what `seen` holds."""
    import psutil

    peaks = dict(seen)
    try:
        children = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return peaks
    for child in children:
        try:
            arguments = child.cmdline()
            status = Path(f"/proc/{child.pid}/status").read_text()
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError):
            continue  # it exited between the listing and the read: its last reading stands
        if "--name" not in arguments:
            continue
        name = arguments[arguments.index("--name") + 1]
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks[name] = max(peaks.get(name, 0), int(line.split()[1]) * 1024)
    return peaks


def real_model_topology(path: Path, model: Path, data: Path, prompts: int, samples: int, max_new_tokens: int,
                        reference: bool = True) -> Path:
    """Writes a GRPO topology for a local chat model on chat-format JSONL prompts whose
    answer is one number, graded however the response phrases it (reward
    ``final_number``, for every data source), every role its own process on the CPU;
    returns its path.

    The rows need ``messages`` and ``ground_truth`` (examples/smollm2/build.py's
    arithmetic rows are such). One
    on-policy update per batch (one epoch, one mini-batch), as TRL's GRPOTrainer does by
    default; with `reference`, a k3 KL loss at 0.001 against the initial model.
    """
    import yaml

    rows = prompts * samples
    roles: dict[str, Any] = {
        "controller": {"entry": "controller", "ends_run": True, "restart": {"policy": "never"}, "config": {
            "tokenizer": str(model), "data": {"files": [str(data)], "seed": 0}, "steps": 4,
            "prompts_per_step": prompts,
            "sampling": {"n": samples, "temperature": 1.0, "max_new_tokens": max_new_tokens},
            "advantage": {"type": "grpo"},
            "kl": {"usage": "loss", "estimator": "k3", "kl_controller": {"type": "fixed", "kl_coef": 0.001}}
            if reference else {"usage": "none"},
            "use_reference": reference, "mode": "sync", "checkpoint_every": 0, "resume": False,
        }},
        "generator": {"entry": "generator", "config": {"model": str(model)}},
        "trainer": {"entry": "trainer", "restart": {"policy": "never"}, "config": {
            "model": str(model), "optim": {"lr": 1.0e-5, "grad_clip": 1.0},
            "update": {"ppo_epochs": 1, "mini_batch_size": rows, "micro_batch_size": min(rows, 16)},
        }},
        "reward": {"entry": "reward", "config": {"rewards": {"default": {"type": "final_number"}}}},
    }
    if reference:
        roles["reference"] = {"entry": "reference", "config": {"model": str(model)}}
    topology = {"name": "real-model", "start": "together",
                "runtime": {"heartbeat_interval_s": 1.0, "heartbeat_timeout_s": 60.0}, "roles": roles}
    path.write_text(yaml.safe_dump(topology, sort_keys=False))
    return path


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]


def log_events(run_dir: Path) -> list[dict[str, Any]]:
    events = []
    for path in sorted(RunDir(run_dir).logs.glob("*.jsonl")):
        events += [json.loads(line) for line in path.read_text().splitlines()]
    return events


def machine() -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{platform.node()}  {os.cpu_count()} cpus  Python {platform.python_version()}  load {load}"

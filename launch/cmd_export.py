"""`troupe export RUN_DIR OUT_DIR [--step N] [--adapter]`: a run's policy as a Hugging
Face directory.

Gathers the trainer's (possibly sharded) checkpoint into safetensors, config, generation
config and the tokenizer with its chat template (`launch.export.export_checkpoint`, the
same as ``Run.export``); a LoRA run's adapter is merged into the base weights, or with
``--adapter`` written as a peft adapter directory on the base. ``troupe serve OUT_DIR``
serves either.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run directory (it holds checkpoints/)")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="the Hugging Face directory to write")
    parser.add_argument("--step", type=int, default=None, metavar="N",
                        help="export checkpoints/step_N (default: the newest complete checkpoint)")
    parser.add_argument("--overwrite", action="store_true", help="write into OUT_DIR even if it is not empty")
    parser.add_argument("--adapter", action="store_true",
                        help="a LoRA run: write its adapter as a peft adapter directory on the trainer's base model "
                             "(default: merge it into the base weights and write the whole model)")


def run(args: argparse.Namespace) -> int:
    from runtime.run_dir import RunDir

    files = RunDir(args.run_dir)
    if not files.is_run_dir():
        return _fail(f"{args.run_dir} is not a run directory (no topology.yaml): give runs/<run>")
    if args.out_dir.exists() and any(args.out_dir.iterdir()) and not args.overwrite:
        return _fail(f"{args.out_dir} is not empty: choose another OUT_DIR or pass --overwrite")
    steps = _complete_steps(args.run_dir)
    if (args.step is None and not steps) or (args.step is not None and args.step not in steps):
        missing = "no complete checkpoint" if args.step is None else f"no complete checkpoint of step {args.step}"
        listed = ", ".join(files.checkpoint(step).name for step in steps) or "none"
        return _fail(f"{args.run_dir} has {missing} (complete checkpoints: {listed})")

    from transformers.utils import logging as transformers_logging

    from launch.export import ExportError, export_checkpoint

    transformers_logging.disable_progress_bar()  # one small model: the bars are noise
    try:
        out = export_checkpoint(args.run_dir, args.out_dir, args.step, adapter=args.adapter)
    except ExportError as error:  # e.g. the topology has no trainer role, or --adapter for a run without LoRA
        return _fail(str(error))
    what = "the adapter of " if args.adapter else ""
    print(f"exported {what}{args.run_dir} ({_checkpoint_name(out)}) to {out}")
    print(f"  serve it: troupe serve {out}")
    return 0


def _complete_steps(run_dir: Path) -> list[int]:
    """Steps whose checkpoint is complete and intact (roles.checkpoints' rule, as resume's)."""
    from roles.checkpoints import intact_checkpoints
    from runtime.run_dir import step_of

    return [step for step in map(step_of, intact_checkpoints(run_dir)) if step is not None]


def _checkpoint_name(out: Path) -> str:
    import json

    return json.loads((out / "troupe_export.json").read_text())["checkpoint"]


def _fail(message: str) -> int:
    print(f"troupe export: {message}", file=sys.stderr)
    return 2

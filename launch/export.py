"""A run's policy as a Hugging Face directory, from its trainer checkpoint.

The trainer saves its (possibly FSDP-sharded) model with torch.distributed.checkpoint;
loading that into the initial model's full tensors reshards it, in one process, with
no process group. The result is written with ``save_pretrained`` (safetensors, config,
generation config) next to the tokenizer with its chat template.

A LoRA run (the trainer's config has ``lora``, roles.lora) checkpoints its adapter
alone: the policy is the trainer's base model directory wrapped with peft and the
checkpoint's adapter loaded into it. By default it is merged into the base weights
(a plain transformers model, as fast as the base); ``adapter=True`` writes a peft adapter
directory instead (``adapter_config.json`` naming the base directory by its absolute
path, ``adapter_model.safetensors``), a few megabytes that ``peft`` loads onto the base.

Which checkpoint is usable is roles.checkpoints' rule (the one resume follows); its
DCP index is read with an allow-list (runtime.checkpoint_reader), never unpickled freely.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from roles.checkpoints import checkpoint_problem, newest_intact_checkpoint
from roles.lora import ADAPTER_NAME, LoraSettings, trainable_state, wrap_model
from runtime.checkpoint_reader import load_distributed_checkpoint
from runtime.run_dir import RunDir


class ExportError(RuntimeError):
    """The run has no checkpoint to export, or not the one asked for."""


def checkpoint_path(run_dir: Path, step: int | None = None) -> Path:
    """The run's newest complete (intact) checkpoint, or `step`'s; a newer one that is
    damaged is passed over with a warning that names it and its file."""
    if step is None:
        checkpoint, skipped = newest_intact_checkpoint(run_dir)
        for damaged in skipped:
            warnings.warn(f"checkpoint {damaged}; using an older one", stacklevel=2)
        if checkpoint is None:
            found = "; ".join(map(str, skipped)) or "none (checkpoints/step_N with controller.json)"
            raise ExportError(f"{run_dir} has no complete checkpoint: {found}")
        return checkpoint
    checkpoint = RunDir(run_dir).checkpoint(step)
    problem = checkpoint_problem(checkpoint) if checkpoint.is_dir() else "there is no such folder"
    if problem is not None:
        raise ExportError(f"{checkpoint} is not a complete checkpoint: {problem}")
    return checkpoint


def load_checkpoint_policy(run_dir: Path | str, step: int | None = None,
                           merge: bool = True) -> tuple[Any, Any, Path, int]:
    """The policy of `run_dir`'s newest checkpoint (or `step`'s), in this process:
    (model, tokenizer, checkpoint folder, weights version).

    For a LoRA run the model is the base with the checkpoint's adapter merged into its
    weights, or with ``merge=False`` the peft model that carries the adapter (what
    ``save_pretrained`` writes as an adapter directory). A run without LoRA has one
    model either way."""
    from roles.generation import load_causal_lm

    run_dir = Path(run_dir)
    checkpoint = checkpoint_path(run_dir, step)
    trainer = _trainer_config(run_dir)
    settings = lora_settings(trainer)
    model, tokenizer = load_causal_lm(trainer["model"], trainer.get("dtype", "float32"), "cpu")
    if settings is not None:
        model = wrap_model(model, settings).eval()  # new adapter layers start in training mode (dropout)
    # with an adapter the checkpoint's model is the adapter alone, under peft's names
    state = {"model": trainable_state(model) if settings is not None else model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        load_distributed_checkpoint(state, checkpoint / "trainer")
    model.load_state_dict(state["model"], strict=settings is None)
    if settings is not None and merge:
        model = model.merge_and_unload()
    version = json.loads((checkpoint / "trainer_meta.json").read_text())["version"]
    return model, tokenizer, checkpoint, version


def export_checkpoint(run_dir: Path | str, out_dir: Path | str, step: int | None = None,
                      adapter: bool = False) -> Path:
    """Write the policy of `run_dir`'s newest checkpoint (or `step`'s) to `out_dir`: a
    Hugging Face model directory, or with `adapter` (a LoRA run only) a peft adapter
    directory on the trainer's base model. Either gets the tokenizer and
    ``troupe_export.json`` (where it came from)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    trainer = _trainer_config(run_dir)
    if adapter and lora_settings(trainer) is None:
        raise ExportError(f"{run_dir} trained every weight of its model (the trainer's config has no lora), so it "
                          "has no adapter to export: drop --adapter to export the model")
    model, tokenizer, checkpoint, version = load_checkpoint_policy(run_dir, step, merge=not adapter)
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"run_dir": str(run_dir), "checkpoint": checkpoint.name, "weights_version": version,
                              "format": "adapter" if adapter else "model"}
    if adapter:
        base = str(Path(trainer["model"]).resolve())
        model.peft_config[ADAPTER_NAME].base_model_name_or_path = base  # absolute: the adapter may move, the base not
        record["base_model"] = base
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "troupe_export.json").write_text(json.dumps(record))
    return out_dir


def lora_settings(trainer: dict[str, Any]) -> LoraSettings | None:
    """The adapter a run's trainer trains (its config's ``lora``), or None."""
    settings = trainer.get("lora")
    return None if settings is None else LoraSettings.model_validate(settings)


def _trainer_config(run_dir: Path) -> dict:
    config = RunDir(run_dir).role_config("trainer", "roles.trainer:Trainer")
    if config is not None:
        return config
    raise ExportError(f"{RunDir(run_dir).topology} has no trainer role")

"""Checkpoints: their layout, when one is whole, and where checkpoint messages may point.

The one owner of these rules; the controller's resume, `troupe export`, `Run.export`
and `troupe eval` all ask this module. A checkpoint is a folder
``<run_dir>/checkpoints/step_N``::

    trainer/            the policy and its optimizer (torch.distributed.checkpoint:
                        one ``*.distcp`` shard per trainer rank and the ``.metadata`` index)
    trainer_meta.json   weights version, optimizer steps, LR scheduler (trainer rank 0)
    critic.pt           the critic's model, optimizer and scheduler (PPO with GAE only)
    controller.json     the marker: the controller's state, and the size of every other file

Saving (`Controller.save_checkpoint`): the marker is removed first, the roles write
their files (each atomically or, for DCP's shards, checked by size), and only when
every role has answered is the marker written, atomically, listing each file's size.
So a checkpoint is *intact* when its marker parses, is of its folder's step, and every
file it lists has that size. Anything else (no marker: the save never finished; an
empty or cut marker; a missing or truncated file) is a `SkippedCheckpoint` whose
problem names the file, and `newest_intact_checkpoint` goes on to the next older one.

Paths in messages (`confine_checkpoint_path`): a role saves or loads only a folder
``checkpoints/step_N`` of its own run directory, after symlinks and ``..`` are
resolved. A checkpoint is still trusted input in what it holds (weights, sizes); it
cannot carry code: JSON, ``torch.load(weights_only=True)`` and DCP's index read with
an allow-list (runtime.checkpoint_reader). docs/rl.md says what that leaves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from runtime.files import write_atomically
from runtime.run_dir import STEP_PREFIX, RunDir, step_of

MARKER = "controller.json"
CONTROLLER_KEYS = ("step", "sampler", "kl_controller", "version", "prompt_counter")
"""What the marker holds besides ``files``: the controller's state at the step."""
REQUIRED_WITHOUT_LIST = ("trainer/.metadata", "trainer_meta.json")
"""Checked by presence when a marker has no file list (written before troupe listed them)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the text names the folder and the file."""


class CheckpointPathError(CheckpointError):
    """A checkpoint message named a path outside the run's checkpoints/ folder."""


@dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint passed over, and why."""

    folder: Path
    problem: str
    """Begins with the file it is about, relative to `folder` (``controller.json is empty``)."""
    finished: bool = True
    """False: no marker, the save was cut short (what a stop mid-save leaves); True: the
    marker is there, and the checkpoint is damaged all the same."""

    def __str__(self) -> str:
        return f"{self.folder}: {self.problem}"


def listed_files(folder: Path) -> dict[str, int]:
    """Every file under `folder` but the marker and unfinished temporaries, as POSIX
    path relative to `folder` -> size in bytes (what the marker lists)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MARKER and not path.name.endswith((".partial", ".tmp")):
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    return files


# ---------------------------------------------------------------------- the marker
def write_marker(folder: Path, state: Mapping[str, Any]) -> None:
    """Mark `folder` complete: the controller's `state` and the size of every file in it.
    Call after every role has written its files."""
    write_atomically(folder / MARKER, json.dumps({**state, "files": listed_files(folder)}))


def remove_marker(folder: Path) -> None:
    """Mark `folder` incomplete (before the roles write into it again)."""
    (folder / MARKER).unlink(missing_ok=True)


def read_marker(folder: Path) -> dict[str, Any]:
    """The controller's state saved in an intact checkpoint (without the file list).

    Raises:
        CheckpointError: the checkpoint is not intact; the text names the file.
    """
    marker, problem = _inspect(folder)
    if problem is not None:
        raise CheckpointError(f"{folder}/{problem}")
    assert marker is not None  # _inspect gives one or the other
    return {key: value for key, value in marker.items() if key != "files"}


def checkpoint_problem(folder: Path) -> str | None:
    """What keeps `folder` from being an intact checkpoint (None: nothing)."""
    return _inspect(folder)[1]


def _inspect(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = folder / MARKER
    if not path.is_file():
        return None, f"{MARKER} is missing: the save did not finish"
    text = path.read_bytes()
    if not text.strip():
        return None, f"{MARKER} is empty"
    try:
        marker = json.loads(text)
    except ValueError as error:
        return None, f"{MARKER} is not valid JSON (cut short?): {error}"
    if not isinstance(marker, dict):
        return None, f"{MARKER} is not a JSON object"
    missing = [key for key in CONTROLLER_KEYS if key not in marker]
    if missing:
        return None, f"{MARKER} lacks {', '.join(missing)}"
    if marker["step"] != step_of(folder):
        return None, f"{MARKER} is of step {marker['step']}, not of its folder's step {step_of(folder)}"
    files = marker.get("files")
    if files is None:
        return marker, _required_problem(folder)
    if not isinstance(files, dict) or not all(isinstance(size, int) for size in files.values()):
        return None, f"{MARKER}'s file list is not a mapping of names to sizes"
    for name, size in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            return None, f"{MARKER} lists {name!r}, which is not a file of the folder"
        file = folder / relative
        if not file.is_file():
            return None, f"{name} is missing ({MARKER} lists {size} bytes)"
        if file.stat().st_size != size:
            return None, f"{name} has {file.stat().st_size} bytes, {MARKER} lists {size} (cut short or rewritten)"
    return marker, None


def _required_problem(folder: Path) -> str | None:
    for name in REQUIRED_WITHOUT_LIST:
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size == 0:
            return f"{name} is empty"
    return None


# ---------------------------------------------------------------------- choosing one
def _step_folders(run_dir: Path | str) -> list[Path]:
    """Every ``step_N`` folder of the run, newest (highest N) first."""
    root = RunDir(run_dir).checkpoints
    folders = [path for path in root.glob(f"{STEP_PREFIX}*") if path.is_dir() and step_of(path) is not None] if root.is_dir() else []
    return sorted(folders, key=lambda path: step_of(path) or 0, reverse=True)


def newest_intact_checkpoint(run_dir: Path | str) -> tuple[Path | None, list[SkippedCheckpoint]]:
    """The newest intact checkpoint of a run (None: there is none), and every newer one
    passed over with its problem (newest first): the caller warns about those."""
    skipped = []
    for folder in _step_folders(run_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append(SkippedCheckpoint(folder, problem, (folder / MARKER).exists()))
    return None, skipped


def intact_checkpoints(run_dir: Path | str) -> list[Path]:
    """Every intact checkpoint of a run, oldest first."""
    return [folder for folder in reversed(_step_folders(run_dir)) if checkpoint_problem(folder) is None]


# ---------------------------------------------------------------------- paths in messages
def confine_checkpoint_path(run_dir: Path | None, requested: str | Path) -> Path:
    """The checkpoint folder a `SaveCheckpoint` / `LoadCheckpoint` names, resolved, if it
    is a folder ``step_N`` directly inside the run's checkpoints/ folder.

    Both sides are resolved first (symlinks, ``..``), so neither can lead outside.
    checkpoints/ itself may be a symlink (to keep checkpoints on another disk): only the
    run directory's owner can make one.

    Raises:
        CheckpointPathError: `run_dir` is None, or the path resolves anywhere else.
    """
    if run_dir is None:
        raise CheckpointPathError(
            f"checkpoint path {requested} refused: this role has no run directory, and checkpoints are only "
            "read and written in <run_dir>/checkpoints/step_N (start it with a run directory)"
        )
    root = Path(os.path.realpath(RunDir(run_dir).checkpoints))
    resolved = Path(os.path.realpath(requested))
    if resolved.parent != root or step_of(resolved) is None:
        raise CheckpointPathError(
            f"checkpoint path {requested} refused: checkpoint messages may only name a folder checkpoints/step_N "
            f"of the run directory {run_dir} (the path resolves to {resolved}; symlinks and '..' are followed first)"
        )
    return resolved

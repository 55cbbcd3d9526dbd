"""The controller's side of checkpoints (roles/controller_checkpoints.py): the roles
write their files before the marker, and a resume loads the newest intact one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocols.rl import CheckpointDone, LoadCheckpoint, SaveCheckpoint
from roles.checkpoints import MARKER, CheckpointError, read_marker
from roles.controller_checkpoints import restore_newest, save_checkpoint

STATE = {"sampler": {"epoch": 0, "position": 8, "size": 64}, "kl_controller": {"kl_coef": 0.01}, "version": 3,
         "prompt_counter": 2}


class Trainer:
    """What a trainer rank does with checkpoint messages, on files (its own state: a version)."""

    def __init__(self, version: int = 3) -> None:
        self.version = version
        self.received: list[Any] = []

    async def ask(self, request: Any) -> list[Any]:
        self.received.append(request)
        folder = Path(request.path)
        if isinstance(request, SaveCheckpoint):
            assert not (folder / MARKER).exists(), "the marker must be written after the roles' files"
            (folder / "trainer").mkdir(exist_ok=True)
            (folder / "trainer" / ".metadata").write_bytes(b"m" * 10)
            (folder / "trainer_meta.json").write_text(json.dumps({"version": self.version}))
        elif isinstance(request, LoadCheckpoint):
            self.version = json.loads((folder / "trainer_meta.json").read_text())["version"]
        return [CheckpointDone(request.path, self.version)]


async def test_a_saved_step_is_restored_with_the_controllers_state_and_the_trainers_version(tmp_path: Path) -> None:
    trainer = Trainer(version=3)
    path = await save_checkpoint(tmp_path, 4, {**STATE, "step": 4}, trainer.ask)

    assert read_marker(path) == {**STATE, "step": 4}
    events: list[str] = []
    restored = await restore_newest(tmp_path, Trainer(version=0).ask, lambda event, **fields: events.append(event))

    assert restored is not None
    assert (restored.path, restored.state, restored.trainer_version) == (path, {**STATE, "step": 4}, 3)
    assert events == []


async def test_a_save_cut_short_is_skipped_with_a_warning_for_the_older_intact_one(tmp_path: Path, capsys) -> None:
    trainer = Trainer()
    older = await save_checkpoint(tmp_path, 2, {**STATE, "step": 2}, trainer.ask)
    cut_short = await save_checkpoint(tmp_path, 4, {**STATE, "step": 4}, trainer.ask)
    (cut_short / MARKER).unlink()
    events: list[tuple[str, dict[str, Any]]] = []

    restored = await restore_newest(tmp_path, trainer.ask, lambda event, **fields: events.append((event, fields)))

    assert restored is not None and restored.path == older
    assert [event for event, _ in events] == ["controller.checkpoint_skipped"]
    assert "controller.json is missing" in events[0][1]["problem"]
    assert "resuming from an older one" in capsys.readouterr().err


async def test_a_fresh_run_has_nothing_to_restore_and_asks_no_role(tmp_path: Path) -> None:
    trainer = Trainer()

    assert await restore_newest(tmp_path, trainer.ask, lambda event, **fields: None) is None
    assert trainer.received == []


async def test_only_damaged_finished_checkpoints_refuse_to_start_over(tmp_path: Path) -> None:
    path = await save_checkpoint(tmp_path, 2, {**STATE, "step": 2}, Trainer().ask)
    (path / "trainer_meta.json").write_text("{}")  # another size than the marker lists

    with pytest.raises(CheckpointError, match="no intact checkpoint to resume from .*config.resume=false"):
        await restore_newest(tmp_path, Trainer().ask, lambda event, **fields: None)

"""What a complete, intact checkpoint is (roles/checkpoints.py), and where checkpoint
messages may point: the one rule the controller's resume, `troupe export`, `Run.export`
and `troupe eval` all use."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from roles.checkpoints import (
    CheckpointError,
    CheckpointPathError,
    confine_checkpoint_path,
    intact_checkpoints,
    newest_intact_checkpoint,
    read_marker,
    remove_marker,
    write_marker,
)
from runtime.files import replacing_atomically, write_atomically
from runtime.run_dir import RunDir

STATE = {"sampler": {"epoch": 0, "position": 8, "size": 64}, "kl_controller": {"kl_coef": 0.01}, "version": 0,
         "prompt_counter": 2}


def save(run_dir: Path, step: int, shard: bytes = b"x" * 100) -> Path:
    """A checkpoint as the controller leaves one: the roles' files, then the marker."""
    folder = RunDir(run_dir).checkpoint(step)
    (folder / "trainer").mkdir(parents=True)
    (folder / "trainer" / ".metadata").write_bytes(b"m" * 10)
    (folder / "trainer" / "__0_0.distcp").write_bytes(shard)
    (folder / "trainer_meta.json").write_text(json.dumps({"version": step}))
    write_marker(folder, {**STATE, "step": step, "version": step})
    return folder


def test_the_newest_intact_checkpoint_is_used_and_its_state_read_back(tmp_path: Path) -> None:
    save(tmp_path, 2)
    newest = save(tmp_path, 10)  # 10 > 2 numerically, though "10" < "2" as text
    found, skipped = newest_intact_checkpoint(tmp_path)
    assert found == newest and skipped == []
    assert read_marker(newest) == {**STATE, "step": 10, "version": 10}
    assert intact_checkpoints(tmp_path) == [RunDir(tmp_path).checkpoint(2), newest]


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda folder: (folder / "controller.json").write_text(""), "controller.json is empty"),
    (lambda folder: (folder / "controller.json").write_text('{"step": 4, "sam'), "controller.json is not valid JSON"),
    (lambda folder: (folder / "controller.json").unlink(), "controller.json is missing"),
    (lambda folder: (folder / "trainer" / "__0_0.distcp").write_bytes(b"x" * 7),
     "trainer/__0_0.distcp has 7 bytes, controller.json lists 100"),
    (lambda folder: (folder / "trainer_meta.json").unlink(), "trainer_meta.json is missing"),
    (lambda folder: (folder / "controller.json").write_text(json.dumps({**STATE, "step": 3, "files": {}})),
     "controller.json is of step 3"),
])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_newest_intact_one_naming_the_file(tmp_path, damage, problem) -> None:
    intact = save(tmp_path, 2)
    damaged = save(tmp_path, 4)
    damage(damaged)
    found, skipped = newest_intact_checkpoint(tmp_path)
    assert found == intact
    assert [entry.folder for entry in skipped] == [damaged]
    assert problem in skipped[0].problem
    assert str(damaged) in str(skipped[0])  # the warning names the checkpoint and the file
    assert intact_checkpoints(tmp_path) == [intact]


def test_reading_a_damaged_marker_raises_an_error_that_names_the_file(tmp_path: Path) -> None:
    folder = save(tmp_path, 1)
    (folder / "controller.json").write_text("")
    with pytest.raises(CheckpointError, match=r"step_1/controller.json is empty"):
        read_marker(folder)


def test_when_every_checkpoint_is_damaged_there_is_none_to_resume_and_each_is_named(tmp_path: Path) -> None:
    first, second = save(tmp_path, 1), save(tmp_path, 2)
    (first / "controller.json").write_text("")
    (second / "trainer" / "__0_0.distcp").unlink()
    found, skipped = newest_intact_checkpoint(tmp_path)
    assert found is None
    assert [entry.folder for entry in skipped] == [second, first]  # newest first


def test_a_run_without_checkpoints_has_none_and_nothing_is_skipped(tmp_path: Path) -> None:
    assert newest_intact_checkpoint(tmp_path) == (None, [])
    (tmp_path / "checkpoints" / "notes").mkdir(parents=True)  # not a step folder: not a checkpoint
    assert newest_intact_checkpoint(tmp_path) == (None, [])


def test_a_folder_being_rewritten_has_no_marker_until_its_files_are_listed_again(tmp_path: Path) -> None:
    folder = save(tmp_path, 2)
    remove_marker(folder)  # the controller does this before the roles write into the folder again
    assert newest_intact_checkpoint(tmp_path)[0] is None
    (folder / "trainer" / "__0_0.distcp").write_bytes(b"y" * 300)  # a new size
    write_marker(folder, {**STATE, "step": 2})
    assert newest_intact_checkpoint(tmp_path) == (folder, [])


def test_an_atomic_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "critic.pt"
    write_atomically(target, b"old")
    with pytest.raises(OSError, match="disk full"):
        with replacing_atomically(target) as partial:
            partial.write_bytes(b"half of the new")
            raise OSError("disk full")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["critic.pt"]
    write_atomically(target, "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["critic.pt"]


# ---------------------------------------------------------------------- where messages may point
def test_checkpoint_paths_inside_the_runs_checkpoints_folder_are_accepted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "step_3").mkdir(parents=True)
    assert confine_checkpoint_path(run, str(run / "checkpoints" / "step_3")) == (run / "checkpoints" / "step_3").resolve()
    assert confine_checkpoint_path(run, str(run / "checkpoints" / "step_4")).name == "step_4"  # not made yet: a save


def test_a_checkpoints_folder_the_owner_linked_to_another_disk_is_followed(tmp_path: Path) -> None:
    run, scratch = tmp_path / "run", tmp_path / "scratch"
    run.mkdir()
    scratch.mkdir()
    (run / "checkpoints").symlink_to(scratch)
    assert confine_checkpoint_path(run, str(run / "checkpoints" / "step_1")) == scratch.resolve() / "step_1"


@pytest.mark.parametrize("requested", [
    "{elsewhere}/step_1",                       # another folder altogether
    "{run}/checkpoints/step_1/../../../elsewhere/step_1",  # '..' out of the run
    "{run}/checkpoints/linked",                 # a symlink in checkpoints/ to elsewhere
    "{run}/checkpoints/step_5",                 # the same, named like a step
    "{run}/checkpoints",                        # the folder itself
    "{run}/checkpoints/step_1/trainer",         # deeper than a step folder
    "{run}/topology.yaml",                      # inside the run, outside checkpoints/
])
def test_checkpoint_paths_that_resolve_outside_the_runs_checkpoints_folder_are_refused(tmp_path: Path, requested: str) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (run / "checkpoints" / "step_1").mkdir(parents=True)
    (elsewhere / "step_1").mkdir(parents=True)
    (run / "checkpoints" / "linked").symlink_to(elsewhere / "step_1")
    (run / "checkpoints" / "step_5").symlink_to(elsewhere / "step_1")
    path = requested.format(run=run, elsewhere=elsewhere)
    with pytest.raises(CheckpointPathError, match=r"refused: .* only .*checkpoints/step_N") as error:
        confine_checkpoint_path(run, path)
    assert path in str(error.value)


def test_an_actor_without_a_run_directory_refuses_every_checkpoint_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointPathError, match="no run directory"):
        confine_checkpoint_path(None, str(tmp_path / "checkpoints" / "step_1"))

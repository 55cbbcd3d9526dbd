"""`troupe validate` and `troupe launch` refuse the same unrunnable topologies, and say why in one line each."""

from __future__ import annotations

from pathlib import Path

import yaml

from launch.cli import main

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def grpo_without_trainer(tmp_path: Path) -> Path:
    raw = yaml.safe_load((EXAMPLES / "arith-grpo.yaml").read_text())
    del raw["roles"]["trainer"]
    path = tmp_path / "no-trainer.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_validate_names_the_missing_trainer_and_exits_1(tmp_path, capsys):
    assert main(["validate", str(grpo_without_trainer(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert "1 problem\n" in err
    assert "roles: the controller role 'controller' needs a role named 'trainer' (1 instance)" in err


def test_launch_refuses_a_controller_without_a_trainer_before_starting_anything(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["launch", str(grpo_without_trainer(tmp_path)), "--run-dir", str(run_dir), "--no-status"]) == 2
    assert "needs a role named 'trainer'" in capsys.readouterr().err
    assert not run_dir.exists()


def test_validate_answers_a_file_that_is_not_utf8_with_one_line_and_exit_code_2(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: café\nroles: {}\n".encode("latin-1"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"troupe validate: {path}: line 1 is not UTF-8 text (byte 0xe9); save the file as UTF-8"]


def test_validate_answers_a_missing_file_or_a_list_with_exit_code_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the file" in capsys.readouterr().err
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    assert main(["validate", str(listing)]) == 2
    assert "a topology file is a YAML mapping" in capsys.readouterr().err


def test_validate_refuses_two_trainers_with_a_written_rank_count_naming_the_field(tmp_path, capsys):
    raw = yaml.safe_load((EXAMPLES / "arith-grpo.yaml").read_text())
    raw["roles"]["trainer"]["count"] = 2
    raw["roles"]["controller"]["config"]["trainer_ranks"] = 1  # once a hang: trainer-1 waited for rank 0 forever
    path = tmp_path / "two-trainers.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "1 problem\n" in err
    assert "roles.controller.config.trainer_ranks: 1, but it is derived from roles.trainer.count (2" in err
    del raw["roles"]["controller"]["config"]["trainer_ranks"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["validate", str(path)]) == 0
    assert "trainer x2" in capsys.readouterr().out

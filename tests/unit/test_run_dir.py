"""The run directory's layout has one owner: runtime.run_dir.RunDir. Every other
module asks it for a path instead of spelling one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from runtime.run_dir import RunDir, step_of
from runtime.run_info import RunDirError, RunInfo

REPO = Path(__file__).resolve().parents[2]
OWNERS = {"runtime/run_dir.py", "runtime/run_info.py"}
"""The modules that may name the run directory's files."""
RUN_DIR_NAMES = {"logs", "registry.json", "metrics.jsonl", "tb", "eval", "checkpoints", "controller.json",
                 "topology.yaml", "keys", "secret", "launcher.log"}
"""Files and folders of a run directory (RunDir's docstring lists them)."""


def test_every_path_is_inside_the_run_directory(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.message_log("controller-0") == tmp_path / "run" / "logs" / "controller-0.jsonl"
    assert run.stderr_log("trainer-1") == tmp_path / "run" / "logs" / "trainer-1.stderr"
    assert run.checkpoint(12) == tmp_path / "run" / "checkpoints" / "step_12"
    assert run.eval_samples(3) == tmp_path / "run" / "eval" / "step_3.jsonl"
    assert run.secret.parent == run.keys and run.registry_file.parent == run.path
    assert RunDir(run) == run and str(run) == str(tmp_path / "run")


def test_evaluated_steps_are_read_from_the_eval_folder_in_step_order(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.evaluated_steps() == []
    run.evaluations.mkdir()
    for name in ("step_10.jsonl", "step_2.jsonl", "cli_step_4", "step_x.jsonl", "notes.txt"):
        (run.evaluations / name).write_text("")
    assert run.evaluated_steps() == [2, 10]


def test_step_of_reads_only_step_n_names() -> None:
    assert step_of("step_7") == 7 and step_of(Path("/a/checkpoints/step_0")) == 0
    assert step_of("step_") is None and step_of("cli_step_3") is None and step_of("step_-1") is None


def test_a_folder_without_a_topology_is_not_a_run_directory(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert not run.is_run_dir()
    with pytest.raises(RunDirError, match="not a run directory"):
        run.read_topology()
    run.topology.write_text("roles:\n  t: {entry: trainer, config: {lr: 1}}\n  r: {entry: reward, config: {}}\n")
    assert run.is_run_dir()
    assert run.role_config("trainer", "roles.trainer:Trainer") == {"lr": 1}
    assert run.role_config("critic") is None


def test_run_info_round_trips_through_registry_json(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    info = RunInfo(run="r", registry="tcp://127.0.0.1:1", supervisor="tcp://127.0.0.1:2", launcher_pid=1, host="h", started_at=0.0)
    run.write_info(info)
    assert run.read_info() == info and run.registry_file.exists()


def run_dir_literals(path: Path, root: Path = REPO) -> list[str]:
    """``something / "logs"``-style joins, ``Path(..., "logs")``, and names built as
    ``f"step_{n}"`` in one module (named relative to `root`)."""
    name = path.relative_to(root)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value in RUN_DIR_NAMES:
                    found.append(f"{name}:{node.lineno}: / {side.value!r}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Path":
            for argument in node.args:
                if isinstance(argument, ast.Constant) and argument.value in RUN_DIR_NAMES:
                    found.append(f"{name}:{node.lineno}: Path(..., {argument.value!r})")
        elif isinstance(node, ast.JoinedStr):  # a name built as f"step_{n}" (a message may mention eval/step_N)
            for part, following in zip(node.values, node.values[1:]):
                built = isinstance(part, ast.Constant) and isinstance(following, ast.FormattedValue)
                if built and str(part.value).split(" ")[-1] in ("step_", "/step_"):
                    found.append(f"{name}:{node.lineno}: f-string {part.value!r}")
    return found


def test_no_module_outside_run_dir_spells_a_run_directory_path() -> None:
    modules = [path for layer in ("protocols", "runtime", "roles", "launch") for path in sorted((REPO / layer).rglob("*.py"))
               if str(path.relative_to(REPO)) not in OWNERS]
    assert [literal for path in modules for literal in run_dir_literals(path)] == []


def test_the_literal_check_sees_joins_paths_and_step_strings_and_nothing_else(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('a = run / "logs" / name\nb = Path(run, "metrics.jsonl")\nc = f"step_{n}"\n'
                     'd = run / "data"\ne = f"read eval/step_{n}.jsonl"\n')
    assert sorted(run_dir_literals(probe, tmp_path)) == [
        "probe.py:1: / 'logs'", "probe.py:2: Path(..., 'metrics.jsonl')", "probe.py:3: f-string 'step_'",
    ]

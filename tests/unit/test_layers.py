"""The layers point one way: protocols <- runtime <- roles <- launch. A module may
import its own layer and the ones below it, never one above (checked on the source,
imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["protocols", "runtime", "roles", "launch"]


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports, anywhere in its source."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_no_module_imports_a_layer_above_its_own(layer: str) -> None:
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    wrong = {str(path.relative_to(REPO)): sorted(imported_packages(path) & above)
             for path in sorted((REPO / layer).rglob("*.py"))}
    assert {path: packages for path, packages in wrong.items() if packages} == {}


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text("def f():\n    from launch.rundir import read_run_info\n    import roles.trainer\n")
    assert imported_packages(module) == {"launch", "roles"}

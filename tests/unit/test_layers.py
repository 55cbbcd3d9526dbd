"""The layers point one way: protocols <- runtime <- roles <- launch. A module may
import its own layer and the ones below it, never one above (checked on the source,
imports inside functions included)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["protocols", "runtime", "roles", "launch"]


def imported_modules(path: Path) -> set[str]:
    """Every module a file names in an import, anywhere in its source, in full: ``from a.b
    import c`` names ``a.b`` and ``a.b.c`` (``c`` may be a module: ``from torch import distributed``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports, anywhere in its source."""
    return {name.split(".")[0] for name in imported_modules(path)}


def imports_where(paths: Iterable[Path], wrong: Callable[[str], bool]) -> dict[str, list[str]]:
    """Per file (relative to the repository) that has any, the modules it imports that are ``wrong``."""
    found = {str(path.relative_to(REPO)): sorted(filter(wrong, imported_modules(path))) for path in paths}
    return {path: modules for path, modules in found.items() if modules}


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_no_module_imports_a_layer_above_its_own(layer: str) -> None:
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    assert imports_where(sorted((REPO / layer).rglob("*.py")), lambda name: name.split(".")[0] in above) == {}


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text("def f():\n    from launch.rundir import read_run_info\n    import roles.trainer\n")
    assert imported_packages(module) == {"launch", "roles"}


# Pure libraries under roles/ do no I/O and start no process (STYLE.md, habit 1): the
# math they hold tests on a CPU in milliseconds. What starts processes for them (the
# code sandbox, the math-verify worker) lives in roles/sandbox and is called from there.
PURE_PACKAGES = ("roles/algorithms", "roles/rewards", "roles/evaluation", "roles/agents")
NOT_IN_PURE_PACKAGES = ("zmq", "asyncio", "torch.distributed", "subprocess", "multiprocessing", "concurrent.futures")
PROCESS_STARTING_CALLS = {"fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "execv", "execve",
                          "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnl"}


def is_within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def pure_modules() -> list[Path]:
    return sorted(path for package in PURE_PACKAGES for path in (REPO / package).rglob("*.py"))


def test_no_pure_library_imports_transport_event_loop_or_process_modules() -> None:
    assert imports_where(pure_modules(), lambda name: is_within(name, NOT_IN_PURE_PACKAGES)) == {}


def test_no_pure_library_starts_a_process_through_os() -> None:
    wrong = {}
    for path in pure_modules():
        calls = {node.func.attr for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                 and isinstance(node.func.value, ast.Name) and node.func.value.id == "os"}
        if calls & PROCESS_STARTING_CALLS:
            wrong[str(path.relative_to(REPO))] = sorted(calls & PROCESS_STARTING_CALLS)
    assert wrong == {}


def test_the_purity_check_sees_from_imports_and_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text("from torch import distributed\n\n"
                      "def f():\n    from concurrent.futures import ThreadPoolExecutor\n")
    found = {name for name in imported_modules(module) if is_within(name, NOT_IN_PURE_PACKAGES)}
    assert found == {"torch.distributed", "concurrent.futures", "concurrent.futures.ThreadPoolExecutor"}


def test_the_sandbox_and_the_math_verify_worker_live_outside_the_pure_packages() -> None:
    sandbox = REPO / "roles" / "sandbox"
    for module in ("runner.py", "processes.py", "harness/main.py", "symbolic.py", "symbolic_worker.py"):
        assert (sandbox / module).is_file(), module
    assert not any(sandbox.is_relative_to(REPO / package) for package in PURE_PACKAGES)
    starters = [path.name for path in pure_modules() if path.stem.startswith(("sandbox", "symbolic"))]
    assert starters == []


def test_the_sandbox_package_never_imports_the_reward_logic_that_calls_it() -> None:
    sandbox_modules = sorted((REPO / "roles" / "sandbox").rglob("*.py"))
    assert imports_where(sandbox_modules, lambda name: is_within(name, ("roles.rewards",))) == {}


def test_the_sandbox_harness_imports_only_the_standard_library_and_itself() -> None:
    """It is imported by ``python -I -S`` before site-packages are on the path."""
    harness_files = [REPO / "roles" / "__init__.py", REPO / "roles" / "sandbox" / "__init__.py",
                     *sorted((REPO / "roles" / "sandbox" / "harness").rglob("*.py"))]

    def outside_the_standard_library(name: str) -> bool:
        return name.split(".")[0] not in sys.stdlib_module_names and not is_within(name, ("roles.sandbox.harness",))

    assert imports_where(harness_files, outside_the_standard_library) == {}

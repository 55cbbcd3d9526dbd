"""The evaluation package stays pure: no transport, concurrency, process or torch imports."""

import pathlib

import pytest

from roles import evaluation
from tests.unit.package_rules import imported_modules

PACKAGE_DIR = pathlib.Path(evaluation.__file__).parent
FORBIDDEN_IMPORTS = ("zmq", "asyncio", "torch", "subprocess", "multiprocessing", "socket", "threading")


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda path: path.name)
def test_module_imports_no_transport_concurrency_process_or_torch_library(path):
    for module in imported_modules(path):
        assert not module.startswith(FORBIDDEN_IMPORTS), f"{path.name} imports {module}"


def test_every_exported_name_exists():
    for name in evaluation.__all__:
        assert hasattr(evaluation, name), name

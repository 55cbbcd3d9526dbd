"""The rewards package stays free of threads and sockets, and its configs stay strict and documented."""

import pathlib
import subprocess
import sys

import pytest
from pydantic import BaseModel

import roles.rewards as rewards
from tests.unit.package_rules import imported_modules

PACKAGE_DIR = pathlib.Path(rewards.__file__).parent
# Transport, event loops and process starting are checked for every pure package in
# tests/unit/test_layers.py; this package also leaves threads and sockets to roles/sandbox.
FORBIDDEN_IMPORTS = ("threading", "socket", "psutil")
CONFIG_CLASSES = [value for value in vars(rewards).values() if isinstance(value, type) and issubclass(value, BaseModel)]


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda path: path.name)
def test_module_imports_no_thread_socket_or_process_library(path):
    for module in imported_modules(path):
        assert not module.startswith(FORBIDDEN_IMPORTS), f"{path.name} imports {module}"


def test_every_public_config_is_found():
    assert {config.__name__ for config in CONFIG_CLASSES} == {
        "ArithmeticRewardConfig",
        "CodeRewardConfig",
        "CustomRewardConfig",
        "FinalNumberRewardConfig",
        "Gsm8kRewardConfig",
        "MathRewardConfig",
        "RewardModelRewardConfig",
        "RewardsConfig",
    }


@pytest.mark.parametrize("config_class", CONFIG_CLASSES, ids=lambda config_class: config_class.__name__)
def test_config_forbids_unknown_keys_and_documents_every_field(config_class):
    assert config_class.model_config.get("extra") == "forbid"
    for name, field in config_class.model_fields.items():
        assert field.description, f"{config_class.__name__}.{name} has no docstring"


def test_importing_the_package_loads_neither_torch_nor_sympy_nor_math_verify_nor_the_sandbox():
    code = ("import sys, roles.rewards; "
            "print(sorted(m for m in ('torch', 'sympy', 'math_verify', 'roles.rewards.code', 'roles.sandbox.runner')"
            " if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert output.strip() == "[]"

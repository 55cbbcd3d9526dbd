"""The algorithms package stays pure, and its configs stay strict and documented."""

import pathlib

import pytest
from pydantic import BaseModel

import roles.algorithms as algorithms
from tests.unit.package_rules import imported_modules

PACKAGE_DIR = pathlib.Path(algorithms.__file__).parent
FORBIDDEN_IMPORTS = ("zmq", "asyncio", "torch.distributed", "subprocess", "multiprocessing", "socket", "threading")
CONFIG_CLASSES = [
    value for value in vars(algorithms).values() if isinstance(value, type) and issubclass(value, BaseModel)
]


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda path: path.name)
def test_module_imports_no_transport_concurrency_or_process_library(path):
    for module in imported_modules(path):
        assert not module.startswith(FORBIDDEN_IMPORTS), f"{path.name} imports {module}"


def test_every_public_config_is_found():
    assert {config.__name__ for config in CONFIG_CLASSES} == {
        "AdaptiveKLControllerConfig",
        "CISPOPolicyLossConfig",
        "DrGRPOConfig",
        "FixedKLControllerConfig",
        "GAEConfig",
        "GRPOConfig",
        "GSPOPolicyLossConfig",
        "KLConfig",
        "MaskedISConfig",
        "NoRolloutCorrectionConfig",
        "OverlongConfig",
        "PolicyLossConfig",
        "RLOOConfig",
        "ReinforcePlusPlusBaselineConfig",
        "ReinforcePlusPlusConfig",
        "TruncatedISConfig",
        "ValueLossConfig",
    }


@pytest.mark.parametrize("config_class", CONFIG_CLASSES, ids=lambda config_class: config_class.__name__)
def test_config_forbids_unknown_keys_and_documents_every_field(config_class):
    assert config_class.model_config.get("extra") == "forbid"
    for name, field in config_class.model_fields.items():
        assert field.description, f"{config_class.__name__}.{name} has no docstring"

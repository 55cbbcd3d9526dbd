"""Every field of every role's config has a docstring (pydantic's ``use_attribute_docstrings``
makes it the field's description, which `troupe validate` and the docs rely on).

The configs are found, not listed: the `Config` of every built-in role and every model
its fields reach (nested settings, discriminated unions, lists and mappings of models),
and every pydantic model defined in a module under ``roles/``, so a config class added
later is covered without touching this test.
"""

from __future__ import annotations

import importlib
import pkgutil
import typing
from collections.abc import Iterator

from pydantic import BaseModel

import roles
from launch.topology import BUILTIN_ROLES
from runtime.host import load_actor_class


def models_in(annotation: typing.Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation names, inside unions, Annotated, lists and mappings too."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from models_in(argument)


def reachable(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        for nested in models_in(field.annotation):
            reachable(nested, seen)


def subclasses(model: type) -> Iterator[type]:
    for subclass in model.__subclasses__():
        yield subclass
        yield from subclasses(subclass)


def role_config_models() -> set[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    for entry in BUILTIN_ROLES.values():
        config = load_actor_class(entry).Config
        if config is not None:
            reachable(config, seen)
    for module in pkgutil.walk_packages(roles.__path__, "roles."):
        importlib.import_module(module.name)
    for model in subclasses(BaseModel):
        if model.__module__.startswith("roles.") and "[" not in model.__name__:  # not a parametrized generic
            reachable(model, seen)
    return seen


def test_the_walk_finds_the_configs_of_the_roles_and_the_models_nested_in_them():
    names = {model.__name__ for model in role_config_models()}
    assert {"ControllerConfig", "TrainerConfig", "GeneratorConfig", "RewardConfig", "DataConfig", "SamplingParams",
            "OptimConfig", "KLConfig", "GAEConfig", "GRPOConfig", "RewardsConfig", "MathRewardConfig",
            "WeightChannelConfig", "ProducerConfig"} <= names


def test_every_field_of_every_role_config_has_a_docstring():
    undocumented = sorted(
        f"{model.__module__}.{model.__qualname__}.{name}"
        for model in role_config_models()
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    )
    assert undocumented == [], "write a docstring under each of these fields:\n" + "\n".join(undocumented)

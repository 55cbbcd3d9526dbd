"""No actor class may redefine the runtime's own members (only its hooks).

A subclass that once defined a helper named `_fail` replaced the method every
refused message goes through: from then on any unknown kind or expired deadline
raised TypeError inside the supervisor and ended supervision. The check runs when a
class is created; this module also imports every module that defines actors, so a
clash anywhere in the codebase fails here.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from runtime.actor import Actor, handler
from runtime.registry import Registry

PACKAGES = ("runtime", "roles", "launch", "examples", "benchmarks", "tests.component")
NOT_IMPORTED = {"launch.locustfile"}  # gevent monkey-patches the process on import


def all_actor_classes() -> list[type[Actor]]:
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if module.name not in NOT_IMPORTED:
                importlib.import_module(module.name)
    found, stack = [], list(Actor.__subclasses__())
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


def test_every_actor_class_in_the_codebase_overrides_only_the_hooks():
    classes = all_actor_classes()
    assert len(classes) > 20  # the roles, the supervisor, the registry, test actors ...
    runtime_members = {name for name in vars(Actor) if not name.startswith("__")} - Actor.OVERRIDABLE - {"_handlers", "_urgent"}
    for cls in classes:
        for name in runtime_members:
            owner = next(klass for klass in cls.__mro__ if name in vars(klass))
            assert owner is Actor, f"{cls.__module__}.{cls.__qualname__} redefines Actor.{name}"


def test_a_subclass_that_redefines_a_runtime_method_is_refused_when_defined():
    with pytest.raises(TypeError, match=r"redefines members the runtime relies on: _crash_with \(defined in .*Clumsy\)"):
        class Clumsy(Actor):
            def _crash_with(self, error: BaseException) -> None:
                pass


def test_a_helper_named_like_a_dispatch_step_is_allowed_since_dispatch_lives_outside_the_actor():
    class Helpful(Actor):
        def _fail(self, instance: object, text: str) -> None:
            pass

    assert "_fail" not in vars(Actor)


def test_a_mixin_that_brings_a_runtime_name_is_refused_too():
    class Mixin:
        def ask(self) -> None:
            pass

    with pytest.raises(TypeError, match=r"ask \(defined in .*Mixin\)"):
        class Mixed(Mixin, Actor):
            pass


def test_a_handler_named_like_an_actor_method_is_refused():
    from protocols.membership import Lookup, LookupResult

    with pytest.raises(TypeError, match="lookup"):
        class Shadowing(Actor):
            @handler
            async def lookup(self, query: Lookup) -> LookupResult:
                return LookupResult([])


def test_the_hooks_may_be_overridden():
    class Hooked(Actor):
        role = "hooked"

        async def on_start(self) -> None:
            pass

        async def on_stop(self) -> None:
            pass

    assert Hooked.role == "hooked"
    assert Registry.lookup is Actor.lookup  # the registry's Lookup handler has its own name

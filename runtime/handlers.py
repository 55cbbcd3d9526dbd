"""What an actor class declares, checked when the class is created.

- `handler` marks an async method as the handler of the message type its one
  parameter is annotated with; `collect_handlers` builds a class's kind -> handler
  table from its MRO (a subclass's handler for a kind replaces its base's).
- `refuse_runtime_overrides` keeps a subclass from redefining a member the runtime
  relies on: a helper that happened to share a runtime method's name once replaced
  it for every message the actor handled.

Both raise TypeError at class creation, so a mistake fails on import, not on the
first message.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Callable, Collection
from typing import Any

from protocols.messages import message_type

Handler = Callable[[Any, Any], typing.Awaitable[Any]]


def handler(fn: Handler | None = None, *, urgent: bool = False) -> Any:
    """Mark an async method as the handler of the message type its parameter is annotated with.

    ``@handler(urgent=True)`` handles that message type as soon as it arrives, in its
    own task, beside whatever handler is running: for short protocol steps that a
    long-running handler waits on (the weight channel's ``WeightsReady``). Urgent
    handlers must not touch state the other handlers assume is theirs alone.
    """

    def mark(fn: Handler) -> Handler:
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"handler {fn.__qualname__} must be an async def")
        fn.__troupe_handler__ = True  # type: ignore[attr-defined]
        fn.__troupe_urgent__ = urgent  # type: ignore[attr-defined]
        return fn

    return mark if fn is None else mark(fn)


def collect_handlers(cls: type) -> dict[str, Handler]:
    """Message kind -> handler for `cls`, from every class in its MRO (the most derived wins)."""
    handlers: dict[str, Handler] = {}
    for klass in reversed(cls.__mro__):
        for attribute in vars(klass).values():
            if not getattr(attribute, "__troupe_handler__", False):
                continue
            hints = typing.get_type_hints(attribute)
            parameters = [name for name in attribute.__code__.co_varnames[1 : attribute.__code__.co_argcount]]
            if len(parameters) != 1 or parameters[0] not in hints:
                raise TypeError(
                    f"handler {attribute.__qualname__} must take exactly one parameter annotated with a message type"
                )
            message_class = hints[parameters[0]]
            kind = getattr(message_class, "KIND", None)
            if kind is None or message_type(kind) is not message_class:
                raise TypeError(f"handler {attribute.__qualname__}: {message_class!r} is not a registered message type")
            handlers[kind] = attribute
    return handlers


def urgent_kinds(handlers: dict[str, Handler]) -> frozenset[str]:
    """The kinds whose handler was marked ``@handler(urgent=True)``."""
    return frozenset(kind for kind, fn in handlers.items() if getattr(fn, "__troupe_urgent__", False))


def runtime_members(base: type, overridable: Collection[str], per_class: Collection[str]) -> frozenset[str]:
    """The members of `base` a subclass must leave alone: all but dunders, the
    `overridable` ones and the `per_class` tables set on every subclass."""
    return frozenset(
        name for name in vars(base)
        if not (name.startswith("__") and name.endswith("__")) and name not in overridable and name not in per_class
    )


def refuse_runtime_overrides(cls: type, base: type, protected: Collection[str], overridable: Collection[str]) -> None:
    """TypeError if `cls` (or a mixin before `base` in its MRO) redefines one of `protected`."""
    clashes = []
    for name in sorted(protected):
        owner = next(klass for klass in cls.__mro__ if name in vars(klass))
        if owner is not base:
            clashes.append(f"{name} (defined in {owner.__qualname__})")
    if clashes:
        raise TypeError(
            f"actor class {cls.__qualname__} redefines members the runtime relies on: {', '.join(clashes)}. "
            f"Rename them; a subclass may override only {sorted(overridable)}"
        )

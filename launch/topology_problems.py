"""What is wrong with a topology, said with the field path and the fix.

Every check of a topology file (`launch.topology_file`, the models of
`launch.topology`, the cross-role checks of `launch.topology_checks`) reports
`Problem`s, so `troupe validate` lists all of them at once; `TopologyError` carries
the list.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


class Problem(BaseModel):
    """One thing wrong with a topology."""

    path: str
    """Where: a field path (``roles.trainer.config.ranks``), a ``--set`` override, or a
    line and column of the file."""
    message: str
    """What is wrong and what to do about it."""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class TopologyError(ValueError):
    """A topology with problems; `problems` lists every one."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}\n{lines}")


class TopologyFileError(TopologyError):
    """A file that cannot be a topology at all: unreadable, not UTF-8 text, or not a YAML mapping."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(source, [Problem(path=source, message=message)])

    def __str__(self) -> str:
        return str(self.problems[0])


def field_path(location: tuple[Any, ...]) -> str:
    """``("roles", "stage", "placement", 0)`` as ``roles.stage.placement[0]``."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_HINTS = {
    "missing": "add it",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "float_parsing": "write a number",
    "float_type": "write a number",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "string_type": "write a string (quote it if it looks like a number)",
    "dict_type": "write a mapping (key: value lines)",
    "list_type": "write a list",
    "literal_error": "use one of the values listed",
    "model_type": "write a mapping (key: value lines)",
    "model_attributes_type": "write a mapping (key: value lines)",
}


def problems_from(error: ValidationError, prefix: tuple[Any, ...], model: type[BaseModel]) -> list[Problem]:
    """A pydantic validation error of `model` as problems, their paths under `prefix`."""
    problems = []
    for item in error.errors():
        location = tuple(part for part in item["loc"] if not (isinstance(part, str) and part.startswith("function-")))
        kind = item["type"]
        message = item["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            message = f"unknown key{_did_you_mean(model, location)}; remove it or fix its spelling"
        elif kind in _HINTS:
            message = f"{message}; {_HINTS[kind]}"
        if kind not in ("missing", "extra_forbidden") and not isinstance(item.get("input"), (dict, list, type(None))):
            message += f" (got {item['input']!r})"
        problems.append(Problem(path=field_path(prefix + location), message=message))
    return problems


def _owner_of(model: type[BaseModel], location: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that holds the last key of `location` (None if it is not a model).

    A field holding a mapping of models (the topology's ``roles``) takes one key of
    its own (a role's name) before its model's fields."""
    owner: type[BaseModel] | None = model
    parts = list(location[:-1])
    while parts and owner is not None:
        part = parts.pop(0)
        field = owner.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        if typing.get_origin(annotation) is dict and parts:
            parts.pop(0)  # the mapping's key
            annotation = typing.get_args(annotation)[-1]
        owner = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return owner


def _did_you_mean(model: type[BaseModel], location: tuple[Any, ...]) -> str:
    """Suggest the field a misspelt key was probably meant to be."""
    owner = _owner_of(model, location)
    if owner is None or not location:
        return ""
    return close_name(str(location[-1]), owner.model_fields)


def close_name(name: str, names: Any) -> str:
    """`` (did you mean 'x'?)`` when one of `names` is close to `name`, else ``""``."""
    close = difflib.get_close_matches(name, [str(candidate) for candidate in names], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

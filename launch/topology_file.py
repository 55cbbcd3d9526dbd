"""A topology file as a raw mapping: read it, report keys given twice, apply ``--set`` overrides.

Nothing here knows the topology's models (`launch.topology` validates the mapping);
the YAML itself is composed node by node so that a key written twice, which YAML
would silently keep the last of, is reported with its lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from launch.topology_problems import Problem, TopologyError, TopologyFileError, field_path


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> list[Problem]:
    """Apply ``a.b.c=value`` overrides to the raw mapping in place; values are YAML.

    Returns the problems (bad syntax, a path through something that is not a mapping).
    """
    problems = []
    for override in overrides:
        path, separator, text = override.partition("=")
        keys = path.strip().split(".") if path.strip() else []
        if not separator or not keys or any(not key for key in keys):
            problems.append(Problem(path=f"--set {override}", message="write --set dotted.path=value, e.g. roles.stage.count=3"))
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as error:
            problems.append(Problem(path=f"--set {override}", message=f"the value is not valid YAML: {error}"))
            continue
        node: Any = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key) if isinstance(node, dict) else None
            if child is None and isinstance(node, dict):
                child = node[key] = {}
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                problems.append(Problem(path=f"--set {override}", message=f"{where} is not a mapping, so it has no key {keys[depth + 1]!r}"))
                break
            node = child
        else:
            node[keys[-1]] = value
    return problems


def read_yaml(source: Path | str) -> tuple[dict[str, Any], list[Problem]]:
    """Parse a topology file.

    Returns:
        (the mapping, every key given twice in one mapping, as problems: YAML itself
        would keep the last silently).

    Raises:
        TopologyFileError: the file cannot be read, is not UTF-8 text, or holds no mapping.
        TopologyError: the file is not valid YAML (the problem gives line and column).
    """
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TopologyFileError(str(path), f"cannot read the file: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise TopologyFileError(
            str(path), f"line {line} is not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8"
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        twice = _keys_given_twice(node, (), set()) if node is not None else []
        raw = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "YAML"
        raise TopologyError(str(path), [Problem(path=where, message=f"not valid YAML: {getattr(error, 'problem', error)}")]) from None
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        holds = "nothing" if raw is None else f"a {type(raw).__name__}"
        raise TopologyFileError(str(path), f"holds {holds}; a topology file is a YAML mapping with 'name' and 'roles' keys")
    return raw, twice


def _keys_given_twice(node: yaml.Node, location: tuple[Any, ...], walked: set[int]) -> list[Problem]:
    """Keys that appear twice in one mapping, at any depth of a composed YAML document."""
    if id(node) in walked:  # an alias of a node already walked
        return []
    walked.add(id(node))
    problems = []
    if isinstance(node, yaml.MappingNode):
        first_lines: dict[tuple[str, str], int] = {}  # (tag, text) of each key -> the line it first appears on
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):  # a complex key: no field path to report
                continue
            line = key.start_mark.line + 1
            first = first_lines.get((key.tag, key.value))
            if first is None:
                first_lines[(key.tag, key.value)] = line
            else:
                where = f"on line {line}" if first == line else f"(lines {first} and {line})"
                problems.append(Problem(path=field_path(location + (key.value,)),
                                        message=f"given twice {where}; YAML would keep only the last: remove one"))
            problems += _keys_given_twice(value, location + (key.value,), walked)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _keys_given_twice(item, location + (index,), walked)
    return problems

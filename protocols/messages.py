"""Typed messages: frozen dataclasses registered under a kind.

Every interaction between roles is one message type::

    @message("pipeline.item")
    class Item:  # producer -> stage
        index: int
        values: torch.Tensor

`@message` makes the class a frozen dataclass and registers its kind, so a
receiver can turn an envelope back into the right type. Decoding checks the
payload against the field annotations (int, float, str, bytes, bool, None,
torch.Tensor, numpy.ndarray, Batch, nested messages, list/tuple/dict/Optional/
Union/Literal/Any, and ``Annotated`` with a `protocols.specs.TensorSpec` or `BatchSpec`
for the dtypes and shapes a tensor field must have) and raises `ProtocolError` naming
the field that is wrong.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from protocols.batch import Batch, BatchError
from protocols.errors import ProtocolError
from protocols.specs import BatchSpec, TensorSpec

_KINDS: dict[str, type] = {}
_CONVERTERS: dict[type, Callable[[Any, str], Any]] = {}

M = TypeVar("M")


def message(kind: str) -> Callable[[type[M]], type[M]]:
    """Class decorator: make a frozen dataclass and register it under `kind`.

    Kinds are dotted names (``"registry.register"``); registering one kind twice
    for different classes is an error, so two modules cannot silently collide.
    """
    if not kind or not isinstance(kind, str):
        raise ValueError("a message kind must be a non-empty string")

    def register(cls: type[M]) -> type[M]:
        if not dataclasses.is_dataclass(cls):
            cls = dataclasses.dataclass(frozen=True)(cls)
        elif not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(f"{cls.__qualname__} must be a frozen dataclass")
        existing = _KINDS.get(kind)
        if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(
                f"message kind {kind!r} is already registered for {existing.__module__}.{existing.__qualname__}"
            )
        cls.KIND = kind  # type: ignore[attr-defined]
        cls.__wire__ = _message_to_wire  # type: ignore[attr-defined]
        cls.__wire_fields__ = tuple(f.name for f in dataclasses.fields(cls) if f.init)  # type: ignore[attr-defined]
        try:
            hints = typing.get_type_hints(cls, include_extras=True)
        except NameError:
            hints = None  # a forward reference to a later class: checked when first decoded
        if hints is not None:
            for field in dataclasses.fields(cls):
                _converter(hints[field.name])  # raises TypeError now for a field with no wire form
        _KINDS[kind] = cls
        return cls

    return register


def _message_to_wire(self: Any) -> dict[str, Any]:
    return {name: getattr(self, name) for name in self.__wire_fields__}


def kind_of(msg: Any) -> str:
    """The registered kind of a message instance."""
    kind = getattr(type(msg), "KIND", None)
    if kind is None or _KINDS.get(kind) is not type(msg):
        raise ProtocolError(f"{type(msg).__qualname__} is not a registered message type; decorate it with @message(kind)")
    return kind


def message_type(kind: str) -> type:
    """The class registered under `kind`; ProtocolError for an unknown kind."""
    cls = _KINDS.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r:.80}: no message type is registered under it in this process")
    return cls


def registered_kinds() -> list[str]:
    return sorted(_KINDS)


def to_payload(msg: Any) -> dict[str, Any]:
    """The payload of a message: its fields (nested values are packed by the codec)."""
    kind_of(msg)
    return _message_to_wire(msg)


def from_payload(kind: str, payload: Any) -> Any:
    """Build the message registered under `kind` from a decoded payload, checking every field."""
    cls = message_type(kind)
    return _converter(cls)(payload, kind)


# ------------------------------------------------------------------ validation
def _fail(path: str, expected: str, value: Any) -> typing.NoReturn:
    raise ProtocolError(f"field {path}: expected {expected}, got {type(value).__name__} {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, (torch.Tensor, np.ndarray)) else f"{value.dtype} {list(value.shape)}"
    return text if len(text) <= 60 else text[:57] + "..."


def _converter(hint: Any) -> Callable[[Any, str], Any]:
    cached = _CONVERTERS.get(hint) if isinstance(hint, type) else None
    if cached is not None:
        return cached
    converter = _build_converter(hint)
    if isinstance(hint, type):
        _CONVERTERS[hint] = converter
    return converter


def _build_converter(hint: Any) -> Callable[[Any, str], Any]:  # noqa: C901 - one branch per kind of annotation
    if hint is Any or hint is object:
        return lambda value, path: value
    if hint is None or hint is type(None):
        def none(value: Any, path: str) -> None:
            if value is not None:
                _fail(path, "nil", value)
        return none
    if hint is bool:
        def boolean(value: Any, path: str) -> bool:
            if not isinstance(value, bool):
                _fail(path, "bool", value)
            return value
        return boolean
    if hint is int:
        def integer(value: Any, path: str) -> int:
            if not isinstance(value, int) or isinstance(value, bool):
                _fail(path, "int", value)
            return value
        return integer
    if hint is float:
        def real(value: Any, path: str) -> float:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                _fail(path, "float", value)
            return float(value)
        return real
    if hint in (str, bytes):
        def exact(value: Any, path: str) -> Any:
            if not isinstance(value, hint):
                _fail(path, hint.__name__, value)
            return value
        return exact
    if hint is torch.Tensor or hint is np.ndarray:
        def array(value: Any, path: str) -> Any:
            if not isinstance(value, hint):
                _fail(path, "torch.Tensor" if hint is torch.Tensor else "numpy.ndarray", value)
            return value
        return array
    if hint is Batch:
        def batch(value: Any, path: str) -> Batch:
            try:
                return Batch.from_wire(value)
            except BatchError as error:
                raise ProtocolError(f"field {path}: {error}") from error
        return batch
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass_converter(hint)

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _checked_converter(hint.__origin__, hint.__metadata__)
    if origin is typing.Union or origin is types.UnionType:
        options = [_converter(arg) for arg in args]
        names = " | ".join(getattr(arg, "__name__", str(arg)) for arg in args)

        def union(value: Any, path: str) -> Any:
            if value is None and type(None) in args:
                return None
            for option in options:
                try:
                    return option(value, path)
                except ProtocolError:
                    continue
            _fail(path, names, value)
        return union
    if origin is typing.Literal:
        allowed = [(type(arg), arg) for arg in args]

        def literal(value: Any, path: str) -> Any:
            if (type(value), value) not in allowed:  # a list compare: the value may be unhashable
                _fail(path, f"one of {sorted(map(repr, args))}", value)
            return value
        return literal
    if origin in (list, tuple, collections.abc.Sequence):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            items = [_converter(arg) for arg in args]

            def fixed_tuple(value: Any, path: str) -> tuple[Any, ...]:
                if not isinstance(value, (list, tuple)) or len(value) != len(items):
                    _fail(path, f"a list of {len(items)} items", value)
                return tuple(item(v, f"{path}[{i}]") for i, (item, v) in enumerate(zip(items, value)))
            return fixed_tuple
        item = _converter(args[0]) if args else _converter(Any)
        # Lists of plain scalars (token ids, texts) are checked at C speed; only a list
        # with a wrong item goes through the item converter, for the error's path.
        plain = {int: int, str: str, bytes: bytes, bool: bool}.get(args[0]) if args else None

        def sequence(value: Any, path: str) -> Any:
            if not isinstance(value, (list, tuple)):
                _fail(path, "a list", value)
            if plain is not None and all(type(v) is plain for v in value):
                return tuple(value) if origin is tuple else list(value)
            converted = [item(v, f"{path}[{i}]") for i, v in enumerate(value)]
            return tuple(converted) if origin is tuple else converted
        return sequence
    if origin in (dict, collections.abc.Mapping):
        key = _converter(args[0]) if args else _converter(Any)
        val = _converter(args[1]) if args else _converter(Any)

        def mapping(value: Any, path: str) -> dict[Any, Any]:
            if not isinstance(value, dict):
                _fail(path, "a map", value)
            return {key(k, f"{path} key"): val(v, f"{path}[{k!r}]") for k, v in value.items()}
        return mapping
    if hint in (list, tuple, dict):
        return _build_converter({list: list[Any], tuple: tuple[Any, ...], dict: dict[Any, Any]}[hint])
    raise TypeError(f"message fields cannot be annotated {hint!r}: it has no wire form")


def _checked_converter(base: Any, metadata: tuple[Any, ...]) -> Callable[[Any, str], Any]:
    """``Annotated[torch.Tensor, TensorSpec(...)]`` / ``Annotated[Batch, BatchSpec(...)]``:
    the base type's converter, then the spec's checks (protocols.specs)."""
    convert = _converter(base)
    tensor_specs = [spec for spec in metadata if isinstance(spec, TensorSpec)]
    batch_specs = [spec for spec in metadata if isinstance(spec, BatchSpec)]
    if tensor_specs and base is not torch.Tensor or batch_specs and base is not Batch:
        raise TypeError(f"TensorSpec annotates torch.Tensor and BatchSpec annotates Batch, not {base!r}")
    column_checks = [
        (name, _converter(list[row_hint])) for spec in batch_specs for name, row_hint in spec.columns.items()  # type: ignore[valid-type]
    ]

    def checked(value: Any, path: str) -> Any:
        value = convert(value, path)
        for spec in tensor_specs:
            spec.check(value, path)
        for spec in batch_specs:
            spec.check_tensors(value.tensors, path)
        for name, column in column_checks:
            if name not in value.columns:
                raise ProtocolError(f"field {path}: missing column {name!r}")
            column(value.columns[name], f"{path}.columns[{name!r}]")
        return value

    return checked


def _dataclass_converter(cls: type) -> Callable[[Any, str], Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [field for field in dataclasses.fields(cls) if field.init]
    field_converters: dict[str, Callable[[Any, str], Any]] = {}
    names = frozenset(field.name for field in fields)
    required = {
        field.name for field in fields
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    }

    def convert(value: Any, path: str) -> Any:
        if not field_converters:
            field_converters.update({field.name: _converter(hints[field.name]) for field in fields})
        if not isinstance(value, dict):
            _fail(path, f"a map of {cls.__qualname__} fields", value)
        if value.keys() != names:  # some left out (allowed if they have defaults) or unknown
            unknown = value.keys() - names
            if unknown:
                raise ProtocolError(f"{path}: unknown fields {sorted(map(str, unknown))[:8]} for {cls.__qualname__}")
            missing = required - value.keys()
            if missing:
                raise ProtocolError(f"{path}: missing fields {sorted(missing)} for {cls.__qualname__}")
        try:
            # The field paths are only for error texts: a valid message builds none of them.
            arguments = {name: field_converters[name](v, path) for name, v in value.items()}
        except ProtocolError:  # converters are pure: convert again, naming the field that is wrong
            arguments = {name: field_converters[name](v, f"{path}.{name}") for name, v in value.items()}
        try:
            return cls(**arguments)
        except (TypeError, ValueError) as error:  # a __post_init__ check of the message itself
            raise ProtocolError(f"{path}: invalid {cls.__qualname__}: {error}") from error

    return convert

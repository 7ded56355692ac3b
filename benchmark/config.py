"""Frozen, validated config dataclasses.

Every component (task, attack, defense, training loop) has a `Config` subclass.  `Config.from_dict` is the only
way user YAML becomes a config: unknown keys, wrong types and out-of-range values are one-line errors naming the
key and where it came from.  Subclasses validate ranges in `check()`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from benchmark.errors import FipbenchError, unknown_name


@dataclasses.dataclass(frozen=True)
class Config:
    where: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            fixed = _coerce(value, hints[f.name], f"{type(self).__name__}.{f.name}")
            if fixed is not value:
                object.__setattr__(self, f.name, fixed)
        self.check()

    def check(self) -> None:
        """Range checks; raise `self.bad(...)`."""

    def bad(self, key: str, why: str) -> FipbenchError:
        return FipbenchError(f"{type(self).__name__}.{key} = {getattr(self, key)!r}: {why}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "") -> Self:
        data = dict(data or {})
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise unknown_name(f"key of {cls.__qualname__}", str(key), names, where)
        # A nested config given as a mapping overrides the *default instance's* fields, so that
        # `fit: {lr: 0.1}` keeps the component's other training defaults.
        defaults = cls()
        for f in dataclasses.fields(cls):
            default = getattr(defaults, f.name)
            if isinstance(default, Config) and isinstance(data.get(f.name), Mapping):
                sub_where = f"{where}.{f.name}" if where else f.name
                data[f.name] = type(default).from_dict({**default.to_dict(), **data[f.name]}, sub_where)
        try:
            return cls(**data)
        except FipbenchError as err:
            raise FipbenchError(f"{where}: {err}" if where else str(err)) from None

    def to_dict(self) -> dict[str, Any]:
        """Every field, except an `added` one still at its default (see `added`)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not (f.metadata.get("added") and getattr(self, f.name) == f.default)}

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


def added(default: Any) -> Any:
    """A field added to a config after results were stored.  While it holds its default it is left out of
    `to_dict`, hence out of cell ids and artifact keys, so stored results of configs that predate it (and behave
    exactly as the default does) stay valid; any other value is part of the identity as usual.  The default
    must keep the old behaviour: a field that changes results needs a component `version` bump instead."""
    return dataclasses.field(default=default, metadata={"added": True})


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object with sorted keys: the content address of specs and configs."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, Config):
        return v.to_dict()
    return v


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check `value` against the annotation `tp`; allow int->float and list->tuple, nothing else."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, name)
            except FipbenchError:
                continue
        raise FipbenchError(f"{name} = {value!r}: expected {tp}")
    if tp is type(None):
        if value is None:
            return value
        raise FipbenchError(f"{name} = {value!r}: expected null")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise FipbenchError(f"{name} = {value!r}: expected one of {', '.join(map(repr, typing.get_args(tp)))}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise FipbenchError(f"{name} = {value!r}: expected a list")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, name) for v in value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise FipbenchError(f"{name} = {value!r}: expected a number")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise FipbenchError(f"{name} = {value!r}: expected an integer")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise FipbenchError(f"{name} = {value!r}: expected {tp.__name__}")
    return value

"""Name -> component registries that load lazily.

A registry knows its built-in names as *module paths* (strings), so listing names (`fipbench ls`) imports
nothing heavy.  `get(name)` imports the module, whose `@REG.register(name)` decorator fills the entry.
Third-party packages add entries through an entry-point group (e.g. `fipbench.defenses`); the entry point's
name is the registry name and its value a module or an object, loaded on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from benchmark.errors import FipbenchError, unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin: Mapping[str, str], group: str | None = None):
        self.kind = kind
        self.group = group
        self._builtin = dict(builtin)  # name -> module that registers it
        self._entries: dict[str, T] = {}
        self._plugins: dict[str, object] | None = None  # name -> EntryPoint, discovered once

    # -- registration -------------------------------------------------------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@ATTACKS.register("badnets")`.  A second registration of one name raises."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"duplicate {self.kind} name {name!r}: already registered by "
                                 f"{_qualname(self._entries[name])}, again by {_qualname(obj)}")
            self._entries[name] = obj
            try:
                obj.registry_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    # -- lookup -------------------------------------------------------------------------------------------
    def _discover(self) -> dict[str, object]:
        if self._plugins is None:
            self._plugins = {}
            if self.group:
                for ep in entry_points(group=self.group):
                    if ep.name in self._builtin:
                        raise FipbenchError(f"plugin {ep.value!r} registers {self.kind} {ep.name!r}, which is a "
                                            f"built-in name; rename it in the plugin's entry points")
                    self._plugins[ep.name] = ep
        return self._plugins

    def names(self) -> list[str]:
        """All known names, built-in and plugin, without importing any component."""
        return sorted(set(self._builtin) | set(self._discover()) | set(self._entries))

    def origin(self, name: str) -> str:
        if name in self._builtin:
            return self._builtin[name]
        ep = self._discover().get(name)
        return getattr(ep, "value", "registered at run time")

    def get(self, name: str, where: str = "") -> T:
        if name not in self._entries:
            if name in self._builtin:
                importlib.import_module(self._builtin[name])
            elif name in self._discover():
                obj = self._discover()[name].load()  # type: ignore[attr-defined]
                if name not in self._entries and not isinstance(obj, type(importlib)):
                    self.register(name)(obj)  # an entry point may name the object directly
            else:
                raise unknown_name(self.kind, name, self.names(), where)
            if name not in self._entries:
                raise FipbenchError(f"{self.kind} {name!r} is declared by {self.origin(name)!r} but that module "
                                    f"registers no such name; fix the module's @register decorator")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def load_all(self) -> dict[str, T]:
        return {n: self.get(n) for n in self.names()}


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"

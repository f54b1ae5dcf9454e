"""A small typed registry: one per kind of evaluation plug-in (tasks, model kinds).

The registry is the single source of names for CLI choices, docs tables and parametrized tests;
a second class under a taken name raises instead of overwriting.
"""
from __future__ import annotations

import importlib
from typing import Generic, TypeVar

from ..errors import ConfigError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Name -> class, filled by ``@registry.register`` in the modules listed in ``modules``."""

    def __init__(self, what: str, modules: tuple[str, ...]):
        self.what = what
        self.modules = modules
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, cls: T) -> T:
        name = getattr(cls, "name", "")
        if not name or name != name.lower() or ":" in name:
            raise ValueError(f"bad {self.what} name {name!r}")
        if name in self._items and self._items[name] is not cls:
            raise ValueError(f"{self.what} {name!r} is already registered by {self._items[name].__module__}")
        self._items[name] = cls
        return cls

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self.modules:
                importlib.import_module(module)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.what} {name!r} (choose from: {', '.join(self.names())})") from None

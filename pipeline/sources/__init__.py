"""The source registry: dataset layouts by name, for the CLI, config and docs."""
from __future__ import annotations

import importlib
from typing import Any, TypeVar

from ..errors import ConfigError
from .base import RawSample, SampleRef, Source

_REGISTRY: dict[str, type[Source]] = {}
_MODULES = ("pipeline.sources.imagenet", "pipeline.sources.ade20k", "pipeline.sources.imagefolder",
            "pipeline.sources.hf", "pipeline.sources.librispeech", "pipeline.sources.musdb",
            "pipeline.sources.audiofolder")
_loaded = False

S = TypeVar("S", bound=type[Source])


def register(cls: S) -> S:
    """Class decorator adding a source under ``cls.name``; duplicates raise."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"source {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for m in _MODULES:
            importlib.import_module(m)


def source_names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get_source(name: str) -> type[Source]:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r} (known: {', '.join(source_names())})") from None


def make_source(name: str, root: str, split: str | None, options: dict[str, Any] | None = None) -> Source:
    return get_source(name)(root, split, **(options or {}))


__all__ = ["RawSample", "SampleRef", "Source", "get_source", "make_source", "register", "source_names"]

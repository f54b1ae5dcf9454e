"""First in the flow, the source registry: dataset layouts by name, for the CLI, config and docs."""
from __future__ import annotations

import importlib
from typing import Any, TypeVar

from ..errors import ConfigError
from .base import RawSample, SampleRef, Source, SourceOption

_REGISTRY: dict[str, type[Source]] = {}
_MODULES = ("pipeline.sources.imagenet", "pipeline.sources.ade20k", "pipeline.sources.coco",
            "pipeline.sources.imagefolder",
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


def declared_options() -> list[tuple[SourceOption, list[str]]]:
    """Every option a registered source declares, once, with the sources declaring it (for the CLI).

    Two sources may share an option name only with the same kind (flag or value)."""
    found: dict[str, tuple[SourceOption, list[str]]] = {}
    for name in source_names():
        for option in _REGISTRY[name].options:
            if option.name in found and found[option.name][0].flag != option.flag:
                raise ValueError(f"source option {option.name!r} is a flag in one source and a value in another")
            found.setdefault(option.name, (option, []))[1].append(name)
    return list(found.values())


def make_source(name: str, root: str, split: str | None, options: dict[str, Any] | None = None) -> Source:
    return get_source(name)(root, split, **(options or {}))


__all__ = ["RawSample", "SampleRef", "Source", "SourceOption", "declared_options", "get_source", "make_source",
           "register", "source_names"]

"""Between modalities and metrics, the codec registry: the single source of codec names for the CLI,
specs, docs and tests.

Each codec family lives in its own module and registers its classes with :func:`register`.
Heavy libraries are imported inside the codecs, so importing the registry is cheap.
"""
from __future__ import annotations

import importlib
from typing import TypeVar

from ..errors import ConfigError
from . import lossless
from .base import Codec, Encoded, ImageCodec

_REGISTRY: dict[str, type[Codec]] = {}
_FAMILIES = ("pipeline.codecs.classic", "pipeline.codecs.jxl", "pipeline.codecs.hevc", "pipeline.codecs.compressai_zoo",
             "pipeline.codecs.compressai_own", "pipeline.codecs.msillm",
             "pipeline.codecs.hific", "pipeline.codecs.ffmpeg_audio",
             "pipeline.codecs.encodec")
_loaded = False

C = TypeVar("C", bound=type[Codec])


def register(cls: C) -> C:
    """Class decorator adding a codec under ``cls.name``; a second codec with that name raises.

    An image codec storing pixels losslessly (``lossless``: the reference; ``reconstruction``: a
    learned codec's decoded output) gets the ``container`` parameter here, the one place where
    the container of stored pixels is declared (:mod:`pipeline.codecs.lossless`).
    """
    name = cls.name
    if not name or name != name.lower() or ":" in name or "," in name:
        raise ValueError(f"bad codec name {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"codec {name!r} is already registered by {_REGISTRY[name].__module__}")
    stores_pixels = issubclass(cls, ImageCodec) and (cls.lossless or cls.reconstruction)
    if stores_pixels and lossless.PARAM not in {p.name for p in cls.params}:
        cls.params = (*cls.params, lossless.container_param())
    _REGISTRY[name] = cls
    return cls


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _FAMILIES:
            importlib.import_module(module)


def codec_names(modality: str | None = None) -> list[str]:
    """Registered codec names, optionally only those of one modality ('image' or 'audio')."""
    _load()
    return sorted(n for n, c in _REGISTRY.items()
                  if modality in (None, c.modality) or (c.modality == "any" and modality in ("image", "audio")))


def get_codec(name: str) -> type[Codec]:
    """The codec class registered under ``name``; unknown names raise a ConfigError listing the known ones."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown codec {name!r} (known: {', '.join(codec_names())})") from None


def runnable_codec(name: str) -> type[Codec]:
    """The codec class registered under ``name``, refused with one line when it cannot run here (a missing library)."""
    cls = get_codec(name)
    reason = cls.unavailable()
    if reason:
        raise ConfigError(f"codec {name} cannot run here: {reason}")
    return cls


def make_codec(spec) -> Codec:
    """An instance of the codec for a parsed spec."""
    return get_codec(spec.name)(spec)


__all__ = ["Codec", "Encoded", "ImageCodec", "codec_names", "get_codec", "make_codec", "register", "runnable_codec"]

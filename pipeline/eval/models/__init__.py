"""The model registry: one class per kind of model (``torchvision``, ``timm``, ``hf``, ``pocketsphinx``,
``umxhq``, ``umxl``, ``htdemucs``, and ``lpips``, ``dists``, ``cdpam`` from the deep-metric registry),
the single source of model kinds for the CLI and docs.

A model spec string (``torchvision:resnet50``) names a kind and, for hub kinds, the model; the
kind checks its weights before any work (:meth:`ModelKind.preflight`) and loads a predictor in
each worker (:meth:`ModelKind.load`), once per process (:func:`loaded`).
"""
from __future__ import annotations

import threading
from typing import Any

from ..registry import Registry
from .base import ModelKind

MODELS: Registry[type[ModelKind]] = Registry("model", ("pipeline.eval.models.vision", "pipeline.eval.models.hf",
                                                       "pipeline.eval.models.speech",
                                                       "pipeline.eval.models.separation",
                                                       "pipeline.eval.models.similarity"))
register_model = MODELS.register
_cache: dict[tuple, Any] = {}
_lock = threading.Lock()


def get_model_kind(kind: str) -> type[ModelKind]:
    return MODELS.get(kind)


def model_kinds() -> list[str]:
    return MODELS.names()


def loaded(config: Any) -> Any:
    """The predictor for this run's model, loaded once per process (workers keep it between shards)."""
    key = (config.model, config.weights, config.device, config.offline, config.task)
    with _lock:
        if key not in _cache:
            _cache.clear()  # one model at a time per worker
            _cache[key] = get_model_kind(config.model.kind).load(config)
        return _cache[key]


__all__ = ["MODELS", "ModelKind", "get_model_kind", "loaded", "model_kinds", "register_model"]

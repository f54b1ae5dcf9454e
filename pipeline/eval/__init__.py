"""Machine perception per finished set, after the loaders and before the report: task and model
registries, per-shard evaluation into per-sample rows, and aggregates derived only from those rows.

``evaluate(EvalConfig.create(out, dataset, split, task, model), executor)`` writes
``OUT/D/S/<tag>/eval/<task>-<model-tag>.parquet`` and ``.json`` per set (see :mod:`.run`).
"""
from __future__ import annotations

from typing import Any

from .config import EvalConfig, ModelSpec


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "plan_eval", "EvalPlan", "EvalResult"):
        from . import run

        return getattr(run, name)
    if name in ("task_names", "get_task"):
        from . import tasks

        return getattr(tasks, name)
    if name in ("model_kinds", "get_model_kind"):
        from . import models

        return getattr(models, name)
    raise AttributeError(name)


__all__ = ["EvalConfig", "ModelSpec", "evaluate", "get_model_kind", "get_task", "model_kinds", "plan_eval",
           "task_names"]

"""The task registry: ``classify``, ``segment``, ``detect``, ``asr``, ``separate``, ``similarity`` (the single source of
task names).

A task turns loaded samples into model inputs, model outputs into per-sample columns, and
per-sample rows into the aggregate figures (:meth:`Task.aggregate`, nothing else feeds them).
"""
from __future__ import annotations

from ..registry import Registry
from .base import Task

TASKS: Registry[type[Task]] = Registry("task", ("pipeline.eval.tasks.classify", "pipeline.eval.tasks.segment",
                                                "pipeline.eval.tasks.detect",
                                                "pipeline.eval.tasks.asr", "pipeline.eval.tasks.separate",
                                                "pipeline.eval.tasks.similarity"))
register_task = TASKS.register


def get_task(name: str) -> type[Task]:
    return TASKS.get(name)


def task_names() -> list[str]:
    return TASKS.names()


__all__ = ["TASKS", "Task", "get_task", "register_task", "task_names"]

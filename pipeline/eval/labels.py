"""A model's class outputs against a set's label space, checked before any work.

A classifier with 10 outputs evaluated on ImageNet, or a segmenter of another dataset's classes
on ADE20K, gives figures at chance without an error; so the run stops first, naming both. A
model whose ``id2label`` starts with a background class (1,001 outputs for 1,000 classes) is
taken with that class dropped: its ``offset`` is recorded with the model in the result JSON.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError
from .models.base import ModelKind
from .sets import EvalSet


def check_label_space(config: Any, task: Any, kind: type[ModelKind], sets: Sequence[EvalSet]) -> dict[str, Any]:
    """What the result JSON records of the model's outputs (``outputs``, ``label_offset``, ``classes``),
    after checking they fit every set's label space; raises ConfigError (exit 2) when they do not."""
    name = task.label_field
    if name is None:
        return {}
    out = kind.outputs(config)
    if out is None:
        return {}
    weights = f" (--weights {config.weights})" if config.weights else ""
    for s in sets:
        space = s.label_space(name)
        if space is None:  # a set whose space is unknown (imagefolder written before): checked per batch
            continue
        classes, space_name = space
        if out.classes != classes:
            extra = f", {out.offset} of them a leading background class" if out.offset else ""
            raise ConfigError(f"model {config.model.canonical}{weights} has {out.count} outputs{extra} "
                              f"({out.origin}); set {config.dataset}/{config.split}/{s.tag} has {classes} classes "
                              f"({space_name or name}): the model does not fit this set")
    return {"outputs": out.count, "label_offset": out.offset, "classes": out.classes}

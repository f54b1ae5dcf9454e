"""Deep similarity of each lossy set to the lossless set ``none``: LPIPS, DISTS (images), CDPAM (audio).

The reference of a sample is the same key in the set ``none`` (what the codecs saw, stored
losslessly), read beside the lossy set in lockstep by the loader (``paired=True``), so the
distances equal the columns ``--lpips``, ``--dists`` and ``--cdpam`` add at transcode time. The
set ``none`` itself is not evaluated: its distance to itself is 0 by definition. The per-sample
column is named as at transcode time (``lpips_alex``, ``dists``, ``cdpam``).
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar, Mapping, Sequence

from ...errors import ConfigError
from . import register_task
from .base import Task, as_numpy, ok_rows

FIGURES = ("mean", "median", "p05", "p95")


@register_task
class Similarity(Task):
    """Unbound until :meth:`bind` picks the metric (its column and the sample field it reads)."""

    name = "similarity"
    requires: ClassVar[tuple[str, ...]] = ()  # bound: the metric's modality, ``image`` or ``audio``
    default_model = None
    primary = "mean"
    higher_is_better = False
    reference = "none"
    perception = False
    metric: ClassVar[str] = ""
    column: ClassVar[str] = ""
    definitions: ClassVar[Mapping[str, str]] = {
        "mean": "mean over ok samples with a finite distance of the per-sample distance to the same key in set none",
        "median": "median of those distances",
        "p05": "5th percentile of those distances (numpy.percentile, linear interpolation)",
        "p95": "95th percentile of those distances (numpy.percentile, linear interpolation)",
    }

    @classmethod
    def bind(cls, config: Any) -> type[Task]:
        return bound(config.model.canonical)

    @classmethod
    def _column(cls) -> str:
        if not cls.column:
            raise ConfigError("the similarity task needs its metric (--model lpips:alex, dists, cdpam, ...)")
        return cls.column

    @classmethod
    def columns(cls) -> list[tuple[str, Any]]:
        import pyarrow as pa

        return [(cls._column(), pa.float64())]

    def prepare(self, sample: Mapping[str, Any]) -> tuple[Any, Any, int | None]:
        """(reference, test, rate): uint8 HxWx3 images, or float (n, channels) audio and its rate."""
        views = sample.get("views") or {}
        tests = [v for tag, v in views.items() if tag != self.reference]
        if self.reference not in views or len(tests) != 1:
            raise ValueError(f"expected the views {self.reference} and one lossy set, got {sorted(views)}")
        field = self.requires[0]
        ref, test = views[self.reference].get(field), tests[0].get(field)
        if ref is None or test is None:
            raise ValueError(f"no {field} in both views")
        if field == "image":
            return as_numpy(ref), as_numpy(test), None
        rate = sample.get("sample_rate", tests[0].get("sample_rate"))
        if rate is None:
            raise ValueError("no sample_rate")
        return as_numpy(ref).T, as_numpy(test).T, int(rate)  # the loader's (channels, n) -> (n, channels)

    def run(self, model: Any, items: Sequence[tuple[Any, Any, int | None]]) -> list[dict[str, Any]]:
        """One batched call of the metric (it groups pairs of one size and moves them to its device)."""
        rates = [r for _, _, r in items]
        d = model.distances([a for a, _, _ in items], [b for _, b, _ in items],
                            rate=None if rates[0] is None else rates)
        return [{self._column(): float(v)} for v in d]

    @classmethod
    def aggregate(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import numpy as np

        column = cls._column()
        v = np.asarray([r.get(column) for r in ok_rows(rows) if r.get(column) is not None], dtype=np.float64)
        v = v[np.isfinite(v)]  # images below the network's smallest size score NaN, as at transcode time
        if not len(v):
            return {f: None for f in FIGURES}
        return {"mean": float(v.mean()), "median": float(np.median(v)), "p05": float(np.percentile(v, 5)),
                "p95": float(np.percentile(v, 95))}


@functools.lru_cache(maxsize=None)
def bound(metric: str) -> type[Similarity]:
    """The task for one deep metric: its column, the field it reads and definitions naming the column."""
    from ...metrics.deep import get_metric

    m = get_metric(metric)
    definitions = {k: v.replace("the per-sample distance", f"{m.column} ({metric})")
                   for k, v in Similarity.definitions.items()}
    return type(f"Similarity_{m.column}", (Similarity,), {"metric": metric, "column": m.column,
                                                          "requires": (m.modality,), "definitions": definitions})

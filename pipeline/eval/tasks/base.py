"""What every evaluation task declares and does; the tasks live one per module beside this one."""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

#: row statuses: evaluated, failed at eval, and a reference key this set lacks (failed at transcode or absent)
OK, ERROR, MISSING = "ok", "error", "missing"


class Task:
    """One kind of machine perception: its inputs, per-sample columns and aggregate figures.

    ``requires``: sample fields a set must have (decided from the set's fields, not its dataset
    name). ``models``: model kinds that can do the task; ``default_model`` when none is given.
    ``columns``: (name, pyarrow type factory name) of the per-sample columns after key/status/error.
    ``definitions``: the exact meaning of each aggregate figure (written into the result JSON).
    ``primary``: the figure the report plots; ``higher_is_better`` orients its BD-rate.
    ``reference``: the tag of a set read beside each evaluated set, sample by sample (similarity
    reads ``none``); that set must exist and is not evaluated itself.
    ``perception``: the figures measure a model's perception (False: a distortion measure, which
    the report correlates with the perception figures instead of plotting as one).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    default_model: ClassVar[str | None] = None
    definitions: ClassVar[Mapping[str, str]] = {}
    primary: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    reference: ClassVar[str | None] = None
    perception: ClassVar[bool] = True

    @classmethod
    def bind(cls, config: Any) -> type[Task]:
        """The task as this run's model shapes it (a task whose columns depend on the model overrides this)."""
        return cls

    @classmethod
    def columns(cls) -> list[tuple[str, Any]]:
        """(name, pyarrow type) of the per-sample columns."""
        raise NotImplementedError

    @classmethod
    def missing_fields(cls, fields: frozenset[str]) -> list[str]:
        return [f for f in cls.requires if f not in fields]

    def prepare(self, sample: Mapping[str, Any]) -> Any:
        """One sample's model input (raises on a sample that cannot be evaluated: an error row)."""
        raise NotImplementedError

    def run(self, model: Any, items: Sequence[Any]) -> list[dict[str, Any]]:
        """Per-sample columns for a batch of prepared inputs, in order."""
        raise NotImplementedError

    @classmethod
    def failure_row(cls, sample: Mapping[str, Any]) -> dict[str, Any] | None:
        """Columns a failed or missing sample counts as, built from the reference set's sample of the same
        key (its lossless fields: label, transcript, annotation; the payload is not needed); None: the task
        has no failure value (the key is excluded from the figures and counted in the coverage)."""
        return None

    @classmethod
    def aggregate(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The aggregate figures from the rows given: those with status ok, and error or missing rows that
        carry the task's failure columns (rows without them are not counted)."""
        raise NotImplementedError


def has_failure_value(task_cls: type[Task]) -> bool:
    """Whether the task defines a failure value (overrides :meth:`Task.failure_row`), so that a failed
    sample counts in its figures; without one the reference samples are not even read."""
    return getattr(task_cls.failure_row, "__func__", None) is not Task.failure_row.__func__  # type: ignore[attr-defined]


def counted_rows(rows: Sequence[Mapping[str, Any]], column: str) -> list[Mapping[str, Any]]:
    """Rows a figure counts: ok rows, and error or missing rows whose failure columns are filled in
    (``column`` is one the task's failure value always sets)."""
    return [r for r in rows if r.get("status") == OK
            or (r.get("status") in (ERROR, MISSING) and r.get(column) is not None)]


def ok_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("status") == OK]


def as_numpy(x: Any) -> Any:
    """A tensor or array as a numpy array (the loader may give either)."""
    import numpy as np

    if hasattr(x, "numpy"):
        return x.numpy()
    return np.asarray(x)

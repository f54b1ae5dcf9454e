"""Coverage against the reference set: every set's figures over the same keys.

A codec that fails on a sample (an unreachable ``bpp=`` target hits the hardest images first)
leaves it out of its set, and a sample can fail at eval; figures over what is left would be
over an easier subset. So every set is scored over the **reference keys**, the keys with status
ok in the lossless set ``none`` (its manifest, in shard order, the first N with ``--limit``):

- ``figures``: over all reference keys; a key missing here (an error row in this set's manifest,
  or absent) or failed at eval counts as the task's failure value, built by
  :meth:`~pipeline.eval.tasks.base.Task.failure_row` from the reference set's own sample of that
  key (lossless fields only, :func:`pipeline.loaders.lookup.lossless_fields`). A task without a
  failure value (separate, similarity) leaves such keys out and counts them as ``excluded``.
- ``figures_paired``: over the reference keys evaluated ok here.

Without a ``none`` set, each set's own ok keys are its reference keys (``coverage.reference`` is null).
The rows file keeps every evaluated row and adds one ``missing`` row per reference key this set
lacks; error and missing rows carry the failure columns, so both blocks are recomputable from it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import ConfigError
from ..store import layout
from ..store.storage import open_store
from .sets import EvalSet, child
from .tasks.base import ERROR, MISSING, OK, has_failure_value

REFERENCE = "none"

FIGURE_SETS = {
    "figures": "over every reference key ({ref}{limit}); a key missing from this set (failed at transcode or "
               "absent) or failed at eval counts as the task's failure value{excluded}",
    "figures_paired": "over the reference keys evaluated ok in this set ({paired})",
}


@dataclass(frozen=True)
class SetKeys:
    """One set's keys as its manifest records them, in manifest (shard) order."""

    ok: dict[str, str]  # key -> shard file holding it
    failed: dict[str, str]  # key -> the transcode error


def set_keys(s: EvalSet) -> SetKeys:
    """Read the key, shard, status and error columns of the set's ``manifest.parquet``."""
    import pyarrow.parquet as pq

    path = child(s.folder, layout.MANIFEST)
    try:
        data = open_store(s.folder).read_bytes(path)
        table = pq.read_table(io.BytesIO(data), columns=["key", "shard", "status", "error"])
    except (OSError, ValueError) as exc:
        raise ConfigError(f"set {s.tag}: cannot read {path} ({exc}); rewrite the set with mpq transcode") from None
    ok: dict[str, str] = {}
    failed: dict[str, str] = {}
    for key, shard, status, error in zip(*(table.column(c).to_pylist() for c in ("key", "shard", "status", "error"))):
        if status == OK:
            ok[str(key)] = str(shard)
        else:
            failed[str(key)] = str(error or status)
    return SetKeys(ok, failed)


@dataclass(frozen=True)
class KeyPlan:
    """What one set is scored over: the reference keys, where to read their lossless fields, its own keys."""

    reference: str | None  # tag of the reference set; None: the set's own keys are the reference keys
    source: str  # canonical codec of the set the failure values are read from (none, or the set itself)
    keys: dict[str, str]  # reference key -> shard of ``source`` holding it, in order
    own: SetKeys

    def wanted(self, s: EvalSet) -> list[tuple[str, tuple[str, ...]]]:
        """(shard, reference keys it holds) of set ``s``, in shard order: the samples a limited run evaluates."""
        by_shard: dict[str, list[str]] = {name: [] for name, _ in s.shards}
        for key in self.keys:
            shard = self.own.ok.get(key)
            if shard is not None and shard in by_shard:
                by_shard[shard].append(key)
        return [(name, tuple(keys)) for name, keys in by_shard.items() if keys]


def key_plans(sets: Sequence[EvalSet], reference: EvalSet | None, limit: int | None) -> dict[str, KeyPlan]:
    """Per set tag: its reference keys (the first ``limit`` ok keys of ``reference``, or of its own)."""
    ref_keys = set_keys(reference) if reference is not None else None
    plans = {}
    for s in sets:
        own = ref_keys if ref_keys is not None and reference is not None and s.tag == reference.tag else set_keys(s)
        base = ref_keys if ref_keys is not None else own
        keys = dict(list(base.ok.items())[:limit]) if limit is not None else dict(base.ok)
        plans[s.tag] = KeyPlan(reference.tag if reference is not None else None,
                               reference.codec if reference is not None else s.codec, keys, own)
    return plans


FailureLookup = Callable[[str, Mapping[str, str]], Mapping[str, "dict[str, Any] | str"]]


class FailureValues:
    """Failure columns per key, read once per run from the reference samples (cached across sets).

    ``get(codec, {key: shard})`` -> {key: failure columns, or the reason there are none}.
    """

    def __init__(self, task_cls: Any, out: str, dataset: str, split: str):
        self.task_cls, self.out, self.dataset, self.split = task_cls, out, dataset, split
        self.cache: dict[tuple[str, str], dict[str, Any] | str] = {}

    def get(self, codec: str, keys: Mapping[str, str]) -> dict[str, dict[str, Any] | str]:
        if not has_failure_value(self.task_cls):
            return {k: f"task {self.task_cls.name} has no failure value" for k in keys}
        todo: dict[str, list[str]] = {}
        for key, shard in keys.items():
            if (codec, key) not in self.cache:
                todo.setdefault(shard, []).append(key)
        if todo:
            from ..loaders.lookup import lossless_fields

            for key, sample in lossless_fields(self.out, self.dataset, self.split, codec, todo):
                self.cache[(codec, key)] = self._row(sample)
        return {k: self.cache[(codec, k)] for k in keys}

    def _row(self, sample: dict[str, Any] | Exception) -> dict[str, Any] | str:
        if isinstance(sample, Exception):
            return f"reference sample unreadable: {type(sample).__name__}: {sample}"[:300]
        try:
            row = self.task_cls.failure_row(sample)
        except Exception as exc:  # noqa: BLE001 - this key has no failure value; it is excluded and said why
            return f"no failure value from the reference sample: {type(exc).__name__}: {exc}"[:300]
        return row if row is not None else f"task {self.task_cls.name} has no failure value"


@dataclass
class Covered:
    """A set's rows with coverage applied: every row to write, the two row selections, the coverage block."""

    rows: list[dict[str, Any]]
    figure_rows: list[dict[str, Any]]
    paired_rows: list[dict[str, Any]]
    coverage: dict[str, Any]


def cover(rows: Iterable[dict[str, Any]], plan: KeyPlan, failures: FailureLookup) -> Covered:
    """Add missing rows and failure columns to a set's evaluated rows; count the coverage."""
    rows = list(rows)
    by_key = {r["key"]: r for r in rows}
    missing = [{"key": k, "status": MISSING, "error": _why_missing(k, plan.own)} for k in plan.keys if k not in by_key]
    failed = {r["key"]: r for r in [*(by_key[k] for k in plan.keys if k in by_key and by_key[k]["status"] != OK),
                                    *missing]}
    values = failures(plan.source, {k: plan.keys[k] for k in failed}) if failed else {}
    excluded = 0
    for key, row in failed.items():
        value = values[key]
        if isinstance(value, str):
            excluded += 1
            if row["status"] == MISSING:
                row["error"] = f"{row['error']}; {value}"
        else:
            row.update({c: v for c, v in value.items() if c not in ("key", "status", "error")})
    by_key.update((r["key"], r) for r in missing)
    figure_rows = [by_key[k] for k in plan.keys]
    paired = [r for r in figure_rows if r["status"] == OK]
    transcode = sum(r["status"] == MISSING and not r["error"].startswith(NOT_READ) for r in missing)
    coverage = {"reference": plan.reference, "reference_keys": len(plan.keys), "evaluated": len(paired),
                "failed_transcode": transcode, "failed_eval": len(failed) - transcode, "excluded": excluded,
                "extra": sum(r["key"] not in plan.keys for r in rows),
                "fraction": len(paired) / len(plan.keys) if plan.keys else None}
    return Covered(rows + missing, figure_rows, paired, coverage)


NOT_READ = "not evaluated"


def _why_missing(key: str, own: SetKeys) -> str:
    if key in own.failed:
        return f"failed at transcode: {own.failed[key]}"[:500]
    if key in own.ok:  # in the manifest as ok, yet no eval row: the shard did not give it
        return f"{NOT_READ}: ok in the set's manifest but not read from its shard {own.ok[key]}"
    return "absent from the set"


def figure_sets(reference: str | None, limit: int | None, excludes: bool) -> dict[str, str]:
    """The JSON's ``figure_sets``: one sentence per block saying over which keys it is computed."""
    if reference is not None:
        ref, paired = f"the keys ok in the set {reference}", f"ok both here and in {reference}"
    else:
        ref, paired = "no set none: this set's own ok keys", "no set none: its own keys"
    lim = f", the first {limit} in shard order" if limit is not None else ""
    exc = ("; this task has no failure value, so such keys are left out and counted in coverage.excluded"
           if excludes else "")
    return {name: text.format(ref=ref, limit=lim, excluded=exc, paired=paired) for name, text in FIGURE_SETS.items()}


__all__ = ["ERROR", "FailureValues", "KeyPlan", "REFERENCE", "SetKeys", "cover", "figure_sets", "key_plans",
           "set_keys"]

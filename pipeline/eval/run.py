"""Plan an evaluation (checks before any work), run its shard units on an executor, publish per set.

Per evaluated set: parts under ``eval/.parts/<task>-<model-tag>/<shard>.parquet``, then the
concatenated ``eval/<task>-<model-tag>.parquet`` and, last, ``eval/<task>-<model-tag>.json`` whose
figures are computed from the rows read back from that parquet. They are written beside the set
in its own store (:class:`~pipeline.store.storage.OutputStore`: a folder, or an object store where
each file is staged locally and uploaded whole under its final key), so nothing partial stands
under a final name and a rerun decides what is finished by reading what is there. Every set is scored over the
reference keys of the lossless set ``none`` (:mod:`.coverage`): ``figures`` over all of them, a
failed or missing sample counted as the task's failure value, ``figures_paired`` over those ok
here, and ``coverage`` counting each. A stamp (format, task, model, weights hash, limit, the
set's and the reference set's shard hashes) decides what is finished: a set whose JSON carries
the current stamp is skipped; parts made under another stamp are removed. The units run through
:func:`pipeline.run.units.run_units`, as transcode's do.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from ..store import layout
from ..store.storage import OutputStore, is_url, open_store
from ..store.writer import output_errors
from .config import EvalConfig
from .coverage import REFERENCE, FailureValues, KeyPlan, cover, figure_sets, key_plans
from .labels import check_label_space
from .models import get_model_kind
from .sets import EvalSet, child, find_sets
from .tasks import get_task
from .tasks.base import has_failure_value
from .reference import ReferenceShardTask, reference_units, run_reference_shard
from .unit import EvalShardTask, ShardOutcome, run_eval_shard

PARTS = ".parts"
FORMAT = "mpq-eval/2"


@dataclass
class EvalPlan:
    config: EvalConfig
    sets: list[EvalSet]
    model: dict[str, Any]  # name, library, version, weights sha256
    stamps: dict[str, str]  # set tag -> stamp
    todo: list[str]  # tags whose results are not finished
    tasks: list[EvalShardTask]
    keys: dict[str, KeyPlan] = field(default_factory=dict)  # set tag -> its reference keys (see .coverage)
    #: what runs: one unit per shard index for a task that reads a reference set (.reference); else ``tasks``
    units: list[ReferenceShardTask] = field(default_factory=list)


@dataclass
class EvalResult:
    plan: EvalPlan
    shards_run: int = 0
    shards_cached: int = 0
    published: list[dict[str, Any]] = field(default_factory=list)  # the JSON documents written
    failed: list[str] = field(default_factory=list)


def result_paths(s: EvalSet, config: EvalConfig) -> tuple[str, str, str]:
    """(parts folder, rows parquet, figures json) of one set: paths, or URLs for a remote output."""
    return (child(s.eval_dir, PARTS, config.name), child(s.eval_dir, f"{config.name}.parquet"),
            child(s.eval_dir, f"{config.name}.json"))


def read_result(store: OutputStore, json_path: str) -> dict[str, Any] | None:
    """A published result document, or None when there is none (or it is not readable JSON)."""
    try:
        if not store.is_file(json_path):
            return None
        doc = json.loads(store.read_bytes(json_path))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _stamp(config: EvalConfig, model: dict[str, Any], s: EvalSet, reference: EvalSet | None = None) -> str:
    what = {"format": FORMAT, "task": config.task, "model": config.model.canonical,
            "weights_sha256": model.get("weights_sha256"), "limit": config.limit, "shards": list(s.index_sha)}
    if reference is not None:  # a rewritten reference set changes the keys scored and the values read from it
        what["reference"] = list(reference.index_sha)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _finished(store: OutputStore, json_path: str, stamp: str) -> bool:
    doc = read_result(store, json_path)
    return doc is not None and doc.get("stamp") == stamp


def _shard_tasks(config: EvalConfig, s: EvalSet, parts: str, resources: dict | None,
                 keys: KeyPlan) -> list[EvalShardTask]:
    """Whole shards; with ``--limit``, the shards holding the first N reference keys, each told its keys."""
    def task(name: str, samples: int, wanted: tuple[str, ...] | None) -> EvalShardTask:
        part = child(parts, f"{layout.strip_shard_ext(name)}.parquet")
        return EvalShardTask(config.to_dict(), s.codec, name, str(part), samples, wanted, resources)

    if config.limit is None:
        return [task(name, n, None) for name, n in s.shards]
    return [task(name, len(wanted), wanted) for name, wanted in keys.wanted(s)]


def plan_eval(config: EvalConfig) -> EvalPlan:
    """Every check that can fail before work: task, model and weights, sets, fields; then the units."""
    kind = get_model_kind(config.model.kind)
    kind.check(config)
    task_cls = get_task(config.task).bind(config)
    sets = find_sets(config.out, config.dataset, config.split, config.codecs)
    baseline = next((s for s in sets if s.tag == REFERENCE), None)  # the keys every set is scored over
    reference = _reference_set(task_cls, config, sets)
    if reference is not None:
        sets = [s for s in sets if s.tag != reference.tag]
    for s in sets:
        lacking = task_cls.missing_fields(s.fields)
        if lacking:
            raise ConfigError(f"task {config.task} does not fit {config.dataset}/{config.split}: it needs sample "
                              f"fields {', '.join(task_cls.requires)}; set {s.tag} has {', '.join(sorted(s.fields))}")
    model = kind.preflight(config)  # last: it may download weights (never with --offline)
    model.update(check_label_space(config, task_cls, kind, sets))  # outputs against the sets' label space
    if config.variant:  # the report tells a fine-tuned model from its starting point by this
        model["variant"] = config.variant
    resources = {"GPU": 1} if kind.uses_torch and config.device.startswith("cuda") else None
    keys = key_plans(sets, baseline, config.limit)
    store = open_store(config.out)
    stamps, todo, tasks = {}, [], []
    for s in sets:
        stamps[s.tag] = _stamp(config, model, s, baseline)
        parts, _, json_path = result_paths(s, config)
        if _finished(store, json_path, stamps[s.tag]):
            continue
        todo.append(s.tag)
        tasks += _shard_tasks(config, s, parts, resources, keys[s.tag])
    # the reference decoded once per shard index for every set: a local output (on a store, each unit reads
    # its pair of shards through the store, as run_eval_shard does)
    local = not is_url(config.out)
    units = reference_units(config, sets, tasks, reference.tag) if reference is not None and local else []
    return EvalPlan(config, sets, model, stamps, todo, tasks, keys, units)


def _reference_set(task_cls: Any, config: EvalConfig, sets: list[EvalSet]) -> EvalSet | None:
    """The set a task reads beside each evaluated one (``none`` for similarity); it must exist and is
    not evaluated itself, so at least one other set must be there."""
    tag = task_cls.reference
    if tag is None:
        return None
    found = [s for s in sets if s.tag == tag]
    where = f"{config.out}/{config.dataset}/{config.split}"
    if not found:
        raise ConfigError(f"task {config.task} compares every set with the lossless set {tag}, and {where} has no "
                          f"finished set {tag} (write it with mpq transcode --codec {tag})")
    if len(sets) == 1:
        raise ConfigError(f"task {config.task}: {where} has only the reference set {tag}, nothing to compare with it")
    return found[0]


def _prepare_parts(plan: EvalPlan) -> None:
    """Remove results of another stamp and leftovers of a killed run; record the stamp of the parts."""
    store = open_store(plan.config.out)
    for s in plan.sets:
        if s.tag not in plan.todo:
            continue
        parts, _, json_path = result_paths(s, plan.config)
        store.remove(json_path)  # a half-run set never looks finished
        stamp_file = child(parts, "stamp")
        stamp = plan.stamps[s.tag].encode()
        present = store.names(parts, "")
        if present and ("stamp" not in present or store.read_bytes(stamp_file).strip() != stamp):
            _remove_parts(store, parts, present)
        store.remove_temps(parts)
        if not store.remote:
            with output_errors(parts):
                os.makedirs(parts, exist_ok=True)
        store.publish_bytes(stamp_file, stamp)


def _remove_parts(store: OutputStore, parts: str, names: list[str]) -> None:
    """Delete the parts of another stamp (the stamp file last: the folder is never half-marked current)."""
    if not store.remote:
        shutil.rmtree(parts, ignore_errors=True)
        return
    for name in sorted(names, key=lambda n: n == "stamp"):
        store.remove(child(parts, name))


def publish_set(plan: EvalPlan, s: EvalSet, failures: FailureValues | None = None) -> dict[str, Any]:
    """Concatenate the parts in shard order, add the coverage rows, then write the JSON from the rows read back."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .unit import rows_table, schema

    config = plan.config
    task_cls = get_task(config.task).bind(config)
    failures = failures or FailureValues(task_cls, config.out, config.dataset, config.split)
    store = open_store(config.out)
    _, rows_path, json_path = result_paths(s, config)
    names = [t.part for t in plan.tasks if t.codec == s.codec]
    table = (pa.concat_tables([pq.read_table(io.BytesIO(store.read_bytes(p))) for p in names]) if names
             else schema(task_cls).empty_table())
    covered = cover(table.to_pylist(), plan.keys[s.tag], failures.get)
    store.publish_file(rows_path, lambda p: pq.write_table(rows_table(task_cls, covered.rows), p))
    rows = pq.read_table(io.BytesIO(store.read_bytes(rows_path))).to_pylist()  # figures: from the rows as written
    by_key = {r["key"]: r for r in rows}
    coverage = covered.coverage
    figures = task_cls.aggregate([by_key[r["key"]] for r in covered.figure_rows])
    paired = task_cls.aggregate([by_key[r["key"]] for r in covered.paired_rows])
    ok = sum(r["status"] == "ok" for r in rows)
    doc = {"format": FORMAT, "dataset": config.dataset, "split": config.split, "codec": s.codec, "tag": s.tag,
           "task": config.task, "figures": figures, "figures_paired": paired,
           "figure_sets": figure_sets(coverage["reference"], config.limit, not has_failure_value(task_cls)),
           "coverage": coverage, "samples": ok, "errors": sum(r["status"] == "error" for r in rows),
           "model": plan.model, "device": config.device, "batch_size": config.batch_size, "limit": config.limit,
           "definitions": dict(task_cls.definitions), "rows": os.path.basename(rows_path),
           "columns": [name for name, _ in task_cls.columns()], "stamp": plan.stamps[s.tag],
           "versions": _versions()}
    text = json.dumps(doc, indent=1, allow_nan=False, default=_nan) + "\n"
    store.publish_bytes(json_path, text.encode())  # last: its presence means the set's result is complete
    return doc


def _nan(value: Any) -> Any:
    raise TypeError(f"not JSON serializable: {value!r}")


def _versions() -> dict[str, str]:
    from .. import __version__

    from importlib.metadata import PackageNotFoundError, version

    out = {"mpq-pipeline": __version__, "python": sys.version.split()[0]}
    for lib in ("torch", "torchvision", "torchmetrics", "jiwer", "museval"):
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:  # not installed: not recorded
            continue
    return out


def unit_label(t: EvalShardTask | ReferenceShardTask) -> str:
    return t.label if isinstance(t, ReferenceShardTask) else f"{t.codec} {t.shard}"


def unit_codecs(t: EvalShardTask | ReferenceShardTask) -> tuple[str, ...]:
    """The sets a unit writes parts of (a failed unit leaves each of them unpublished)."""
    return t.codecs if isinstance(t, ReferenceShardTask) else (t.codec,)


def evaluate(config: EvalConfig, executor: cf.Executor | None = None, *,
             progress: bool | Callable[[int, int], None] = False, planned: EvalPlan | None = None) -> EvalResult:
    """Run an evaluation; finished sets are skipped, finished parts reused (see the module doc).

    ``executor``: any ``concurrent.futures.Executor`` (:func:`pipeline.run.cluster.dask_executor` for
    Dask; default: this process). ``progress``: a tqdm bar (True) or ``progress(done, total)`` in samples.
    A unit that fails as a whole is listed in ``failed`` and its set is not published.
    """
    from ..run.driver import InlineExecutor
    from ..run.units import run_units

    plan = planned if planned is not None else plan_eval(config)
    units: Sequence[Any] = plan.units or plan.tasks  # one unit per shard index: the reference decoded once
    run_unit: Callable[[Any], Any] = run_reference_shard if plan.units else run_eval_shard
    _prepare_parts(plan)
    result = EvalResult(plan)

    def collect(t: Any, out: ShardOutcome | list[ShardOutcome]) -> None:
        for o in out if isinstance(out, list) else [out]:
            result.shards_cached += o.cached
            result.shards_run += not o.cached

    failed = run_units(executor or InlineExecutor(), run_unit, units, collect, label=unit_label,
                       weight=lambda t: t.samples, progress=progress, unit="sample",
                       desc=f"eval {config.dataset}/{config.split}")
    result.failed += [f.message for f in failed]  # a set with a failed unit is not published
    failed_sets = {c for f in failed for c in unit_codecs(f.unit)}
    failures = FailureValues(get_task(config.task).bind(config), config.out, config.dataset, config.split)
    store = open_store(config.out)
    for s in plan.sets:
        if s.tag in plan.todo and s.codec not in failed_sets:
            with store.failures(s.eval_dir):  # a store failing here: one line, nothing under a final name
                result.published.append(publish_set(plan, s, failures))
    return result

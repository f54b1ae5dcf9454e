"""Plan an evaluation (checks before any work), run its shard units on an executor, publish per set.

Per evaluated set: parts under ``eval/.parts/<task>-<model-tag>/<shard>.parquet``, then the
concatenated ``eval/<task>-<model-tag>.parquet`` and, last, ``eval/<task>-<model-tag>.json`` whose
figures are computed from the rows read back from that parquet. A stamp (task, model, weights
hash, limit, the set's shard hashes) decides what is finished: a set whose JSON carries the
current stamp is skipped; parts made under another stamp are removed.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..store import layout
from .config import EvalConfig
from .models import get_model_kind
from .sets import EvalSet, find_sets
from .tasks import get_task
from .unit import EvalShardTask, ShardOutcome, run_eval_shard

PARTS = ".parts"
FORMAT = "mpq-eval/1"


@dataclass
class EvalPlan:
    config: EvalConfig
    sets: list[EvalSet]
    model: dict[str, Any]  # name, library, version, weights sha256
    stamps: dict[str, str]  # set tag -> stamp
    todo: list[str]  # tags whose results are not finished
    tasks: list[EvalShardTask]


@dataclass
class EvalResult:
    plan: EvalPlan
    shards_run: int = 0
    shards_cached: int = 0
    published: list[dict[str, Any]] = field(default_factory=list)  # the JSON documents written
    failed: list[str] = field(default_factory=list)


def result_paths(s: EvalSet, config: EvalConfig) -> tuple[Path, Path, Path]:
    """(parts folder, rows parquet, figures json) of one set."""
    return s.eval_dir / PARTS / config.name, s.eval_dir / f"{config.name}.parquet", s.eval_dir / f"{config.name}.json"


def _stamp(config: EvalConfig, model: dict[str, Any], s: EvalSet, reference: EvalSet | None = None) -> str:
    what = {"task": config.task, "model": config.model.canonical, "weights_sha256": model.get("weights_sha256"),
            "limit": config.limit, "shards": list(s.index_sha)}
    if reference is not None:  # a rewritten reference set invalidates the results read against it
        what["reference"] = list(reference.index_sha)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _finished(json_path: Path, stamp: str) -> bool:
    try:
        return json.loads(json_path.read_text()).get("stamp") == stamp
    except (OSError, ValueError):
        return False


def _shard_tasks(config: EvalConfig, s: EvalSet, parts: Path, resources: dict | None) -> list[EvalShardTask]:
    left = config.limit
    out = []
    for name, n in s.shards:
        if left is not None and left <= 0:
            break
        take = n if left is None else min(n, left)
        part = parts / f"{layout.strip_shard_ext(name)}.parquet"
        out.append(EvalShardTask(config.to_dict(), s.codec, name, str(part), take,
                                 None if take == n else take, resources))
        if left is not None:
            left -= take
    return out


def plan_eval(config: EvalConfig) -> EvalPlan:
    """Every check that can fail before work: task, model and weights, sets, fields; then the units."""
    kind = get_model_kind(config.model.kind)
    kind.check(config)
    task_cls = get_task(config.task).bind(config)
    sets = find_sets(config.out, config.dataset, config.split, config.codecs)
    reference = _reference_set(task_cls, config, sets)
    if reference is not None:
        sets = [s for s in sets if s.tag != reference.tag]
    for s in sets:
        lacking = task_cls.missing_fields(s.fields)
        if lacking:
            raise ConfigError(f"task {config.task} does not fit {config.dataset}/{config.split}: it needs sample "
                              f"fields {', '.join(task_cls.requires)}; set {s.tag} has {', '.join(sorted(s.fields))}")
    model = kind.preflight(config)  # last: it may download weights (never with --offline)
    if config.variant:  # the report tells a fine-tuned model from its starting point by this
        model["variant"] = config.variant
    resources = {"GPU": 1} if kind.uses_torch and config.device.startswith("cuda") else None
    stamps, todo, tasks = {}, [], []
    for s in sets:
        stamps[s.tag] = _stamp(config, model, s, reference)
        parts, _, json_path = result_paths(s, config)
        if _finished(json_path, stamps[s.tag]):
            continue
        todo.append(s.tag)
        tasks += _shard_tasks(config, s, parts, resources)
    return EvalPlan(config, sets, model, stamps, todo, tasks)


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
    for s in plan.sets:
        if s.tag not in plan.todo:
            continue
        parts, _, json_path = result_paths(s, plan.config)
        json_path.unlink(missing_ok=True)  # a half-run set never looks finished
        stamp_file = parts / "stamp"
        if parts.is_dir() and (not stamp_file.is_file() or stamp_file.read_text() != plan.stamps[s.tag]):
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        for tmp in parts.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)
        stamp_file.write_text(plan.stamps[s.tag])


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish_set(plan: EvalPlan, s: EvalSet) -> dict[str, Any]:
    """Concatenate the parts in shard order, then write the JSON from the rows read back."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .unit import schema

    config = plan.config
    task_cls = get_task(config.task).bind(config)
    _, rows_path, json_path = result_paths(s, config)
    names = [Path(t.part) for t in plan.tasks if t.codec == s.codec]
    table = pa.concat_tables([pq.read_table(p) for p in names]) if names else schema(task_cls).empty_table()
    _atomic_write(rows_path, lambda p: pq.write_table(table, p))
    rows = pq.read_table(rows_path).to_pylist()
    ok = sum(r["status"] == "ok" for r in rows)
    doc = {"format": FORMAT, "dataset": config.dataset, "split": config.split, "codec": s.codec, "tag": s.tag,
           "task": config.task, "figures": task_cls.aggregate(rows), "samples": ok, "errors": len(rows) - ok,
           "model": plan.model, "device": config.device, "batch_size": config.batch_size, "limit": config.limit,
           "definitions": dict(task_cls.definitions), "rows": rows_path.name,
           "columns": [name for name, _ in task_cls.columns()], "stamp": plan.stamps[s.tag],
           "versions": _versions()}
    _atomic_write(json_path, lambda p: p.write_text(json.dumps(doc, indent=1, allow_nan=False, default=_nan) + "\n"))
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


def evaluate(config: EvalConfig, executor: cf.Executor | None = None, *,
             progress: bool | Callable[[int, int], None] = False, planned: EvalPlan | None = None) -> EvalResult:
    """Run an evaluation; finished sets are skipped, finished parts reused (see the module doc).

    ``executor``: any ``concurrent.futures.Executor`` (:func:`pipeline.run.cluster.dask_executor` for
    Dask; default: this process). ``progress``: a tqdm bar (True) or ``progress(done, total)`` in samples.
    A unit that fails as a whole is listed in ``failed`` and its set is not published.
    """
    from ..run.driver import InlineExecutor

    plan = planned if planned is not None else plan_eval(config)
    _prepare_parts(plan)
    result = EvalResult(plan)
    executor = executor or InlineExecutor()
    total = sum(t.samples for t in plan.tasks)
    bar = None
    if progress is True and plan.tasks:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="sample", desc=f"eval {config.dataset}/{config.split}", smoothing=0.1,
                   dynamic_ncols=True)
    futures = {executor.submit(run_eval_shard, t): t for t in plan.tasks}
    try:
        failed_sets = _collect(futures, result, bar, progress if callable(progress) else None, total)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    finally:
        if bar is not None:
            bar.close()
    for s in plan.sets:
        if s.tag in plan.todo and s.codec not in failed_sets:
            result.published.append(publish_set(plan, s))
    return result


def _collect(futures: dict[cf.Future, EvalShardTask], result: EvalResult, bar: Any,
             progress: Callable[[int, int], None] | None, total: int) -> set[str]:
    """Wait for the units, count them, advance the progress; returns the codecs of failed units."""
    failed: set[str] = set()
    done = 0
    for fut in cf.as_completed(futures):
        t = futures[fut]
        try:
            out: ShardOutcome = fut.result()
        except Exception as exc:  # noqa: BLE001 - a whole unit failed: report it, publish nothing of its set
            result.failed.append(f"{t.codec} {t.shard}: {type(exc).__name__}: {exc}")
            failed.add(t.codec)
            continue
        result.shards_cached += out.cached
        result.shards_run += not out.cached
        done += t.samples
        if bar is not None:
            bar.update(t.samples)
        elif progress is not None:
            progress(done, total)
    return failed

"""The unit of work: one shard of one set evaluated into a part file of per-sample rows.

Picklable and idempotent, like transcode's shard task: the part is published whole through the
output's store (a temporary name renamed into place, or a local staging file uploaded under its
final key), so a part that exists is complete and a rerun skips it. A worker reads the shards from
the store directly (no shared disk): a remote shard is fetched once per unit into a temporary
folder, checked against index.json, and removed with it; credentials come from the backend's
usual places on each worker, as for transcode. A sample that fails to
decode, to prepare or to run becomes an error row and the shard goes on.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping

from .config import EvalConfig
from .tasks.base import ERROR, OK


@dataclass(frozen=True)
class EvalShardTask:
    """Evaluate shard ``shard`` of the set ``codec``; ``keys``: only these samples (``--limit``: the
    reference keys the shard holds), else all of them."""

    config: Mapping[str, Any]  # EvalConfig.to_dict(): run settings travel with the task
    codec: str
    shard: str
    part: str  # the part file's final location (a path, or a URL beside a remote set)
    samples: int  # samples this task accounts for (progress)
    keys: tuple[str, ...] | None = None
    resources: Mapping[str, float] | None = field(default=None)  # {"GPU": 1}: routed by pipeline.run.cluster


@dataclass(frozen=True)
class ShardOutcome:
    part: str
    cached: bool
    ok: int = 0
    errors: int = 0


def schema(task_cls: Any) -> Any:
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("status", pa.string()), ("error", pa.string()),
                      *task_cls.columns()])


def rows_table(task_cls: Any, rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    sch = schema(task_cls)
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in sch} for r in rows], schema=sch)


def _error(key: str, exc: BaseException) -> dict[str, Any]:
    return {"key": key, "status": ERROR, "error": f"{type(exc).__name__}: {exc}"[:500]}


def evaluate_samples(task: Any, model: Any, samples: Any, batch_size: int, decode_errors: list,
                     keys: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Rows for the samples of an iterable, in order (only ``keys`` when given; reading stops once all
    are seen); ``decode_errors`` fills with (key, exc) as it goes."""
    rows: list[dict[str, Any]] = []
    batch: list[tuple[int, Any]] = []
    wanted = None if keys is None else set(keys)

    def flush() -> None:
        if not batch:
            return
        try:
            outs = task.run(model, [item for _, item in batch])
            pairs = list(zip((i for i, _ in batch), outs))
        except Exception:  # noqa: BLE001 - find the failing samples one by one
            pairs = []
            for i, item in batch:
                try:
                    pairs.append((i, task.run(model, [item])[0]))
                except Exception as exc:  # noqa: BLE001 - an error row, the shard goes on
                    rows[i].update(_error(rows[i]["key"], exc))
        for i, out in pairs:
            rows[i].update(out)
        batch.clear()

    def take_errors() -> None:
        while decode_errors:
            key, exc = decode_errors.pop(0)
            if wanted is not None:
                if key not in wanted:
                    continue
                wanted.discard(key)
            rows.append(_error(key, exc))

    def add(key: str, sample: Any) -> None:
        try:
            item = task.prepare(sample)
        except Exception as exc:  # noqa: BLE001
            rows.append(_error(key, exc))
            return
        rows.append({"key": key, "status": OK, "error": None})
        batch.append((len(rows) - 1, item))
        if len(batch) >= batch_size:
            flush()

    for sample in samples:
        take_errors()
        key = str(sample["__key__"])
        if wanted is not None:
            if key not in wanted:
                if not wanted:
                    break
                continue
            wanted.discard(key)
        add(key, sample)
        if wanted is not None and not wanted:
            break  # every wanted key seen: read no further sample
    take_errors()
    flush()
    return rows


def run_eval_shard(t: EvalShardTask) -> ShardOutcome:
    """Evaluate one shard into its part file (skipped when the part exists)."""
    import pyarrow.parquet as pq

    from ..loaders import load
    from ..store.storage import STAGING_ENV, open_store
    from .models import loaded
    from .tasks import get_task

    config = EvalConfig.from_dict(t.config)
    store = open_store(config.out)
    if store.is_file(t.part):
        return ShardOutcome(t.part, True)
    task_cls = get_task(config.task).bind(config)
    model = loaded(config)
    decode_errors: list[tuple[str, Exception]] = []

    def on_error(key: str, exc: Exception) -> None:
        decode_errors.append((key, exc))

    codecs: Any = t.codec if task_cls.reference is None else [task_cls.reference, t.codec]
    with tempfile.TemporaryDirectory(prefix="mpq-eval-shards-", dir=os.environ.get(STAGING_ENV) or None) as cache:
        # paired: the reference set's sample of the same key beside each sample, read in lockstep
        ds = load(config.out, config.dataset, config.split, codecs, paired=task_cls.reference is not None,
                  shards=[t.shard], image_format="numpy", on_error=on_error, cache_dir=cache)
        rows = evaluate_samples(task_cls(), model, ds, config.batch_size, decode_errors, t.keys)
    store.publish_file(t.part, lambda p: pq.write_table(rows_table(task_cls, rows), p))
    ok = sum(r["status"] == OK for r in rows)
    return ShardOutcome(t.part, False, ok, len(rows) - ok)

"""Tasks that read a reference set beside each evaluated set (``similarity`` reads ``none``): the reference
decoded once per run, not once per evaluated set.

Every set of one source listing cuts the samples into the same shards (shard ``j`` of each set holds the
same keys, less the samples a codec failed on), so one unit per shard index serves every set evaluated
in the run: it reads the reference's shard ``j`` once, sample by sample in shard order, and each set's
shard ``j`` beside it, and hands each set the pairs of the keys both hold, exactly as the loader's
``paired=True`` join does for one set (a key missing from either side is left out; a sample that fails
to decode on either side is an error row). Each set keeps its own batches and its own part file, so its
rows are those a unit of that set alone writes (tested), and a finished part is never redone.

Memory stays at one decoded reference sample plus each set's open batch: nothing holds a whole shard.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..errors import ConfigError, SampleError
from ..store import layout
from .config import EvalConfig
from .unit import EvalShardTask, ShardOutcome, _error, rows_table


@dataclass(frozen=True)
class ReferenceShardTask:
    """Shard ``j`` of every set in ``members`` (one :class:`~.unit.EvalShardTask` each: its shard file, part and
    keys), evaluated against the reference set's shard ``j`` (``reference_shard``), decoded once."""

    config: Mapping[str, Any]
    reference: str  # the reference set's tag
    reference_shard: str
    members: tuple[EvalShardTask, ...]
    resources: Mapping[str, float] | None = field(default=None)

    @property
    def samples(self) -> int:
        return sum(m.samples for m in self.members)

    @property
    def codecs(self) -> tuple[str, ...]:
        return tuple(m.codec for m in self.members)

    @property
    def label(self) -> str:
        return f"{self.reference_shard} for {len(self.members)} sets ({', '.join(self.codecs)})"


def reference_units(config: EvalConfig, sets: Sequence[Any], tasks: Sequence[EvalShardTask],
                    reference: str) -> list[ReferenceShardTask]:
    """One unit per shard index j over every set's task of that index, with the reference's shard j.

    Raises ConfigError when a set was written from another listing than the reference (source, shard
    size, limit) or with another number of shards: shard j would not hold the same keys.
    """
    from ..store.index import LocalRoot, read_index

    root = LocalRoot(config.out)
    ref = read_index(root, config.dataset, config.split, tag=reference)
    index: dict[tuple[str, str], int] = {}
    for s in sets:
        if not any(t.codec == s.codec for t in tasks):
            continue
        other = read_index(root, config.dataset, config.split, tag=s.tag)
        for what in ("source", "samples_per_shard", "limit"):
            if getattr(other, what) != getattr(ref, what):
                raise ConfigError(f"set {s.tag} and the reference set {reference} were written from different "
                                  f"listings ({what} differs): shard by shard they do not hold the same keys")
        if len(other.shards) != len(ref.shards):
            raise ConfigError(f"set {s.tag} has {len(other.shards)} shards, the reference set {reference} "
                              f"{len(ref.shards)}")
        index.update(((s.codec, e.name), j) for j, e in enumerate(other.shards))
    by_j: dict[int, list[EvalShardTask]] = {}
    for t in tasks:
        by_j.setdefault(index[(t.codec, t.shard)], []).append(t)
    return [ReferenceShardTask(members[0].config, reference, ref.shards[j].name, tuple(members),
                               members[0].resources) for j, members in sorted(by_j.items())]


class Rows:
    """One set's rows, built as its samples arrive: batches of ``batch_size`` through the task, a batch that
    fails retried sample by sample (the failing ones become error rows), as :func:`~.unit.evaluate_samples`."""

    def __init__(self, task: Any, model: Any, batch_size: int) -> None:
        self.task, self.model, self.batch_size = task, model, batch_size
        self.rows: list[dict[str, Any]] = []
        self.batch: list[tuple[int, Any]] = []

    def error(self, key: str, exc: BaseException) -> None:
        self.rows.append(_error(key, exc))

    def add(self, sample: Mapping[str, Any]) -> None:
        key = str(sample["__key__"])
        try:
            item = self.task.prepare(sample)
        except Exception as exc:  # noqa: BLE001 - an error row, the shard goes on
            self.error(key, exc)
            return
        self.rows.append({"key": key, "status": "ok", "error": None})
        self.batch.append((len(self.rows) - 1, item))
        if len(self.batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        try:
            outs = self.task.run(self.model, [item for _, item in self.batch])
            pairs = list(zip((i for i, _ in self.batch), outs))
        except Exception:  # noqa: BLE001 - find the failing samples one by one
            pairs = []
            for i, item in self.batch:
                try:
                    pairs.append((i, self.task.run(self.model, [item])[0]))
                except Exception as exc:  # noqa: BLE001
                    self.rows[i].update(_error(self.rows[i]["key"], exc))
        for i, out in pairs:
            self.rows[i].update(out)
        self.batch.clear()


class Stream:
    """One set's shard decoded in shard order, taken key by key: ``take(key)`` gives (sample, None) or
    (None, the error) for a key the set's manifest lists in that shard, asked for in shard order."""

    def __init__(self, config: EvalConfig, codec: str, shard: str, order: Mapping[str, int]) -> None:
        from ..loaders import load

        self.order = order
        self.errors: dict[str, Exception] = {}
        self.pending: dict[str, Any] | None = None
        self._it: Iterator[dict[str, Any]] = iter(load(config.out, config.dataset, config.split, codec,
                                                       shards=[shard], image_format="numpy",
                                                       on_error=self.errors.__setitem__))

    def take(self, key: str) -> tuple[dict[str, Any] | None, Exception | None]:
        pos = self.order[key]
        while True:
            if key in self.errors:
                return None, self.errors.pop(key)
            if self.pending is not None:
                got = str(self.pending["__key__"])
                if got == key:
                    sample, self.pending = self.pending, None
                    return sample, None
                if self.order.get(got, -1) > pos:  # read past it: the loader never handed it out
                    return None, SampleError(f"{key} was not read from its shard")
                self.pending = None  # a sample no set asked for
            try:
                self.pending = next(self._it)
            except StopIteration:
                return (None, self.errors.pop(key)) if key in self.errors else \
                    (None, SampleError(f"{key} was not read from its shard"))


def shard_keys(folder: Path, shard: str) -> list[str]:
    """The keys a set's manifest lists as ok in one shard, in shard order (the loader's join reads the same)."""
    import pyarrow.parquet as pq

    table = pq.read_table(folder / layout.MANIFEST, columns=["key", "shard", "status"])
    return [k for k, sh, st in zip(*(table.column(c).to_pylist() for c in ("key", "shard", "status")))
            if sh == shard and st == "ok"]


def paired_sample(key: str, reference: str, ref: Mapping[str, Any], tag: str, test: Mapping[str, Any]) -> dict:
    """The sample the loader's ``paired=True`` gives: the reference's fields at the top, a view per set."""
    return {**ref, "__key__": key, "views": {reference: dict(ref), tag: dict(test)}}


def run_reference_shard(t: ReferenceShardTask) -> list[ShardOutcome]:
    """Evaluate shard j of every member set whose part is missing, reading the reference's shard j once."""
    from ..codecs.spec import parse_spec
    from .models import loaded
    from .tasks import get_task

    todo = [m for m in t.members if not Path(m.part).is_file()]
    if not todo:
        return [ShardOutcome(m.part, True) for m in t.members]
    config = EvalConfig.from_dict(t.config)
    task_cls = get_task(config.task).bind(config)
    model = loaded(config)
    base = Path(config.out) / config.dataset / config.split
    ref_keys = shard_keys(base / t.reference, t.reference_shard)
    ref = Stream(config, t.reference, t.reference_shard, {k: i for i, k in enumerate(ref_keys)})
    tags = [parse_spec(m.codec).tag for m in todo]
    keys = [shard_keys(base / tag, m.shard) for m, tag in zip(todo, tags)]
    streams = [Stream(config, m.codec, m.shard, {k: i for i, k in enumerate(ks)}) for m, ks in zip(todo, keys)]
    wanted = [set(ks) if m.keys is None else set(ks) & set(m.keys) for m, ks in zip(todo, keys)]
    rows = [Rows(task_cls(), model, config.batch_size) for _ in todo]
    for key in ref_keys:  # shard order; each set takes the keys it holds (the paired join)
        takers = [i for i, w in enumerate(wanted) if key in w]
        if not takers:
            continue
        ref_sample, ref_exc = ref.take(key)
        for i in takers:
            test, exc = streams[i].take(key)
            if ref_exc is not None or exc is not None:
                rows[i].error(key, ref_exc or exc)  # type: ignore[arg-type]
            else:
                rows[i].add(paired_sample(key, t.reference, ref_sample, tags[i], test))  # type: ignore[arg-type]
    out = []
    for m, r in zip(todo, rows):
        r.flush()
        write_part(Path(m.part), task_cls, r.rows)
        ok = sum(x["status"] == "ok" for x in r.rows)
        out.append(ShardOutcome(m.part, False, ok, len(r.rows) - ok))
    return out + [ShardOutcome(m.part, True) for m in t.members if m not in todo]


def write_part(part: Path, task_cls: Any, rows: list[dict[str, Any]]) -> None:
    """The part file under a temporary name, then renamed: a part that exists is complete."""
    import pyarrow.parquet as pq

    part.parent.mkdir(parents=True, exist_ok=True)
    tmp = part.with_name(f".{part.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        pq.write_table(rows_table(task_cls, rows), tmp)
        os.replace(tmp, part)
    finally:
        tmp.unlink(missing_ok=True)

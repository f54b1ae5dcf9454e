"""The unit of work: one shard of source samples, encoded for every codec setting of the run.

Each source sample is read and decoded once and encoded for every setting still missing. A task
is idempotent: settings whose shard is already published (tar and stats agree with the plan,
size and SHA-256) are verified and skipped, so reruns and retries after a killed worker are safe.

A task that starts leaves a marker (``.NAME.attempt``) next to its first shard and removes it when
it ends, by success or by a Python exception. A marker found at the start therefore means an earlier
attempt's process died (a codec crashed it, the OOM killer, a killed worker): this attempt encodes
in a child process (:mod:`pipeline.run.isolation`), so the sample that crashes it again becomes one
error row and the rest of the shard is written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..store import layout
from ..codecs import get_codec, make_codec
from ..codecs.runtime import CodecRuntime, use
from ..sources.base import SampleRef, Source
from ..codecs.spec import CodecSpec
from ..store.storage import open_store
from ..store.writer import ShardWriter, dumps
from . import machine
from .events import (SampleEvent, SampleFailed, SampleRead, SettingEncoded, SettingFailed, import_modules,
                     sample_events)

#: measures of how this process computed a sample, not of the sample: in the manifest's row, not in the
#: shard's record (with the timings, every ``*_s``), so a shard's bytes do not depend on them
ROW_ONLY = ("decoded_from",)


@dataclass(frozen=True)
class ShardTask:
    source: Source
    dataset: str
    refs: Sequence[SampleRef]  # a tuple, or a slice of the split's Listing (materialized when the task runs)
    index: int
    specs: tuple[CodecSpec, ...]
    out: str
    options: dict[str, Any] = field(default_factory=dict)  # modality options, e.g. {"ms_ssim": True}
    modules: tuple[str, ...] = ()  # modules registering codecs from outside the package: imported first
    isolate: bool = False  # encode in a child process from the start (a crashing codec costs one sample)
    compression: str | None = None  # shard compression: None (plain .tar) or "gzip" (.tar.gz)
    verify_sources: bool = False  # rehash the sources of complete shards; redo those whose content changed
    runtime: CodecRuntime = CodecRuntime()  # weights folder, offline, device, threads: applied where it runs

    def plan_hash(self, spec: CodecSpec) -> str:
        """Identity of what this shard must contain for one setting; a change redoes the shard."""
        # where and how (``runtime``: weights folder, offline, device) is not what: moving the weights keeps shards
        plan = {"format": layout.FORMAT, "spec": spec.canonical, "options": self.options,
                "refs": [[r.key, r.source, r.label] for r in self.refs]}
        if self.compression is not None:  # only when set, so plain-tar plans (and their hashes) stay the same
            plan["compression"] = self.compression
        return hashlib.sha256(dumps(plan)).hexdigest()

    def sources_hash(self) -> str:
        """Identity of the state of every file the shard reads (each sample's listing stamp).

        Kept beside ``plan`` in the stats rather than inside it, so sets written before stamps existed
        still match their plan and a run can tell "the sources changed" from "the plan changed".
        """
        return hashlib.sha256(dumps([[r.key, r.stamp] for r in self.refs])).hexdigest()

    def paths(self, spec: CodecSpec) -> tuple[str, str]:
        """(folder, shard name without extension); the folder is a path or a URL (see :mod:`pipeline.store.storage`)."""
        folder = open_store(self.out).set_folder(self.dataset, self.source.split, spec.tag)
        return folder, layout.shard_name(self.dataset, self.source.split, spec, self.index)

    def shard_file(self, name: str) -> str:
        """The shard's file name: ``NAME.tar``, or ``NAME.tar.gz`` with gzip compression."""
        return f"{name}{layout.shard_ext(self.compression)}"

    @property
    def resources(self) -> dict[str, float] | None:
        """Dask worker resources this task needs: a GPU when a codec is a learned one or a deep metric runs."""
        import_modules(self.modules)
        if self.options.get("deep"):
            return {"GPU": 1}
        return {"GPU": 1} if any(get_codec(s.name).needs_gpu for s in self.specs) else None


@dataclass
class ShardResult:
    index: int
    written: list[str] = field(default_factory=list)  # tags encoded by this task
    cached: list[str] = field(default_factory=list)  # tags found complete and verified
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # tag -> stats record
    samples: int = 0
    isolated: bool = False  # encoded in a child process (after a crashed attempt, or asked for)
    crashes: int = 0  # child processes that died on a sample (each such sample is an error row)
    changed: list[str] = field(default_factory=list)  # tags redone because the shard's sources changed
    adopted: list[str] = field(default_factory=list)  # tags of an older set kept, their stats given the new key


def shard_state(task: ShardTask, spec: CodecSpec) -> tuple[str, dict[str, Any] | None]:
    """Whether a published shard can be kept: ``("ok" | "adopt", stats)``, else ``("changed" | "redo", None)``.

    Kept: its stats match the plan, its sources' stamps, and its tar's size and SHA-256. ``adopt``: a
    shard written before stamps existed, kept when no source file is newer than its stats and the
    label fields it recorded still hold. ``changed``: the plan holds but the sources differ (stamps, or
    their content with ``verify_sources``). ``redo``: missing, damaged, or planned otherwise.
    """
    store = open_store(task.out)
    folder, name = task.paths(spec)
    stats_file, tar = store.child(folder, layout.stats_name(name)), store.child(folder, task.shard_file(name))
    if not store.is_file(stats_file) or not store.is_file(tar):
        return "redo", None
    try:
        stats = json.loads(store.read_bytes(stats_file))
        if stats.get("plan") != task.plan_hash(spec) or stats.get("bytes") != store.size(tar):
            return "redo", None
        state = "ok"
        if stats.get("sources") != task.sources_hash():
            if stats.get("sources") is not None or not _unchanged_since(task, stats, store.mtime_ns(stats_file)):
                return "changed", None
            state = "adopt"
        if store.digest(tar) != (stats["bytes"], stats.get("sha256")):
            return "redo", None
    except (OSError, ValueError, KeyError):
        return "redo", None
    if task.verify_sources:
        from ..store.verify import stale_keys

        if stale_keys(task.source, task.refs, stats["rows"], store.read_bytes(tar)):
            return "changed", None
    return state, stats


def load_valid_stats(task: ShardTask, spec: CodecSpec) -> dict[str, Any] | None:
    """The stats of a published shard that can be kept as it is, else None."""
    return shard_state(task, spec)[1]


def _unchanged_since(task: ShardTask, stats: dict[str, Any], written_ns: int | None) -> bool:
    """An older shard's sources are unchanged: no file newer than its stats, its label fields still true."""
    from ..sources.base import newest_mtime_ns

    if written_ns is None:
        return False
    times = [t for t in (newest_mtime_ns(r.stamp) for r in task.refs) if t is not None]
    if times and max(times) > written_ns:
        return False
    refs = {r.key: r for r in task.refs}
    for row in stats["rows"]:
        ref = refs.get(row.get("key"))
        if ref is None or any(row.get(k) != v for k, v in task.source.label_fields(ref).items()):
            return False
    return True


def _adopt(task: ShardTask, spec: CodecSpec, stats: dict[str, Any]) -> dict[str, Any]:
    """Record the sources' key in an older shard's stats (the tar is left as it is)."""
    store = open_store(task.out)
    folder, name = task.paths(spec)
    stats = {**stats, "sources": task.sources_hash()}
    store.write_json(store.child(folder, layout.stats_name(name)), stats)
    return stats


def _json_float(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


class _Assembler:
    """Turns sample events into tar members and manifest rows, then publishes tar then stats."""

    def __init__(self, task: ShardTask, pending: list[CodecSpec]):
        self.task, self.pending = task, pending
        self.store = open_store(task.out)
        self.rows: list[list[dict[str, Any]]] = [[] for _ in pending]
        self.writers: dict[int, ShardWriter] = {}
        self.sample: SampleRead | None = None
        for j, spec in enumerate(pending):
            folder, name = task.paths(spec)
            self.store.remove_temps(folder, name)
            self.writers[j] = self.store.shard_writer(self.store.child(folder, task.shard_file(name)),
                                                      task.compression)

    def base(self, i: int) -> dict[str, Any]:
        ref = self.task.refs[i]
        return {"key": ref.key, "source": ref.source, **self.task.source.label_fields(ref)}

    def apply(self, event: SampleEvent) -> None:
        if isinstance(event, SampleFailed):
            for rows in self.rows:
                rows.append({**self.base(event.index), "status": "error", "error": event.reason})
        elif isinstance(event, SampleRead):
            self.sample = event
        elif isinstance(event, SettingFailed):
            sha = self._current(event.index).sha256
            self.rows[event.setting].append({**self.base(event.index), "source_sha256": sha, "status": "error",
                                             "error": event.reason})
        elif isinstance(event, SettingEncoded):
            self._encoded(event)
        else:
            raise ValueError(f"unknown sample event {event!r}")

    def _current(self, i: int) -> SampleRead:
        if self.sample is None or self.sample.index != i:
            raise RuntimeError(f"sample event {i} out of order")
        return self.sample

    def _encoded(self, event: SettingEncoded) -> None:
        i, j, members, m = event.index, event.setting, event.members, event.measures
        current = self._current(i)
        sha, attachments, fields = current.sha256, current.attachments, current.fields
        ref, spec, base = self.task.refs[i], self.pending[j], self.base(i)
        facts = {k: v for k, v in m.items() if not k.endswith("_s") and k not in ROW_ONLY}
        record = {**base, **fields, "dataset": self.task.dataset, "split": self.task.source.split,
                  "codec": spec.canonical, "source_sha256": sha,
                  **{k: _json_float(v) if isinstance(v, float) else v for k, v in facts.items()}}
        self.writers[j].add(ref.key, [*members, *sorted(attachments.items()), ("json", dumps(record))])
        self.rows[j].append({**base, **{k: v for k, v in fields.items() if k not in base},
                             "source_sha256": sha, "status": "ok", "error": None,
                             "payload_ext": members[0][0], **m})

    def publish(self, result: ShardResult) -> None:
        for j, spec in enumerate(self.pending):
            size, digest = self.writers[j].close()  # still listed while closing: a failure aborts it
            del self.writers[j]
            folder, name = self.task.paths(spec)
            for r in self.rows[j]:
                r["shard"] = self.task.shard_file(name)
                r["codec"] = spec.canonical
            stats = {"format": layout.FORMAT, "shard": self.task.shard_file(name), "index": self.task.index,
                     "spec": spec.canonical, "plan": self.task.plan_hash(spec),
                     "sources": self.task.sources_hash(), "bytes": size, "sha256": digest,
                     "samples": sum(r["status"] == "ok" for r in self.rows[j]),
                     "errors": sum(r["status"] == "error" for r in self.rows[j]),
                     "machine": machine.describe(get_codec(spec.name).uses_torch),  # what encoders' bytes depend on
                     "rows": [{k: (_json_float(v) if isinstance(v, float) else v) for k, v in r.items()}
                              for r in self.rows[j]]}
            self.store.write_json(self.store.child(folder, layout.stats_name(name)), stats)
            result.written.append(spec.tag)
            result.stats[spec.tag] = stats

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()
        self.writers.clear()


def attempt_marker(task: ShardTask, spec: CodecSpec) -> str:
    """Where a running attempt of this task says so (next to the shard of ``spec``)."""
    folder, name = task.paths(spec)
    return open_store(task.out).child(folder, layout.attempt_name(name))


def run_shard(task: ShardTask) -> ShardResult:
    """Encode one shard for every setting still missing; publish tar then stats, per setting.

    The run's codec settings (``task.runtime``) apply here, not this process's environment.
    """
    import_modules(task.modules)
    if not isinstance(task.refs, tuple):  # a slice of the listing: this shard's SampleRefs, made here
        task = dataclasses.replace(task, refs=tuple(task.refs))
    with use(task.runtime):
        return _run_shard(task)


def _run_shard(task: ShardTask) -> ShardResult:
    store = open_store(task.out)
    result = ShardResult(task.index, samples=len(task.refs))
    pending: list[CodecSpec] = []
    for spec in task.specs:
        state, stats = shard_state(task, spec)
        if stats is None:
            pending.append(spec)
            if state == "changed":
                result.changed.append(spec.tag)
            continue
        if state == "adopt":
            stats = _adopt(task, spec, stats)
            result.adopted.append(spec.tag)
        result.cached.append(spec.tag)
        result.stats[spec.tag] = stats
    # markers of earlier attempts, next to any of this task's shards (one may have died after publishing some)
    crashed = [m for m in (attempt_marker(task, s) for s in task.specs) if store.is_file(m)]
    if not pending:
        for m in crashed:  # it died after publishing everything: nothing is missing
            store.remove(m)
        return result

    markers = [attempt_marker(task, s) for s in pending]
    store.write_json(markers[0], {"host": socket.gethostname(), "pid": os.getpid(), "after_crash": bool(crashed)})
    assembler = None
    try:
        assembler = _Assembler(task, pending)
        if task.isolate or crashed:
            from .isolation import run_isolated

            result.isolated = True
            result.crashes = run_isolated(task, pending, assembler.apply)
        else:
            codecs = [make_codec(s) for s in pending]
            for event in sample_events(task, pending, codecs):
                assembler.apply(event)
        assembler.publish(result)
    except BaseException:
        if assembler is not None:
            assembler.abort()
        for m in {markers[0], *crashed}:  # a Python exception is no crash: the next attempt runs normally
            try:
                store.remove(m)
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        raise
    for m in {markers[0], *crashed}:
        store.remove(m)
    return result

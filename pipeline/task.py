"""The unit of work: one shard of source samples, encoded for every codec setting of the run.

Each source sample is read and decoded once and encoded for every setting still missing. A task
is idempotent: settings whose shard is already published (tar and stats agree with the plan,
size and SHA-256) are verified and skipped, so reruns and retries after a killed worker are safe.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import layout
from .codecs import make_codec
from .errors import SampleError
from .modalities import get_modality
from .sources.base import SampleRef, Source
from .spec import CodecSpec
from .writer import ShardWriter, dumps, file_digest, remove_stale_temps, write_json


@dataclass(frozen=True)
class ShardTask:
    source: Source
    dataset: str
    refs: tuple[SampleRef, ...]
    index: int
    specs: tuple[CodecSpec, ...]
    out: str
    options: dict[str, Any] = field(default_factory=dict)  # modality options, e.g. {"ms_ssim": True}

    def plan_hash(self, spec: CodecSpec) -> str:
        """Identity of what this shard must contain for one setting; a change redoes the shard."""
        plan = {"format": layout.FORMAT, "spec": spec.canonical, "options": self.options,
                "refs": [[r.key, r.source, r.label] for r in self.refs]}
        return hashlib.sha256(dumps(plan)).hexdigest()

    def paths(self, spec: CodecSpec) -> tuple[Path, str]:
        folder = layout.set_dir(self.out, self.dataset, self.source.split, spec)
        return folder, layout.shard_name(self.dataset, self.source.split, spec, self.index)


@dataclass
class ShardResult:
    index: int
    written: list[str] = field(default_factory=list)  # tags encoded by this task
    cached: list[str] = field(default_factory=list)  # tags found complete and verified
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # tag -> stats record
    samples: int = 0


def load_valid_stats(task: ShardTask, spec: CodecSpec) -> dict[str, Any] | None:
    """The stats of a published shard if it matches the plan and its tar's size and hash, else None."""
    folder, name = task.paths(spec)
    stats_file, tar = layout.stats_path(folder, name), layout.tar_path(folder, name)
    if not stats_file.is_file() or not tar.is_file():
        return None
    try:
        stats = json.loads(stats_file.read_text())
    except (OSError, ValueError):
        return None
    if stats.get("plan") != task.plan_hash(spec) or stats.get("bytes") != tar.stat().st_size:
        return None
    if file_digest(tar) != (stats["bytes"], stats.get("sha256")):
        return None
    return stats


def _json_float(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, SampleError) else f"{type(exc).__name__}: {exc}"


def run_shard(task: ShardTask) -> ShardResult:
    """Encode one shard for every setting still missing; publish tar then stats, per setting."""
    result = ShardResult(task.index, samples=len(task.refs))
    pending: list[CodecSpec] = []
    for spec in task.specs:
        stats = load_valid_stats(task, spec)
        if stats is not None:
            result.cached.append(spec.tag)
            result.stats[spec.tag] = stats
        else:
            pending.append(spec)
    if not pending:
        return result

    codecs = {s: make_codec(s) for s in pending}
    modality = get_modality(task.source.modality)
    writers: dict[CodecSpec, ShardWriter] = {}
    rows: dict[CodecSpec, list[dict[str, Any]]] = {s: [] for s in pending}
    try:
        for spec in pending:
            folder, name = task.paths(spec)
            remove_stale_temps(folder, name)
            writers[spec] = ShardWriter(layout.tar_path(folder, name))
        for ref in task.refs:
            base = {"key": ref.key, "source": ref.source, **task.source.label_fields(ref)}
            try:
                raw = task.source.read(ref)
                sha = hashlib.sha256(raw.data).hexdigest()
                prepared = modality.prepare(raw)
            except Exception as exc:  # per-sample: recorded, the run goes on
                for spec in pending:
                    rows[spec].append({**base, "status": "error", "error": _reason(exc)})
                continue
            for spec in pending:
                try:
                    members, m = modality.encode(codecs[spec], prepared, task.options)
                except Exception as exc:
                    rows[spec].append({**base, "source_sha256": sha, "status": "error", "error": _reason(exc)})
                    continue
                facts = {k: v for k, v in m.items() if not k.endswith("_s")}  # timings stay out of shards
                record = {**base, **raw.fields, "dataset": task.dataset, "split": task.source.split,
                          "codec": spec.canonical, "source_sha256": sha,
                          **{k: _json_float(v) if isinstance(v, float) else v for k, v in facts.items()}}
                writers[spec].add(ref.key, [*members, *sorted(raw.attachments.items()), ("json", dumps(record))])
                rows[spec].append({**base, **{k: v for k, v in raw.fields.items() if k not in base},
                                   "source_sha256": sha, "status": "ok", "error": None,
                                   "payload_ext": members[0][0], **m})
        for spec in pending:
            size, digest = writers.pop(spec).close()
            folder, name = task.paths(spec)
            for r in rows[spec]:
                r["shard"] = f"{name}.tar"
                r["codec"] = spec.canonical
            stats = {"format": layout.FORMAT, "shard": f"{name}.tar", "index": task.index,
                     "spec": spec.canonical, "plan": task.plan_hash(spec), "bytes": size, "sha256": digest,
                     "samples": sum(r["status"] == "ok" for r in rows[spec]),
                     "errors": sum(r["status"] == "error" for r in rows[spec]),
                     "rows": [{k: (_json_float(v) if isinstance(v, float) else v) for k, v in r.items()}
                              for r in rows[spec]]}
            write_json(layout.stats_path(folder, name), stats)
            result.written.append(spec.tag)
            result.stats[spec.tag] = stats
    finally:
        for w in writers.values():
            w.abort()
    return result

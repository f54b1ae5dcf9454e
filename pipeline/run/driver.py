"""Planner and executor: list the source, cut it into shards, run them on an executor, publish.

The core takes any ``concurrent.futures.Executor`` (Dask's ``Client.get_executor()``, a process
pool, or the in-process one below); Dask set-up lives in :mod:`pipeline.run.cluster`. Tasks that need a
GPU (a learned codec) and tasks that do not are separate, and each task says so in its
``resources``, which the Dask executor of :mod:`pipeline.run.cluster` uses to route them.

Output goes through :mod:`pipeline.store.storage` (a local folder or an fsspec URL). A location that
cannot be written stops the run with one :class:`~pipeline.errors.OutputError`, checked with a
probe before any work and again whenever a task fails to write.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..store import layout
from ..codecs import get_codec, lossless, runnable_codec
from ..codecs.runtime import use
from . import machine
from .checks import check_conflicts, check_deep_metrics, check_output
from .config import TranscodeConfig
from ..errors import ConfigError, OutputError
from ..modalities import get_modality
from ..sources import make_source
from ..sources.base import Source
from ..sources.listing import Listing
from ..codecs.spec import CodecSpec
from ..store.index import SetIndex, ShardEntry
from ..store.storage import open_store
from .schema import sample_schema
from .task import ShardResult, ShardTask, run_shard
from .units import run_units


class InlineExecutor(cf.Executor):
    """Runs each task when submitted, in this process: for tests, debugging and tiny runs."""

    def submit(self, fn, /, *args, **kwargs):
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            if isinstance(exc, KeyboardInterrupt):
                raise
            fut.set_exception(exc)
        return fut


@dataclass
class SetSummary:
    """What one codec setting's output holds after a run."""

    spec: str
    tag: str
    folder: str
    shards: int
    samples: int
    ok: int
    errors: int
    bytes: int
    rate_unit: str = ""  # bpp (images) or kbps (audio)
    rate_mean: float | None = None  # over ok samples; None when no sample is ok
    quality: str = ""  # psnr (images) or snr (audio), in dB
    quality_mean: float | None = None  # +inf when a sample is lossless, as in the report


def summary_columns(modality: str) -> tuple[str, str]:
    """(rate, quality) columns a run summary averages: the modality's declared report axes, as the report uses."""
    axes = get_modality(modality).REPORT
    return axes.rate, axes.primary


class _Means:
    """Sums and counts of the summary columns over a set's ok rows, fed one manifest piece at a time."""

    def __init__(self, columns: Sequence[str]):
        self.sums = {c: 0.0 for c in columns}
        self.counts = {c: 0 for c in columns}

    def add(self, table: pa.Table) -> None:
        ok = np.asarray(table.column("status").to_pylist(), dtype=object) == "ok"
        for c in self.sums:
            if c not in table.column_names:
                continue
            v = table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)[ok]  # nulls -> nan
            v = v[~np.isnan(v)]
            self.sums[c] += float(v.sum())
            self.counts[c] += len(v)

    def mean(self, column: str) -> float | None:
        return self.sums[column] / self.counts[column] if self.counts.get(column) else None


@dataclass
class RunResult:
    config: TranscodeConfig
    listed: int
    skipped_files: int
    shards_written: int = 0  # (shard, setting) pairs encoded by this run
    shards_cached: int = 0  # (shard, setting) pairs found complete
    shards_changed: int = 0  # of those written: pairs redone because their sources changed
    shards_adopted: int = 0  # of those cached: pairs of an older set whose stats got the sources' key
    sets: list[SetSummary] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the source said of its listing (folders skipped)


def plan(config: TranscodeConfig) -> tuple[Source, list[ShardTask]]:
    """Validate everything that can be checked before work, list the source, and cut it into shards."""
    for spec in config.codecs:
        codec = runnable_codec(spec.name)
        with use(config.runtime):  # the run's weights folder and offline setting, as on the workers
            codec.preflight(spec)  # e.g. a learned codec's weights: present, or downloaded, and checked
    source = make_source(config.dataset, config.root, config.split, dict(config.source_options))
    for spec in config.codecs:
        if get_codec(spec.name).modality not in (source.modality, "any"):  # "any": the lossless reference
            raise ConfigError(f"{spec.name} is an {get_codec(spec.name).modality} codec; "
                              f"{config.dataset} is an {source.modality} dataset")
        _check_container(spec, source.modality)
    check_deep_metrics(config, source.modality)
    refs = source.list()
    if config.limit is not None:
        refs = refs[: config.limit]
    n = config.samples_per_shard
    options: dict[str, Any] = {"ms_ssim": True} if config.ms_ssim else {}
    if not config.store_bitstream:  # only non-defaults, so existing plans (and their hashes) stay the same
        options["bitstream"] = False
    if not config.store_reconstruction:
        options["reconstruction"] = False
    for flag, name in ((config.pesq, "pesq"), (config.stoi, "stoi"), (config.store_decoded, "decoded_flac")):
        if flag:  # audio options, likewise only when on
            options[name] = True
    if config.max_pixels is not None:  # images: the source pixel limit, only when set
        options["max_pixels"] = config.max_pixels
    if config.deep_metrics:  # deep similarity metrics (their weights folder travels in the task's runtime)
        options["deep"] = list(config.deep_metrics)
    # codecs registered from outside the package: workers and child processes import these first
    builtin = set(_codec_families())
    modules = tuple(sorted({get_codec(s.name).__module__ for s in config.codecs} - builtin - {"__main__"}))
    # learned codecs (GPU) and the others go in separate tasks, so each can be routed to its workers
    groups = [g for g in ([s for s in config.codecs if not get_codec(s.name).needs_gpu],
                          [s for s in config.codecs if get_codec(s.name).needs_gpu]) if g]
    # a Listing slices into views (the client never holds a SampleRef per sample); a plain list into tuples
    parts = [refs[i: i + n] if isinstance(refs, Listing) else tuple(refs[i: i + n]) for i in range(0, len(refs), n)]
    tasks = [ShardTask(source, config.dataset, part, i, tuple(group), config.out, options, modules=modules,
                       compression=config.shard_compression, verify_sources=config.verify_sources,
                       runtime=config.runtime)
             for group in groups for i, part in enumerate(parts)]
    return source, tasks


def _check_container(spec: CodecSpec, modality: str) -> None:
    """A lossless container other than PNG: only for images, and only where its library can write it."""
    container = spec.get(lossless.PARAM)
    if container is None:
        return
    if modality != "image":
        raise ConfigError(f"{spec.canonical}: container= chooses how images are stored; {modality} "
                          f"references are FLAC")
    reason = lossless.unavailable(container)
    if reason:
        raise ConfigError(f"{spec.canonical}: container {container} cannot be written here: {reason}")


def _codec_families() -> tuple[str, ...]:
    from .. import codecs

    return tuple(getattr(codecs, "_FAMILIES", ()))


def _library_versions(specs: Iterable[CodecSpec]) -> dict[str, dict[str, str]]:
    import numpy
    import PIL

    from ..version import __version__

    base = {"mpq-pipeline": __version__, "python": sys.version.split()[0], "numpy": numpy.__version__,
            "pillow": PIL.__version__}
    return {s.canonical: {**base, **get_codec(s.name).versions(),
                          **(lossless.versions(s[lossless.PARAM]) if s.get(lossless.PARAM) else {})} for s in specs}


COMMON_COLUMNS = [("key", pa.string()), ("shard", pa.string()), ("codec", pa.string()), ("status", pa.string()),
                  ("error", pa.string())]
TAIL_COLUMNS = [("source", pa.string()), ("source_sha256", pa.string()), ("label", pa.int64()),
                ("payload_ext", pa.string()), ("encode_s", pa.float64()), ("decode_s", pa.float64()),
                ("deep_s", pa.float64())]


def manifest_schema(modality: str) -> pa.Schema:
    return pa.schema(COMMON_COLUMNS + get_modality(modality).COLUMNS + TAIL_COLUMNS)


def manifest_table(rows: list[dict[str, Any]], modality: str = "image",
                   extra: Sequence[str] | None = None) -> pa.Table:
    """Rows to a table with the fixed columns first; extra source fields (wnid, ...) follow as strings.

    ``extra`` fixes those extra columns (for tables written piece by piece into one file); by
    default they are the rows' own keys beyond the fixed columns.
    """
    schema = manifest_schema(modality)
    inf_when_exact = getattr(get_modality(modality), "INF_WHEN_EXACT", ("psnr",))
    if extra is None:
        extra = sorted({k for r in rows for k in r} - set(schema.names))
    cols: dict[str, list[Any]] = {name: [] for name in schema.names + extra}
    for r in rows:
        for name in cols:
            v = r.get(name)
            if name in inf_when_exact and r.get("status") == "ok" and r.get("mse") == 0:
                v = math.inf  # lossless: stored as null in JSON, +inf here
            cols[name].append(v)
    arrays = [pa.array(cols[f.name], type=f.type) for f in schema]
    arrays += [pa.array([None if v is None else str(v) for v in cols[e]], type=pa.string()) for e in extra]
    return pa.Table.from_arrays(arrays, schema=pa.schema(list(schema) + [pa.field(e, pa.string()) for e in extra]))


def _publish_set(config: TranscodeConfig, source: Source, spec: CodecSpec, tasks: list[ShardTask],
                 stats: dict[int, dict[str, Any]], versions: dict[str, str], row_keys: set[str]) -> SetSummary:
    store = open_store(config.out)
    folder = store.set_folder(config.dataset, source.split, spec.tag)
    tasks = [t for t in tasks if spec in t.specs]
    # the rows are read back from each shard's stats, one shard at a time, so the client never holds
    # a whole split's manifest (ImageNet-train: about 2.6 GB per setting) in memory
    extra = sorted(row_keys - set(manifest_schema(source.modality).names))
    listed = 0
    buf = pa.BufferOutputStream()
    writer = None
    rate, quality = summary_columns(source.modality)
    means = _Means((rate, quality))
    for t in tasks:
        name = layout.shard_name(config.dataset, source.split, spec, t.index)
        rows = json.loads(store.read_bytes(store.child(folder, layout.stats_name(name))))["rows"]
        table = manifest_table(rows, source.modality, extra)
        if writer is None:
            writer = pq.ParquetWriter(buf, table.schema)
        writer.write_table(table)
        means.add(table)
        listed += len(rows)
    if writer is None:  # no shard at all cannot happen (an empty source is a ConfigError); be safe
        writer = pq.ParquetWriter(buf, manifest_table([], source.modality, extra).schema)
    writer.close()
    store.publish_bytes(store.child(folder, layout.MANIFEST), buf.getvalue().to_pybytes())
    # shards beyond this plan (a rerun with a smaller --limit) are stale: remove them, and so are
    # shard files of the other compression (a rerun that switched --shard-compression)
    keep = {layout.shard_name(config.dataset, source.split, spec, t.index) for t in tasks}
    ext = layout.shard_ext(config.shard_compression)
    for name in store.names(folder, layout.shard_prefix(config.dataset, source.split, spec)):
        if name.endswith(layout.STATS_SUFFIX):
            stem, other_ext = name.removesuffix(layout.STATS_SUFFIX), False
        else:
            stem = layout.strip_shard_ext(name)
            other_ext = stem != name and name[len(stem):] != ext
        if stem not in keep or other_ext:
            store.remove(store.child(folder, name))
    shards = tuple(ShardEntry(stats[t.index]["shard"], stats[t.index]["samples"], stats[t.index]["errors"],
                              stats[t.index]["bytes"], stats[t.index]["sha256"]) for t in tasks)
    ok = sum(s.samples for s in shards)
    errors = sum(s.errors for s in shards)
    machines = machine.distinct(stats[t.index].get("machine") for t in tasks)  # where the shards were encoded
    index = SetIndex(
        dataset=config.dataset, split=source.split, codec=spec.canonical, tag=spec.tag, modality=source.modality,
        shards=shards, schema=sample_schema(source, spec, tasks[0].options if tasks else {}), spec=spec.to_dict(),
        source=source.describe(), samples_per_shard=config.samples_per_shard, limit=config.limit,
        ms_ssim=config.ms_ssim, versions={**versions, "machines": machines},
        counts={"listed": listed, "ok": ok, "error": errors},
        manifest=layout.MANIFEST, shard_compression=config.shard_compression,  # (the loaders need
        max_pixels=config.max_pixels)  # $MPQ_MAX_PIXELS at least max_pixels high)
    # last: its presence means the set is complete
    store.write_json(store.child(folder, layout.INDEX), index.to_dict())
    return SetSummary(spec.canonical, spec.tag, folder, len(shards), listed, ok, errors,
                      sum(s.bytes for s in shards), rate, means.mean(rate), quality, means.mean(quality))


def progress_units(tasks: list[ShardTask], settings: int) -> tuple[str, Callable[[ShardTask], int]]:
    """What progress counts, and how much of it a task is: each sample once, whatever the grouping.

    Tasks normally carry every setting, and progress counts samples. When learned and other codecs
    run as separate tasks over the same samples (GPU and CPU groups), a sample would count once per
    group; then progress counts encodes, one per sample and setting.
    """
    if all(len(t.specs) == settings for t in tasks):
        return "sample", lambda t: len(t.refs)
    return "encode", lambda t: len(t.refs) * len(t.specs)


def transcode(config: TranscodeConfig, executor: cf.Executor | None = None, *,
              progress: bool | Callable[[int, int], None] = False, isolate: bool = False,
              planned: tuple[Source, list[ShardTask]] | None = None) -> RunResult:
    """Run a transcode; returns what was written. Shards already complete are verified and skipped.

    ``executor`` defaults to running in this process; pass ``Client.get_executor()`` or
    :func:`pipeline.run.cluster.dask_executor` for Dask. ``progress`` shows a tqdm bar (True) or calls
    ``progress(done, total)``, counting samples, or encodes (sample x setting) when learned and other
    codecs run as separate tasks over the same samples (see :func:`progress_units`). ``isolate`` encodes
    every shard in a child process from the start, so a codec that crashes its process costs one
    sample even on the first attempt (retries always do this).
    Raises OutputError when the output location cannot be written (nothing partial is left).
    """
    # ``planned``: the result of ``plan(config)`` when the caller already listed the source (the CLI
    # validates before it starts a cluster), so a big dataset is not listed twice
    source, tasks = planned if planned is not None else plan(config)
    if isolate:
        tasks = [dataclasses.replace(t, isolate=True) for t in tasks]
    check_conflicts(config, source)
    check_output(config, source)
    listed = sum(len(t.refs) for t in {t.index: t for t in tasks}.values())  # keys are unique in a listing
    unit, weight = progress_units(tasks, len(config.codecs))
    result = RunResult(config, listed, getattr(source, "skipped", 0), notes=list(source.listing_notes()))
    _reset_sets(config, source.split)
    executor = executor or InlineExecutor()
    tags = [s.tag for s in config.codecs]
    stats: dict[str, dict[int, dict[str, Any]]] = {tag: {} for tag in tags}
    row_keys: dict[str, set[str]] = {tag: set() for tag in tags}

    def collect(task: ShardTask, res: ShardResult) -> None:
        result.shards_written += len(res.written)
        result.shards_cached += len(res.cached)
        result.shards_changed += len(res.changed)
        result.shards_adopted += len(res.adopted)
        for tag, st in res.stats.items():  # keep the figures, not the rows (they stay in _stats.json)
            row_keys[tag].update(k for r in st["rows"] for k in r)
            stats[tag][task.index] = {k: v for k, v in st.items() if k != "rows"}

    # an unwritable output stops everything: every other task would fail the same way
    failed = run_units(executor, run_shard, tasks, collect, label=lambda t: f"shard {t.index:06d}", weight=weight,
                       progress=progress, unit=unit, desc=f"{config.dataset}/{source.split}", fatal=(OutputError,))
    result.failed += [f.message for f in failed]
    if result.failed:
        return result
    versions = _library_versions(config.codecs)
    for spec in config.codecs:
        result.sets.append(_publish_set(config, source, spec, tasks, stats[spec.tag], versions[spec.canonical],
                                        row_keys[spec.tag]))
    return result


def _reset_sets(config: TranscodeConfig, split: str) -> None:
    """Before a run: each set's index goes (it is rewritten last, so a half-run set never looks
    complete), and so do temporary leftovers of a killed run, also next to shards that are complete."""
    store = open_store(config.out)
    for spec in config.codecs:
        folder = store.set_folder(config.dataset, split, spec.tag)
        store.remove(store.child(folder, layout.INDEX))
        store.remove_temps(folder)

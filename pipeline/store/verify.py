"""Check finished sets without writing: shards against their index, manifests against indexes, and
(on demand) every recorded ``source_sha256`` against the source file now on disk.

``mpq verify`` is a thin layer over :func:`verify_output`; ``mpq transcode --verify-sources`` uses
:func:`stale_keys` to redo complete shards whose sources changed while their size and time did not.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from . import layout
from .storage import OutputStore, open_store


@dataclass(frozen=True)
class Problem:
    """One thing that is stale or damaged: where (a set folder, a shard, a sample key) and what."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class VerifyReport:
    sets: int = 0
    shards: int = 0
    sources_checked: int = 0  # samples whose source was rehashed
    problems: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def tar_members(data: bytes) -> dict[str, dict[str, bytes]]:
    """A shard's members grouped by sample: ``key -> {extension: bytes}`` (plain or gzip tar)."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for info in tar:
            if info.isfile():
                key, _, ext = info.name.partition(".")
                member = tar.extractfile(info)
                if member is None:  # a regular file always has one; tarfile's type cannot say so
                    raise ValueError(f"tar member {info.name} cannot be read")
                out.setdefault(key, {})[ext] = member.read()
    return out


def stale_keys(source: Any, refs: Iterable[Any], rows: Sequence[dict[str, Any]],
               tar: bytes | None = None) -> list[str]:
    """Keys of ``rows`` whose source now differs from what was recorded.

    Each recorded sample's source is read again: its main bytes must hash to ``source_sha256``, and
    with the shard's bytes (``tar``) its verbatim members (annotations, transcripts, stems) must equal
    what the source gives now. A source that cannot be read any more is stale too.
    """
    by_key = {r.key: r for r in refs}
    members = tar_members(tar) if tar is not None else None
    stale = []
    for row in rows:
        recorded, key = row.get("source_sha256"), row.get("key")
        if recorded is None:  # never read (an error row): nothing recorded to compare
            continue
        if not isinstance(key, str):
            raise ValueError(f"a row records source_sha256 {recorded} but no sample key")
        ref = by_key.get(key)
        try:
            raw = source.read(ref) if ref is not None else None
        except Exception:  # noqa: BLE001 - unreadable now: the shard no longer matches its source
            raw = None
        if raw is None or hashlib.sha256(raw.data).hexdigest() != recorded:
            stale.append(key)
        elif members is not None and row.get("status") == "ok":
            stored = members.get(key, {})
            if any(stored.get(ext) != data for ext, data in raw.attachments.items()):
                stale.append(key)
    return stale


def read_manifest(data: bytes, columns: list[str] | None = None) -> Any:
    """A manifest's table read in this thread: no Arrow thread pool is started (pools alive at exit
    abort some processes), and from an Arrow buffer, not a Python file object."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data), columns=columns, use_threads=False, pre_buffer=False)


def _set_indexes(store: OutputStore, dataset: str | None, split: str | None) -> list[str]:
    """Every ``OUT/<dataset>/<split>/<tag>/index.json`` (narrowed by dataset and split)."""
    return store.glob(store.join(dataset or "*", split or "*", "*", layout.INDEX))


def _check_shards(store: OutputStore, folder: str, index: dict[str, Any], report: VerifyReport) -> None:
    names = set()
    for shard in index.get("shards", []):
        loc = store.child(folder, shard["name"])
        names.add(shard["name"])
        report.shards += 1
        if not store.is_file(loc):
            report.problems.append(Problem(loc, "missing shard"))
        elif store.size(loc) != shard["bytes"]:  # one metadata request; the bytes are read only when it matches
            report.problems.append(Problem(loc, f"damaged: {store.size(loc)} bytes, {layout.INDEX} records "
                                                f"{shard['bytes']}"))
        elif store.digest(loc) != (shard["bytes"], shard["sha256"]):  # streamed (remote: ranged reads)
            report.problems.append(Problem(loc, f"damaged: size or SHA-256 differs from {layout.INDEX}"))
    prefix = f"{index['dataset']}-{index['split']}-{index['tag']}-"
    for name in store.names(folder, prefix):
        if layout.strip_shard_ext(name) != name and name not in names:
            report.problems.append(Problem(store.child(folder, name), f"stray shard not in {layout.INDEX}"))


def _check_manifest(store: OutputStore, folder: str, index: dict[str, Any], report: VerifyReport) -> list[dict]:
    """Manifest rows (key, shard, status, source_sha256) after checking them against the index."""
    loc = store.child(folder, index.get("manifest", layout.MANIFEST))
    try:
        table = read_manifest(store.read_bytes(loc), ["key", "shard", "status", "source_sha256"])
    except Exception as exc:  # noqa: BLE001 - missing or unreadable: reported, the other checks go on
        report.problems.append(Problem(loc, f"unreadable manifest ({type(exc).__name__})"))
        return []
    rows = table.to_pylist()
    per_shard: dict[str, list[int]] = {}
    for r in rows:
        ok_err = per_shard.setdefault(r["shard"], [0, 0])
        ok_err[r["status"] != "ok"] += 1
    want = {s["name"]: [s["samples"], s["errors"]] for s in index.get("shards", [])}
    for name in sorted(set(want) | set(per_shard)):
        if want.get(name) != per_shard.get(name):
            report.problems.append(Problem(store.child(folder, name), f"manifest has {per_shard.get(name)} ok/error "
                                                                      f"rows, {layout.INDEX} {want.get(name)}"))
    counts = index.get("counts", {})
    if counts.get("listed") != len(rows):
        report.problems.append(Problem(loc, f"{len(rows)} rows, {layout.INDEX} counts {counts.get('listed')}"))
    return rows


def verify_output(out: str, *, dataset: str | None = None, split: str | None = None,
                  sources: str | None = None) -> VerifyReport:
    """Check every set under ``out`` (a folder or an fsspec URL; or one dataset/split); ``sources``: the root
    to rehash sources from."""
    store = open_store(out)
    store.check_readable()  # a missing bucket, credentials or endpoint: ConfigError, one line
    report = VerifyReport()
    listed: dict[tuple[str, str], dict[str, Any]] = {}  # (dataset, split) -> its source, refs, hashes of files now
    for index_loc in _set_indexes(store, dataset, split):
        folder = index_loc.rsplit("/", 1)[0]
        try:
            index = json.loads(store.read_bytes(index_loc))
        except ValueError:
            report.problems.append(Problem(index_loc, "unreadable index"))
            continue
        report.sets += 1
        _check_shards(store, folder, index, report)
        rows = _check_manifest(store, folder, index, report)
        _check_labels(store, folder, index, report)
        if sources is not None:
            cache = listed.setdefault((index["dataset"], index["split"]), {})
            _check_sources(index, rows, sources, cache, folder, report)
    if report.sets == 0:
        report.problems.append(Problem(out, "no finished set (no index.json) here"))
    return report


def _check_labels(store: OutputStore, folder: str, index: dict[str, Any], report: VerifyReport) -> None:
    """An ImageNet set written before labels were standard ILSVRC-2012 indices (its index records no
    ``source.labels``): its manifest's labels against the standard index of each sample's wnid.

    A set of the full 1,000 classes had them right already (sorted folders are the standard order);
    a subset, or a tree with a stray folder, did not. Without timm the standard list is unknown here
    and nothing is said."""
    source = index.get("source") or {}
    if source.get("name", index.get("dataset")) != "imagenet" or "labels" in source:
        return
    from ..sources.synsets import timm_list

    standard = timm_list()
    loc = store.child(folder, index.get("manifest", layout.MANIFEST))
    try:
        rows = read_manifest(store.read_bytes(loc), ["key", "label", "wnid"]).to_pylist()
    except Exception:  # noqa: BLE001 - unreadable manifests are reported by _check_manifest
        return
    if standard is None:
        return
    position = standard.index()
    wrong = [r for r in rows if r["wnid"] is not None and r["label"] is not None
             and position.get(r["wnid"]) != r["label"]]
    if wrong:
        r = wrong[0]
        report.problems.append(Problem(folder, (
            f"labels are not the standard ILSVRC-2012 indices ({len(wrong)} of {len(rows)} samples differ, e.g. "
            f"{r['key']}: {r['wnid']} has label {r['label']}, standard {position.get(r['wnid'])}); this set was "
            f"written before labels followed the standard list: rewrite it by rerunning mpq transcode imagenet "
            f"ROOT --split {index.get('split')} --codec {index.get('codec')} with this version (into this --out: "
            f"the shards whose labels change are rewritten, evaluations of the set redone; or into a new folder)")))


def _check_sources(index: dict[str, Any], rows: list[dict], root: str, cache: dict[str, Any],
                   folder: str, report: VerifyReport) -> None:
    """Each row's recorded source_sha256 against the file under ``root`` now (each file hashed once per run)."""
    from ..errors import ConfigError
    from ..sources import make_source

    if "source" not in cache:  # one listing per dataset and split, shared by its settings
        described = index.get("source", {})
        try:
            source = make_source(described.get("name", index["dataset"]), root, index["split"],
                                 dict(described.get("options", {})))
            cache.update(source=source, refs={r.key: r for r in source.list()}, sha={})
        except ConfigError as exc:
            report.problems.append(Problem(folder, f"cannot list the sources under {root}: {exc}"))
            return
    source, refs, sha = cache["source"], cache["refs"], cache["sha"]
    for r in rows:
        if r["source_sha256"] is None:
            continue
        report.sources_checked += 1
        key = r["key"]
        if key not in sha:
            try:
                sha[key] = hashlib.sha256(source.read(refs[key]).data).hexdigest() if key in refs else "gone"
            except Exception:  # noqa: BLE001 - unreadable now
                sha[key] = None
        if sha[key] != r["source_sha256"]:
            what = {"gone": "source gone", None: "source unreadable"}.get(sha[key], "source changed")
            report.problems.append(Problem(f"{folder} {key}", f"{what} since the shard was written"))

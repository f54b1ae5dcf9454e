"""Which finished sets exist under ``OUT/D/S`` and what their samples hold.

The one place evaluation learns about sets: their spec and index.json, their shard names and
sample counts, and the sample fields (``image``, ``label``, ``segmentation``, ``audio``,
``transcript``, ``mixture``, ``stems``). Fields come from the set index when it declares them,
else from the first sample of the first shard (its member names and its ``.json`` record), so
whether a task fits a set never depends on the dataset's name.
"""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..codecs.spec import parse_specs
from ..errors import ConfigError
from ..store import layout

EVAL_DIR = "eval"


@dataclass(frozen=True)
class EvalSet:
    """One finished set: its folder, codec (canonical and tag), shards and sample fields."""

    folder: Path
    codec: str
    tag: str
    modality: str
    shards: tuple[tuple[str, int], ...]  # (file name, ok samples)
    fields: frozenset[str]
    index_sha: tuple[str, ...]  # the shards' sha256 (a rewritten set invalidates its results)

    @property
    def samples(self) -> int:
        return sum(n for _, n in self.shards)

    @property
    def eval_dir(self) -> Path:
        return self.folder / EVAL_DIR


def _read_index(folder: Path) -> dict[str, Any] | None:
    path = folder / layout.INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except ValueError:
        return None
    return index if index.get("format") == layout.FORMAT else None


def sample_fields(folder: Path, index: dict[str, Any]) -> frozenset[str]:
    """The fields a loaded sample of this set has (see the module doc)."""
    if isinstance(index.get("fields"), (list, dict)):  # a typed index declares them
        return frozenset(index["fields"])
    from ..loaders import tasks as lt

    modality = index.get("modality", "image")
    found = {lt.payload_field(index.get("dataset", ""), modality)}
    shards = index.get("shards") or []
    if not shards:
        return frozenset(found)
    exts, record = _first_sample(folder / shards[0]["name"])
    for ext in exts:
        if ext in lt.ATTACHMENT_FIELDS:
            found.add(lt.ATTACHMENT_FIELDS[ext])
        elif ext.endswith(".flac") and ext.count(".") == 1 and modality == "audio":
            found.add("stems")
    for name in ("label", "transcript", "sample_rate"):
        if record.get(name) is not None:
            found.add(name)
    return frozenset(found)


def _first_sample(path: Path) -> tuple[list[str], dict[str, Any]]:
    """Member extensions and the ``.json`` record of the first sample of a shard."""
    exts: list[str] = []
    record: dict[str, Any] = {}
    key = None
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            k, _, ext = member.name.partition(".")
            if key is None:
                key = k
            if k != key:
                break
            exts.append(ext)
            if ext == "json":
                fh = tar.extractfile(member)
                record = json.loads(fh.read()) if fh is not None else {}
    return exts, record


def find_sets(out: str | Path, dataset: str, split: str, codecs: Sequence[str] = ()) -> list[EvalSet]:
    """The finished sets of ``dataset/split`` (only ``codecs`` when given, ``none`` first when present)."""
    base = Path(out) / dataset / split
    if codecs:
        tags = []
        for spec in (sp for c in codecs for sp in parse_specs(c)):  # sweeps expand, as in transcode
            if _read_index(base / spec.tag) is None:
                raise ConfigError(f"no finished set for {spec.canonical} at {base / spec.tag} (index.json missing)")
            tags.append(spec.tag)
        if "none" not in tags and _read_index(base / "none") is not None:
            tags.insert(0, "none")  # every result has its lossless baseline
    else:
        tags = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    found = []
    for tag in dict.fromkeys(tags):
        index = _read_index(base / tag)
        if index is None or (index.get("dataset"), index.get("split")) != (dataset, split):
            continue
        shards = tuple((s["name"], int(s["samples"])) for s in index["shards"])
        found.append(EvalSet(base / tag, index["codec"], tag, index.get("modality", "image"), shards,
                             sample_fields(base / tag, index), tuple(s["sha256"] for s in index["shards"])))
    if not found:
        raise ConfigError(f"no finished sets under {base} (write them with mpq transcode)")
    found.sort(key=lambda s: (s.tag != "none", s.tag))
    return found

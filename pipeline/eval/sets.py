"""Which finished sets exist under ``OUT/D/S`` and what their samples hold.

The one place evaluation learns about sets, and only through their typed index
(:func:`pipeline.store.index.read_index`): spec, shard names and sample counts, and the sample
fields (``image``, ``label``, ``segmentation``, ``target``, ``audio``, ``transcript``, ``mixture``, ``stems``)
that the index's schema declares, so whether a task fits a set never depends on the dataset's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..codecs.spec import parse_specs
from ..errors import ConfigError
from ..store.index import LocalRoot, NotASetIndex, SetIndex, read_index

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


def sample_fields(index: SetIndex) -> frozenset[str]:
    """The fields a loaded sample of this set has: each schema field under its name, or its group's
    (MUSDB's reference stems come together as ``stems``)."""
    return frozenset(f.group or f.name for f in index.schema)


def _open(root: LocalRoot, dataset: str, split: str, tag: str) -> SetIndex | None:
    """The set's index, or None for a folder that holds no finished set (an unfinished run, a report)."""
    try:
        return read_index(root, dataset, split, tag=tag)
    except NotASetIndex:
        return None
    except ConfigError:
        if not root.exists(dataset, split, tag, "index.json"):
            return None
        raise


def find_sets(out: str | Path, dataset: str, split: str, codecs: Sequence[str] = ()) -> list[EvalSet]:
    """The finished sets of ``dataset/split`` (only ``codecs`` when given, ``none`` first when present)."""
    base = Path(out) / dataset / split
    root = LocalRoot(out)
    if codecs:
        tags = []
        for spec in (sp for c in codecs for sp in parse_specs(c)):  # sweeps expand, as in transcode
            read_index(root, dataset, split, spec)  # a missing set stops here, naming the sets there
            tags.append(spec.tag)
        if "none" not in tags and _open(root, dataset, split, "none") is not None:
            tags.insert(0, "none")  # every result has its lossless baseline
    else:
        tags = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    found = []
    for tag in dict.fromkeys(tags):
        index = _open(root, dataset, split, tag)
        if index is None:
            continue
        shards = tuple((s.name, s.samples) for s in index.shards)
        found.append(EvalSet(base / tag, index.codec, tag, index.modality, shards, sample_fields(index),
                             tuple(s.sha256 for s in index.shards)))
    if not found:
        raise ConfigError(f"no finished sets under {base} (write them with mpq transcode)")
    found.sort(key=lambda s: (s.tag != "none", s.tag))
    return found

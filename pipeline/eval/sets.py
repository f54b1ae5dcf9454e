"""Which finished sets exist under ``OUT/D/S`` and what their samples hold.

The one place evaluation learns about sets, and only through their typed index
(:func:`pipeline.store.index.read_index`): spec, shard names and sample counts, and the sample
fields (``image``, ``label``, ``segmentation``, ``target``, ``audio``, ``transcript``, ``mixture``, ``stems``)
that the index's schema declares, so whether a task fits a set never depends on the dataset's name.
``OUT`` is a folder or an fsspec URL (``s3://bucket/prefix``): the indexes are read through the
loaders' :class:`~pipeline.loaders.storage.Storage`, and a set's folder is a location of the
output's :class:`~pipeline.store.storage.OutputStore` (results are written beside it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from ..codecs.spec import parse_specs
from ..errors import ConfigError
from ..loaders.storage import Storage
from ..store.index import NotASetIndex, SetIndex, read_index
from ..store.storage import is_url, open_store

EVAL_DIR = "eval"


@dataclass(frozen=True)
class EvalSet:
    """One finished set: its folder (a path or URL), codec (canonical and tag), shards and sample fields."""

    folder: str
    codec: str
    tag: str
    modality: str
    shards: tuple[tuple[str, int], ...]  # (file name, ok samples)
    fields: frozenset[str]
    index_sha: tuple[str, ...]  # the shards' sha256 (a rewritten set invalidates its results)
    #: (field, classes, space name) of each label field whose space is known (see SetIndex.label_space)
    label_spaces: tuple[tuple[str, int, str], ...] = ()

    def label_space(self, name: str) -> tuple[int, str] | None:
        return next(((n, sp) for f, n, sp in self.label_spaces if f == name), None)

    @property
    def samples(self) -> int:
        return sum(n for _, n in self.shards)

    @property
    def eval_dir(self) -> str:
        return child(self.folder, EVAL_DIR)


def child(folder: str, *names: str) -> str:
    """``folder/names...`` for a local folder or a URL."""
    return "/".join([folder.rstrip("/"), *names]) if is_url(folder) else os.path.join(folder, *names)


def sample_fields(index: SetIndex) -> frozenset[str]:
    """The fields a loaded sample of this set has: each schema field under its name, or its group's
    (MUSDB's reference stems come together as ``stems``)."""
    return frozenset(f.group or f.name for f in index.schema)


def _open(root: Storage, dataset: str, split: str, tag: str) -> SetIndex | None:
    """The set's index, or None for a folder that holds no finished set (an unfinished run, a report)."""
    try:
        return read_index(root, dataset, split, tag=tag)
    except NotASetIndex:
        return None
    except ConfigError:
        if not root.exists(dataset, split, tag, "index.json"):
            return None
        raise


def find_sets(out: str | os.PathLike, dataset: str, split: str, codecs: Sequence[str] = ()) -> list[EvalSet]:
    """The finished sets of ``dataset/split`` (only ``codecs`` when given, ``none`` first when present)."""
    store = open_store(str(out))
    store.check_readable()  # a missing bucket, credentials or endpoint: one line, before anything else
    base = store.join(dataset, split)
    root = Storage(str(out), cache_dir=False)
    if codecs:
        tags = []
        for spec in (sp for c in codecs for sp in parse_specs(c)):  # sweeps expand, as in transcode
            read_index(root, dataset, split, spec)  # a missing set stops here, naming the sets there
            tags.append(spec.tag)
        if "none" not in tags and _open(root, dataset, split, "none") is not None:
            tags.insert(0, "none")  # every result has its lossless baseline
    else:
        tags = root.listdir(dataset, split)
    found = []
    for tag in dict.fromkeys(tags):
        index = _open(root, dataset, split, tag)
        if index is None:
            continue
        shards = tuple((s.name, s.samples) for s in index.shards)
        fields = sample_fields(index)
        spaces = tuple((f, *sp) for f in sorted(fields) if (sp := index.label_space(f)) is not None)
        found.append(EvalSet(store.join(dataset, split, tag), index.codec, tag, index.modality, shards, fields,
                             tuple(s.sha256 for s in index.shards), spaces))
    if not found:
        raise ConfigError(f"no finished sets under {base} (write them with mpq transcode)")
    found.sort(key=lambda s: (s.tag != "none", s.tag))
    return found

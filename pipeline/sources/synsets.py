"""The standard ILSVRC-2012 class list: the 1,000 WordNet ids in the order ImageNet classifiers' outputs use.

The field's copy of that list ships with timm (``timm.data.ImageNetInfo``, file
``timm/data/_info/imagenet_synsets.txt``). It is read here from timm's installed files without
importing timm (which would import torch), so a plain install that has timm, or the ``eval`` extra,
labels any subset of classes by its standard index. Without timm the list is known in two cases
only: the Kaggle ``LOC_synset_mapping.txt`` (the standard list itself: 1,000 wnids in ascending
order), or a tree holding all 1,000 class folders (the standard order is their sorted order).
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError

#: the number of classes of ILSVRC-2012 and the name its label space goes by in set indexes
CLASSES = 1000
SPACE = "ILSVRC-2012"
_WNID = re.compile(r"n\d{8}")


def is_wnid(name: str) -> bool:
    """A WordNet noun id (``n01440764``): what a class folder of ImageNet is called."""
    return _WNID.fullmatch(name) is not None


@dataclass(frozen=True)
class ClassList:
    """The standard wnids, in order, and where they were read (recorded in the set's index)."""

    wnids: tuple[str, ...]
    origin: str

    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.wnids)}


def _valid(wnids: Sequence[str]) -> bool:
    """1,000 distinct wnids in ascending order: the shape of the standard list (it is sorted by wnid)."""
    return (len(wnids) == CLASSES and all(is_wnid(w) for w in wnids)
            and all(a < b for a, b in zip(wnids, wnids[1:])))


def timm_list() -> ClassList | None:
    """timm's copy of the list (None when timm is not installed)."""
    spec = importlib.util.find_spec("timm")  # finds the package without importing it
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "_info" / "imagenet_synsets.txt"
    try:
        wnids = [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
    except OSError:
        return None
    if not _valid(wnids):
        raise ConfigError(f"{path} is not the ILSVRC-2012 class list (1,000 ascending wnids)")
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("timm")
    except PackageNotFoundError:
        release = "unknown"
    return ClassList(tuple(wnids), f"timm {release} (timm.data.ImageNetInfo)")


def mapping_wnids(path: Path) -> list[str]:
    """The wnids of a ``LOC_synset_mapping.txt``, one per line (``n01440764 tench, Tinca tinca``)."""
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def disagreements(mapping: Path, standard: ClassList, limit: int = 3) -> list[str]:
    """Lines of a mapping file whose wnid is not the standard one at that position (the first ``limit``)."""
    wnids = mapping_wnids(mapping)
    out = [f"{mapping.name} line {i + 1}: {w}, the standard list has {standard.wnids[i] if i < CLASSES else 'no line'}"
           for i, w in enumerate(wnids) if i >= CLASSES or w != standard.wnids[i]]
    if len(wnids) < CLASSES:
        out.append(f"{mapping.name} has {len(wnids)} lines, the standard list {CLASSES}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def standard_list(mapping: Path | None, folders: Sequence[str]) -> ClassList:
    """The standard list from timm, else from a mapping file or class folders that are the whole list.

    ``folders``: the wnid folders of the dataset's splits. Raises ConfigError when neither is
    available (a subset of classes without timm), naming what to install.
    """
    found = timm_list()
    if found is not None:
        return found
    if mapping is not None:
        wnids = mapping_wnids(mapping)
        if _valid(wnids):
            return ClassList(tuple(wnids), f"{mapping.name} (1,000 ascending wnids)")
    distinct = sorted(set(folders))
    if _valid(distinct):
        return ClassList(tuple(distinct), "the 1,000 class folders, sorted")
    raise ConfigError(f"imagenet: {len(distinct)} of the {CLASSES} classes are here; their standard ILSVRC-2012 "
                      "indices come from timm's class list: pip install timm (or mpq-pipeline[eval])")

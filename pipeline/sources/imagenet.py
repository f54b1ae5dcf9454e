"""ImageNet (ILSVRC-2012 CLS-LOC) in the PyTorch-example layout or the Kaggle layout.

Labels are the index of the WordNet id in the standard ILSVRC-2012 list of 1,000 classes (the
order of every ImageNet classifier's outputs; see :mod:`.synsets`), whatever subset of class
folders is present: ImageNet-100 or a partial copy keep the labels of the full set. Folders that
are not wnids (hidden folders, ``lost+found``, notebook checkpoints) are skipped and counted; a
``LOC_synset_mapping.txt`` that disagrees with the standard order is reported, never obeyed.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, SampleError
from .base import IMAGE_EXTENSIONS, RawSample, SampleRef, Source, file_stamp, read_file, sanitize_key
from .listing import Listing, ListingBuilder
from ..store.index import Field, attachment, record
from . import register
from . import synsets


def _find_up(start: Path, name: str, levels: int = 4) -> Path | None:
    p = start
    for _ in range(levels):
        if (p / name).exists():
            return p / name
        p = p.parent
    return None


@register
class ImageNet(Source):
    name = "imagenet"
    splits = ("train", "val")
    summary = "ILSVRC-2012: train/ and val/ with one folder per wnid, or the Kaggle ILSVRC/Data/CLS-LOC layout"

    def __init__(self, root: str | Path, split: str | None = None, **options: Any):
        super().__init__(root, split, **options)
        self.skipped_folders: dict[str, int] = {}  # folder that is not a wnid -> images in it, by list()
        self.notes: list[str] = []  # what the run summary reports about the last listing
        self._classes: synsets.ClassList | None = None
        self._class_notes: list[str] = []  # what was said about the class list (once, with it)

    def fields(self) -> tuple[Field, ...]:
        """The label's space is the 1,000 ILSVRC-2012 classes, whatever subset of them the set holds."""
        n, space = synsets.CLASSES, synsets.SPACE
        return (attachment("label", "cls", "int", "integer", classes=n, label_space=space),
                record("label", "int", classes=n, label_space=space))

    def describe(self) -> dict:
        """Also where the class list came from and the folders skipped (read by ``mpq verify``)."""
        out = super().describe()
        out["labels"] = {"space": synsets.SPACE, "classes": synsets.CLASSES,
                         "list": self._classes.origin if self._classes is not None else None,
                         "skipped_folders": dict(self.skipped_folders)}
        return out

    def listing_notes(self) -> tuple[str, ...]:
        return (*self._class_notes, *self.notes)

    def _layout(self) -> tuple[Path, Path | None, Path | None]:
        """(split folder, LOC_val_solution.csv, LOC_synset_mapping.txt)."""
        root = Path(self.root)
        if not root.is_dir():
            raise ConfigError(f"imagenet: root {root} is not a folder")
        for base in (root / "ILSVRC" / "Data" / "CLS-LOC", root / "Data" / "CLS-LOC", root / "CLS-LOC", root):
            if (base / self.split).is_dir():
                kaggle = base != root
                csv_path = _find_up(base, "LOC_val_solution.csv") if kaggle or self.split == "val" else None
                mapping = _find_up(base, "LOC_synset_mapping.txt")
                return base / self.split, csv_path, mapping
        raise ConfigError(
            f"imagenet: no {self.split}/ folder under {root} (expected {root}/{self.split}/<wnid>/*.JPEG "
            f"or {root}/ILSVRC/Data/CLS-LOC/{self.split})"
        )

    def class_folders(self) -> list[str]:
        """The wnid folders of both splits (so both get the same list when it comes from folders)."""
        split_dir, _, _ = self._layout()
        found: set[str] = set()
        for s in self.splits:
            d = split_dir.parent / s
            if d.is_dir():
                found |= {p.name for p in d.iterdir() if p.is_dir() and synsets.is_wnid(p.name)}
        return sorted(found)

    def classes(self) -> synsets.ClassList:
        """The standard list, once; a mapping file that disagrees with it becomes a note."""
        if self._classes is None:
            _, _, mapping = self._layout()
            self._classes = synsets.standard_list(mapping, self.class_folders())
            if mapping is not None and not self._classes.origin.startswith(mapping.name):
                wrong = synsets.disagreements(mapping, self._classes)
                if wrong:
                    self._class_notes.append(f"{mapping} disagrees with the standard ILSVRC-2012 order "
                                             f"({'; '.join(wrong)}); labels follow the standard list "
                                             f"({self._classes.origin})")
        return self._classes

    def wnids(self) -> list[str]:
        """The standard wnids, in label order."""
        return list(self.classes().wnids)

    def list(self) -> Listing:
        split_dir, csv_path, _ = self._layout()
        self.notes, self.skipped_folders = [], {}
        index = self.classes().index()
        builder = ListingBuilder(("wnid",), path_base=str(split_dir.parent))
        subdirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
        wnid_dirs = [d for d in subdirs if synsets.is_wnid(d.name)]
        for d in subdirs:
            if not synsets.is_wnid(d.name):
                self.skipped_folders[d.name] = _count_images(d)
        if self.skipped_folders:
            self.notes.append(f"skipped {len(self.skipped_folders)} folders that are not wnids: "
                              + ", ".join(f"{n} ({k} images)" for n, k in self.skipped_folders.items()))
        unknown = [d.name for d in wnid_dirs if d.name not in index]
        if unknown:
            self.notes.append(f"{len(unknown)} wnid folders are not ILSVRC-2012 classes (their images become error "
                              f"rows): {', '.join(unknown[:5])}")
        if wnid_dirs:  # one folder per wnid
            for d in wnid_dirs:
                self._scan(builder, d, split_dir, _same_label(d.name), index)
        else:  # flat val folder with LOC_val_solution.csv
            self._scan(builder, split_dir, split_dir, _solution(csv_path).get, index)
        if not len(builder):
            raise ConfigError(f"imagenet: no images under {split_dir}")
        return builder.build()

    @staticmethod
    def _scan(builder: ListingBuilder, folder: Path, split_dir: Path, wnid_of: Callable[[str], str | None],
              index: dict[str, int]) -> None:
        """Add the images of one folder, with the stat its scan returns (nothing is read)."""
        prefix = os.path.relpath(folder, split_dir.parent)
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)  # key order already, so the listing needs no reordering
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in IMAGE_EXTENSIONS and entry.is_file():
                wnid = wnid_of(stem)
                builder.add(sanitize_key(stem), os.path.join(prefix, entry.name),
                            index.get(wnid) if wnid else None, file_stamp(entry.stat()), wnid=wnid)

    def read(self, ref: SampleRef) -> RawSample:
        wnid = ref.get("wnid")
        if wnid is None:
            raise SampleError("missing label: image not in LOC_val_solution.csv")
        if ref.label is None:
            raise SampleError(f"missing label: wnid {wnid} is not one of the {synsets.CLASSES} ILSVRC-2012 classes")
        data = read_file(Path(ref.get("path")))
        return RawSample(data, {"cls": str(ref.label).encode()}, {"label": ref.label, "wnid": wnid})

    def label_fields(self, ref: SampleRef) -> dict:
        return {"label": ref.label, "wnid": ref.get("wnid")}


def _same_label(wnid: str) -> Callable[[str], str | None]:
    """The label of every image in a class folder: the folder's wnid, whatever the file's stem."""
    return lambda _stem: wnid


def _count_images(folder: Path) -> int:
    """Images anywhere under a skipped folder (what the summary says was left out)."""
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _solution(csv_path: Path | None) -> dict[str, str]:
    """Image id -> wnid from Kaggle's ``LOC_val_solution.csv`` (first box's class)."""
    solution: dict[str, str] = {}
    if csv_path is not None:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:  # tolerate a BOM
            reader = csv.DictReader(fh)
            if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
                raise ConfigError(f"imagenet: {csv_path} lacks the columns ImageId,PredictionString")
            for row in reader:
                pred = (row.get("PredictionString") or "").split()
                if pred:
                    solution[row["ImageId"]] = pred[0]
    return solution

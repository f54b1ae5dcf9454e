"""ImageNet (ILSVRC-2012 CLS-LOC) in the PyTorch-example layout or the Kaggle layout.

Labels follow torchvision: the index of the WordNet id in the sorted list of the dataset's
wnids. That list comes from ``LOC_synset_mapping.txt`` when the root has it (Kaggle), else
from the class folders of ``train/`` and ``val/`` together, so both splits agree.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, SampleError
from .base import IMAGE_EXTENSIONS, RawSample, SampleRef, Source, file_stamp, read_file, sanitize_key
from .listing import Listing, ListingBuilder
from ..store.index import Field, attachment
from . import register


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

    def fields(self) -> tuple[Field, ...]:
        return (attachment("label", "cls", "int", "integer"), *super().fields())

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

    def wnids(self) -> list[str]:
        split_dir, _, mapping = self._layout()
        if mapping is not None:
            wnids = [line.split()[0] for line in mapping.read_text().splitlines() if line.strip()]
        else:
            wnids = []
            for s in self.splits:
                d = split_dir.parent / s
                if d.is_dir():
                    wnids += [p.name for p in d.iterdir() if p.is_dir()]
        if not wnids:
            raise ConfigError(f"imagenet: no class folders (wnids) under {split_dir.parent}")
        return sorted(set(wnids))

    def list(self) -> Listing:
        split_dir, csv_path, _ = self._layout()
        index = {w: i for i, w in enumerate(self.wnids())}
        builder = ListingBuilder(("wnid",), path_base=str(split_dir.parent))
        subdirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
        if subdirs:  # one folder per wnid
            for d in subdirs:
                self._scan(builder, d, split_dir, _same_label(d.name), index)
        else:  # flat val folder with LOC_val_solution.csv
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
            self._scan(builder, split_dir, split_dir, solution.get, index)
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
            raise SampleError(f"missing label: wnid {wnid} is not in the dataset's wnid list")
        data = read_file(Path(ref.get("path")))
        return RawSample(data, {"cls": str(ref.label).encode()}, {"label": ref.label, "wnid": wnid})

    def label_fields(self, ref: SampleRef) -> dict:
        return {"label": ref.label, "wnid": ref.get("wnid")}


def _same_label(wnid: str) -> Callable[[str], str | None]:
    """The label of every image in a class folder: the folder's wnid, whatever the file's stem."""
    return lambda _stem: wnid

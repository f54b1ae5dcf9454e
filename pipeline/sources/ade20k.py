"""ADE20K scene parsing (ADEChallengeData2016). Annotations are copied byte for byte, never re-encoded."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, SampleError
from .base import RawSample, SampleRef, Source, file_stamp, read_file, sanitize_key
from .listing import Listing, ListingBuilder
from ..store.index import Field, attachment
from . import register

_FOLDERS = {"train": "training", "val": "validation"}


def _scan(folder: Path) -> dict[str, os.DirEntry]:
    """The files of one folder by name, each with the stat its scan returns."""
    with os.scandir(folder) as it:
        return {e.name: e for e in it if e.is_file()}


@register
class ADE20K(Source):
    name = "ade20k"
    splits = ("train", "val")
    summary = "ADEChallengeData2016/images/{training,validation}/*.jpg with annotations/*/*.png"

    def fields(self) -> tuple[Field, ...]:
        """The annotation, copied byte for byte, is a label map: transforms move it with the image.

        Its space: the 150 scored classes of the SceneParsing benchmark (values 1..150; 0 is "other")."""
        return (attachment("segmentation", "seg.png", "mask", "label_map", classes=150, label_space="ADE20K"),
                *super().fields())

    def _base(self) -> Path:
        root = Path(self.root)
        for base in (root / "ADEChallengeData2016", root):
            if (base / "images").is_dir():
                return base
        raise ConfigError(f"ade20k: no ADEChallengeData2016/images under {root}")

    def list(self) -> Listing:
        base = self._base()
        sub = _FOLDERS[self.split]
        img_dir = base / "images" / sub
        if not img_dir.is_dir():
            raise ConfigError(f"ade20k: {img_dir} is not a folder")
        ann_dir = base / "annotations" / sub
        annotations = _scan(ann_dir) if ann_dir.is_dir() else {}
        builder = ListingBuilder(("annotation",), path_base=str(base))
        for name, entry in sorted(_scan(img_dir).items()):
            stem, ext = os.path.splitext(name)
            if ext.lower() in (".jpg", ".jpeg", ".png"):
                ann = annotations.get(stem + ".png")  # its state is part of the shard's key too
                builder.add(sanitize_key(stem), f"images/{sub}/{name}", None,
                            file_stamp(entry.stat()) + ";" + (file_stamp(ann.stat()) if ann else "annotation=-"),
                            annotation=str(ann_dir / (stem + ".png")))
        if not len(builder):
            raise ConfigError(f"ade20k: no images under {img_dir}")
        return builder.build()

    def read(self, ref: SampleRef) -> RawSample:
        ann = Path(ref.get("annotation"))
        if not ann.is_file():
            raise SampleError(f"missing annotation {ann.name}")
        seg = read_file(ann)
        data = read_file(Path(ref.get("path")))
        return RawSample(data, {"seg.png": seg}, {"annotation": ann.name})

"""ADE20K scene parsing (ADEChallengeData2016). Annotations are copied byte for byte, never re-encoded."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, SampleError
from .base import RawSample, SampleRef, Source, finalize, read_file, sanitize_key
from ..store.index import Field, attachment
from . import register

_FOLDERS = {"train": "training", "val": "validation"}


@register
class ADE20K(Source):
    name = "ade20k"
    splits = ("train", "val")
    summary = "ADEChallengeData2016/images/{training,validation}/*.jpg with annotations/*/*.png"

    def fields(self) -> tuple[Field, ...]:
        """The annotation, copied byte for byte, is a label map: transforms move it with the image."""
        return (attachment("segmentation", "seg.png", "mask", "label_map"), *super().fields())

    def _base(self) -> Path:
        root = Path(self.root)
        for base in (root / "ADEChallengeData2016", root):
            if (base / "images").is_dir():
                return base
        raise ConfigError(f"ade20k: no ADEChallengeData2016/images under {root}")

    def list(self) -> list[SampleRef]:
        base = self._base()
        sub = _FOLDERS[self.split]
        img_dir = base / "images" / sub
        if not img_dir.is_dir():
            raise ConfigError(f"ade20k: {img_dir} is not a folder")
        refs = []
        for f in sorted(img_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                ann = base / "annotations" / sub / (f.stem + ".png")
                refs.append(SampleRef(sanitize_key(f.stem), str(f.relative_to(base)), None,
                                      (("path", str(f)), ("annotation", str(ann)))))
        if not refs:
            raise ConfigError(f"ade20k: no images under {img_dir}")
        return finalize(refs)

    def read(self, ref: SampleRef) -> RawSample:
        ann = Path(ref.get("annotation"))
        if not ann.is_file():
            raise SampleError(f"missing annotation {ann.name}")
        seg = read_file(ann)
        data = read_file(Path(ref.get("path")))
        return RawSample(data, {"seg.png": seg}, {"annotation": ann.name})

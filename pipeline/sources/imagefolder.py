"""Any folder of images; with one subfolder per class (and no images at the top) the subfolder is the label."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .base import IMAGE_EXTENSIONS, RawSample, SampleRef, Source, finalize, read_file, sanitize_key
from . import register


@register
class ImageFolder(Source):
    name = "imagefolder"
    splits = None
    default_split = "all"
    summary = "any folder of images, optionally one subfolder per class (label = sorted class index)"

    def __init__(self, root, split=None, **options):
        super().__init__(root, split, **options)
        self.skipped = 0  # files that are not images, counted by list()

    def classes(self) -> list[str] | None:
        root = Path(self.root)
        top_images = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return dirs if dirs and not top_images else None

    def list(self) -> list[SampleRef]:
        root = Path(self.root)
        if not root.is_dir():
            raise ConfigError(f"imagefolder: root {root} is not a folder")
        classes = self.classes()
        index = {c: i for i, c in enumerate(classes or [])}
        refs, skipped = [], 0
        for f in sorted(root.rglob("*")):
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(root).parts):
                continue
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped += 1
                continue
            rel = f.relative_to(root)
            cls = rel.parts[0] if classes is not None and len(rel.parts) > 1 else None
            meta = (("path", str(f)),) + ((("class_name", cls),) if cls is not None else ())
            refs.append(SampleRef(sanitize_key(str(rel.with_suffix(""))), str(rel),
                                  index.get(cls) if cls is not None else None, meta))
        self.skipped = skipped
        if not refs:
            raise ConfigError(f"imagefolder: no images under {root} ({skipped} other files)")
        return finalize(refs)

    def read(self, ref: SampleRef) -> RawSample:
        data = read_file(Path(ref.get("path")))
        attachments, fields = {}, {}
        if ref.label is not None:
            attachments["cls"] = str(ref.label).encode()
            fields = {"label": ref.label, "class_name": ref.get("class_name")}
        return RawSample(data, attachments, fields)

    def label_fields(self, ref: SampleRef) -> dict:
        return {} if ref.label is None else {"label": ref.label, "class_name": ref.get("class_name")}

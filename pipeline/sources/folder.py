"""Any folder of media files; with one subfolder per class (and no media at the top) the subfolder is the label.

`imagefolder` and `audiofolder` share these rules and differ only in the file types they take.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ..errors import ConfigError
from ..store.index import Field, attachment
from .base import RawSample, SampleRef, Source, finalize, read_file, sanitize_key


class FolderSource(Source):
    """Files chosen by extension (others are skipped and counted); keys from the relative path."""

    splits = None
    default_split = "all"
    extensions: ClassVar[frozenset[str]]
    what: ClassVar[str]  # "images", "audio files": for messages

    def __init__(self, root, split=None, **options):
        super().__init__(root, split, **options)
        self.skipped = 0  # files of other types, counted by list()

    def classes(self) -> list[str] | None:
        """Sorted class names when the root holds only subfolders (and no media at the top), else None."""
        root = Path(self.root)
        top_media = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in self.extensions]
        dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return dirs if dirs and not top_media else None

    def list(self) -> list[SampleRef]:
        root = Path(self.root)
        if not root.is_dir():
            raise ConfigError(f"{self.name}: root {root} is not a folder")
        classes = self.classes()
        index = {c: i for i, c in enumerate(classes or [])}
        refs, skipped = [], 0
        for f in sorted(root.rglob("*")):
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(root).parts):
                continue
            if f.suffix.lower() not in self.extensions:
                skipped += 1
                continue
            rel = f.relative_to(root)
            cls = rel.parts[0] if classes is not None and len(rel.parts) > 1 else None
            meta = (("path", str(f)),) + ((("class_name", cls),) if cls is not None else ())
            refs.append(SampleRef(sanitize_key(str(rel.with_suffix(""))), str(rel),
                                  index.get(cls) if cls is not None else None, meta))
        self.skipped = skipped
        if not refs:
            raise ConfigError(f"{self.name}: no {self.what} under {root} ({skipped} other files)")
        return finalize(refs)

    def fields(self) -> tuple[Field, ...]:
        """Class folders give a ``.cls`` label (and the record's ``label``)."""
        return (attachment("label", "cls", "int", "integer"), *super().fields())

    def read(self, ref: SampleRef) -> RawSample:
        data = read_file(Path(ref.get("path")))
        attachments, fields = {}, {}
        if ref.label is not None:
            attachments["cls"] = str(ref.label).encode()
            fields = {"label": ref.label, "class_name": ref.get("class_name")}
        return RawSample(data, attachments, fields)

    def label_fields(self, ref: SampleRef) -> dict:
        return {} if ref.label is None else {"label": ref.label, "class_name": ref.get("class_name")}

"""Any folder of media files; with one subfolder per class (and no media at the top) the subfolder is the label.

`imagefolder` and `audiofolder` share these rules and differ only in the file types they take.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Iterator

from ..errors import ConfigError
from ..store.index import Field, attachment, record
from .base import RawSample, SampleRef, Source, file_stamp, read_file, sanitize_key
from .listing import Listing, ListingBuilder


def _walk(folder: str, prefix: str) -> Iterator[tuple[str, os.DirEntry]]:
    """Files under ``folder`` (following links, skipping hidden names) as (relative path with '/', entry)."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        rel = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):  # like rglob: linked folders are not entered
            yield from _walk(entry.path, rel + "/")
        elif entry.is_file():
            yield rel, entry


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

    def list(self) -> Listing:
        root = Path(self.root)
        if not root.is_dir():
            raise ConfigError(f"{self.name}: root {root} is not a folder")
        classes = self.classes()
        index = {c: i for i, c in enumerate(classes or [])}
        builder = ListingBuilder(("class_name",), path_base=str(root))
        skipped = 0
        for rel, entry in _walk(str(root), ""):  # one scandir pass: names and their stat, nothing read
            if os.path.splitext(entry.name)[1].lower() not in self.extensions:
                skipped += 1
                continue
            top, sep, _ = rel.partition("/")
            cls = top if classes is not None and sep else None
            builder.add(sanitize_key(os.path.splitext(rel)[0]), rel, index.get(cls) if cls is not None else None,
                        file_stamp(entry.stat()), class_name=cls)
        self.skipped = skipped
        if not len(builder):
            raise ConfigError(f"{self.name}: no {self.what} under {root} ({skipped} other files)")
        return builder.build()

    def fields(self) -> tuple[Field, ...]:
        """Class folders give a ``.cls`` label (and the record's ``label``); its space: the class folders."""
        classes = self.classes() if Path(self.root).is_dir() else None
        if not classes:
            return (attachment("label", "cls", "int", "integer"), *super().fields())
        n, space = len(classes), f"{len(classes)} class folders"
        return (attachment("label", "cls", "int", "integer", classes=n, label_space=space),
                record("label", "int", classes=n, label_space=space))

    def read(self, ref: SampleRef) -> RawSample:
        data = read_file(Path(ref.get("path")))
        attachments, fields = {}, {}
        if ref.label is not None:
            attachments["cls"] = str(ref.label).encode()
            fields = {"label": ref.label, "class_name": ref.get("class_name")}
        return RawSample(data, attachments, fields)

    def label_fields(self, ref: SampleRef) -> dict:
        return {} if ref.label is None else {"label": ref.label, "class_name": ref.get("class_name")}

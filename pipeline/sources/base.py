"""The source interface: list a dataset where the user keeps it, then read one sample at a time.

Listing only walks folders and label files: it never copies or decodes the data, so it is cheap
on the client, and each worker reads just the samples of its shard.
"""
from __future__ import annotations

import hashlib
import os
import re
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..errors import ConfigError
from ..store.index import Field, record

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .webp .bmp .tif .tiff .gif .ppm .pgm .pbm .pnm .avif .jxl .heic .heif .jp2 .j2k"
    .split()
)


@dataclass(frozen=True)
class SampleRef:
    """One sample as listed: a stable key, where it came from, and its label if the listing knows it.

    ``source`` is the original name (path relative to the root, or a row id) kept in the
    ``.json`` and the manifest. ``meta`` holds picklable extras a source needs to read it.
    ``stamp`` is the state of the files the sample reads as the listing saw it (see
    :func:`file_stamp`); it is part of each shard's key, so a changed file redoes its shard.
    """

    key: str
    source: str
    label: int | None = None
    meta: tuple[tuple[str, Any], ...] = ()
    stamp: str = ""

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.meta).get(name, default)


@dataclass
class RawSample:
    """What a source read: the main media bytes, members copied verbatim, and JSON fields."""

    data: bytes
    attachments: dict[str, bytes] = field(default_factory=dict)  # member extension -> exact bytes
    fields: dict[str, Any] = field(default_factory=dict)  # label, wnid, transcript, ...


@dataclass(frozen=True)
class SourceOption:
    """An option a dataset layout accepts: keyword ``name`` in ``source_options``, ``--name-with-dashes`` on the CLI.

    ``flag``: a switch (true when given); otherwise it takes a text value.
    """

    name: str
    help: str
    flag: bool = False


class Source(ABC):
    """A dataset layout. Subclasses set ``name``, ``modality`` and ``splits`` and implement list/read."""

    name: ClassVar[str]
    modality: ClassVar[str] = "image"
    splits: ClassVar[tuple[str, ...] | None] = None  # None: any name (a free output name)
    default_split: ClassVar[str | None] = None
    summary: ClassVar[str] = ""
    options: ClassVar[tuple[SourceOption, ...]] = ()  # the options this source accepts (and the CLI offers)
    #: the loaded sample's key for the decoded payload when not the modality's (MUSDB: ``mixture``)
    payload_name: ClassVar[str | None] = None

    def __init__(self, root: str | Path, split: str | None = None, **options: Any):
        self.root = str(root)
        split = split or self.default_split
        if split is None:
            raise ConfigError(f"{self.name}: give --split (one of {', '.join(self.splits or ())})")
        if self.splits is not None and split not in self.splits:
            raise ConfigError(f"{self.name}: unknown split {split!r} (splits: {', '.join(self.splits)})")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
            raise ConfigError(f"split name {split!r} must use only letters, digits, '_' and '-'")
        unknown = sorted({k for k, v in options.items() if v is not None} - {o.name for o in self.options})
        if unknown:
            raise ConfigError(f"{self.name}: unknown option {unknown[0]!r}")
        self.split = split
        self.opts = {k: v for k, v in options.items() if v is not None}

    @abstractmethod
    def list(self) -> Sequence[SampleRef]:
        """All samples of the split, sorted by key, keys unique. Raise ConfigError on a wrong root.

        Large layouts return a :class:`~pipeline.sources.listing.Listing` (columns, not one object per
        sample); each sample's ``stamp`` comes from the stat of the scan that found its files.
        """

    @abstractmethod
    def read(self, ref: SampleRef) -> RawSample:
        """Read one sample's bytes; per-sample problems raise SampleError."""

    def describe(self) -> dict[str, Any]:
        """What index.json records about where the data came from."""
        return {"name": self.name, "root": self.root, "split": self.split, "options": dict(self.opts)}

    def fields(self) -> tuple[Field, ...]:
        """What its samples carry besides the payload: attachments and record values (the set's schema).

        Every source may record a ``label``; a source adds the members it copies (``.cls``,
        ``.seg.png``, ...) and the record values a loader should hand out.
        """
        return (record("label", "int"),)

    def listing_notes(self) -> tuple[str, ...]:
        """What the run summary says about the last listing: folders skipped, a label file not obeyed."""
        return ()

    def tracks(self) -> tuple[str, ...]:
        """Names of further signals coded with the payload's setting (``{key}.{name}.{ext}``)."""
        return ()

    def label_fields(self, ref: SampleRef) -> dict[str, Any]:
        """Label-like fields known from the listing alone (kept in the manifest)."""
        return {} if ref.label is None else {"label": ref.label}


def sanitize_key(text: str) -> str:
    """A webdataset-safe key: letters, digits, '_' and '-' only (no dots, no slashes)."""
    key = re.sub(r"[^A-Za-z0-9_-]", "_", text)
    if not key:
        raise ValueError(f"empty key from {text!r}")
    return key


def finalize(refs: list[SampleRef]) -> list[SampleRef]:
    """Sort by key and make keys unique: colliding keys get a short hash of their source name."""
    counts = Counter(r.key for r in refs)
    out = []
    for r in refs:
        if counts[r.key] > 1:
            digest = hashlib.sha1(r.source.encode()).hexdigest()[:8]
            r = replace(r, key=f"{r.key}-{digest}")
        out.append(r)
    out.sort(key=lambda r: r.key)
    if len({r.key for r in out}) != len(out):  # two sources whose names hash alike: refuse
        raise ConfigError("could not make unique sample keys")
    return out


def file_stamp(st: os.stat_result) -> str:
    """A file's state from the stat a directory scan already made: ``SIZE:MTIME_NS``.

    A stamp joins the parts of every file a sample reads with ``;``; parts that are not files
    (a transcript line, a dataset fingerprint) are ``name=value``. Nothing is read or hashed.
    """
    return f"{st.st_size}:{st.st_mtime_ns}"


def text_stamp(name: str, text: str | None) -> str:
    """A stamp part for a value the listing read (a transcript line): a short hash of it."""
    return f"{name}=" + ("-" if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])


def newest_mtime_ns(stamp: str) -> int | None:
    """The newest modification time among a stamp's file parts (None when it has none)."""
    times = [int(part.split(":", 1)[1]) for part in stamp.split(";") if ":" in part and "=" not in part]
    return max(times) if times else None


def read_file(path: Path) -> bytes:
    """Read a file; a missing or unreadable file is a SampleError."""
    from ..errors import SampleError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise SampleError(f"cannot read {path.name}: {exc.strerror or exc}") from None



"""A Hugging Face dataset: a hub name (with config and split), a save_to_disk folder, or parquet files.

The image column is read undecoded (``Image(decode=False)``), so the worker sees the stored bytes
and hashes exactly what the dataset holds. With ``audio_column`` the source is an audio dataset:
that column is read the same way (``Audio(decode=False)``) and decoded by the audio modality.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SampleError
from .base import RawSample, SampleRef, Source, SourceOption, sanitize_key
from .listing import Listing, ListingBuilder
from ..store.index import Field, attachment
from . import register


@register
class HuggingFace(Source):
    name = "hf"
    splits = None
    default_split = "train"
    modality_doc = "image or audio"
    summary = ("Hugging Face dataset: hub name, save_to_disk folder or parquet files (--image-column or "
               "--audio-column, --label-column)")
    options = (
        SourceOption("image_column", "image column [default: image]"),
        SourceOption("label_column", "integer label column (stored as .cls)"),
        SourceOption("hf_config", "dataset configuration name on the hub"),
        SourceOption("key_column", "column holding a unique id used as the sample key"),
        SourceOption("audio_column", "audio column (makes the dataset an audio dataset)"),
    )

    _ds: Any = None  # the opened dataset, per process (never pickled)

    def __init__(self, root, split=None, **options):
        super().__init__(root, split, **options)
        if "audio_column" in self.opts:
            if "image_column" in self.opts:
                raise ConfigError("hf: give image_column or audio_column, not both")
            # this instance's samples go through the audio modality (hf alone picks its modality per dataset)
            self.modality = "audio"  # type: ignore[misc]  # a class-level default, set per instance here

    def fields(self) -> tuple[Field, ...]:
        """A ``--label-column`` gives a ``.cls`` label (and the record's ``label``)."""
        own = (attachment("label", "cls", "int", "integer"),) if self.opts.get("label_column") else ()
        return (*own, *super().fields())

    def _media_column(self) -> str:
        return self.opts.get("audio_column") or self.opts.get("image_column", "image")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_ds", None)  # workers reopen the dataset (memory-mapped, cheap)
        return state

    def _parquet_files(self) -> list[str]:
        if os.path.isdir(self.root):
            return sorted(glob.glob(os.path.join(self.root, "**", "*.parquet"), recursive=True))
        return sorted(f for f in glob.glob(self.root) if f.endswith(".parquet"))

    def _kind(self) -> str:
        p = Path(self.root)
        if p.is_dir() and any((p / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            return "disk"
        if self._parquet_files():
            return "parquet"
        if p.exists() or any(c in self.root for c in "*?[") or self.root.startswith((".", "/")):
            raise ConfigError(f"hf: {self.root} is neither a save_to_disk folder nor parquet files")
        return "hub"

    def dataset(self):
        if getattr(self, "_ds", None) is not None:
            return self._ds
        try:
            import datasets
        except ImportError:
            raise ConfigError("hf: the 'datasets' package is missing: pip install 'mpq-pipeline[hf]'") from None
        kind = self._kind()
        try:
            if kind == "disk":
                ds = datasets.load_from_disk(self.root)
                if isinstance(ds, datasets.DatasetDict):
                    if self.split not in ds:
                        raise ConfigError(f"hf: split {self.split!r} not in {sorted(ds)}")
                    ds = ds[self.split]
            elif kind == "parquet":
                ds = datasets.load_dataset("parquet", data_files=self._parquet_files(), split="train")
            else:
                ds = datasets.load_dataset(self.root, self.opts.get("hf_config"), split=self.split)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"hf: cannot load {self.root!r} ({kind}): {type(exc).__name__}: {exc}") from None
        col = self._media_column()
        if col not in ds.column_names:
            raise ConfigError(f"hf: no {self.modality} column {col!r} (columns: {', '.join(ds.column_names)})")
        label = self.opts.get("label_column")
        if label is not None and label not in ds.column_names:
            raise ConfigError(f"hf: no label column {label!r} (columns: {', '.join(ds.column_names)})")
        ds = ds.cast_column(col, datasets.Audio(decode=False) if self.modality == "audio" else
                            datasets.Image(decode=False))
        self._ds = ds
        return ds

    def list(self) -> Listing:
        ds = self.dataset()
        n = len(ds)
        if n == 0:
            raise ConfigError(f"hf: {self.root!r} split {self.split!r} is empty")
        label_col = self.opts.get("label_column")
        labels = ds[label_col] if label_col else [None] * n
        key_col = self.opts.get("key_column")
        ids = [str(v) for v in ds[key_col]] if key_col else [f"{i:09d}" for i in range(n)]
        width = len(str(n - 1))
        # the dataset's fingerprint (what `datasets` derives from its files or revision) is each row's
        # stamp: rows have no state of their own, so a changed dataset redoes every shard
        stamp = f"fingerprint={getattr(ds, '_fingerprint', None) or '-'}"
        builder = ListingBuilder(("row",))
        for i in range(n):
            lab = labels[i]
            if lab is not None and not isinstance(lab, int):
                raise ConfigError(f"hf: label column {label_col!r} holds {type(lab).__name__}, not int")
            builder.add(sanitize_key(ids[i]), f"row {i:0{width}d}" if not key_col else ids[i], lab, stamp, row=i)
        return builder.build()

    def read(self, ref: SampleRef) -> RawSample:
        ds = self.dataset()
        row = ds[int(ref.get("row"))]
        cell = row[self._media_column()]
        if cell is None:
            raise SampleError(f"empty {self.modality} cell")
        data = cell.get("bytes")
        if data is None and cell.get("path"):
            try:
                data = Path(cell["path"]).read_bytes()
            except OSError as exc:
                raise SampleError(f"cannot read {cell['path']}: {exc}") from None
        if data is None:
            raise SampleError(f"{self.modality} cell has neither bytes nor path")
        attachments, fields = {}, {}
        label_col = self.opts.get("label_column")
        if label_col:
            if ref.label is None or ref.label < 0:
                raise SampleError(f"missing label in column {label_col!r}")
            attachments["cls"] = str(ref.label).encode()
            fields["label"] = ref.label
            feat = ds.features[label_col]
            if hasattr(feat, "int2str"):
                fields["class_name"] = feat.int2str(ref.label)
        return RawSample(data, attachments, fields)

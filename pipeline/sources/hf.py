"""A Hugging Face dataset: a hub name (with config and split), a save_to_disk folder, or parquet files.

The image column is read undecoded (``Image(decode=False)``), so the worker sees the stored bytes
and hashes exactly what the dataset holds. With ``audio_column`` the source is an audio dataset:
that column is read the same way (``Audio(decode=False)``) and decoded by the audio modality.
With ``objects_column`` (a Hugging Face copy of COCO) each sample carries COCO's ``.coco.json``
attachment, as the ``coco`` source writes it (the conversion lives in :mod:`.hfobjects`).
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
from . import hfobjects
from .coco import COCO_2017_CATEGORIES, DETECTION_FIELDS, MEMBER, record_text
from . import register


@register
class HuggingFace(Source):
    name = "hf"
    splits = None
    default_split = "train"
    modality_doc = "image or audio"
    summary = ("Hugging Face dataset: hub name, save_to_disk folder or parquet files (--image-column or "
               "--audio-column, --label-column; --objects-column for a copy of COCO)")
    options = (
        SourceOption("image_column", "image column [default: image]"),
        SourceOption("label_column", "integer label column (stored as .cls)"),
        SourceOption("hf_config", "dataset configuration name on the hub"),
        SourceOption("key_column", "column holding a unique id used as the sample key"),
        SourceOption("audio_column", "audio column (makes the dataset an audio dataset)"),
        SourceOption("objects_column", "column of object boxes and COCO categories (a copy of COCO: stored as "
                                       ".coco.json detection targets)"),
        SourceOption("bbox_format", f"box format of --objects-column: {', '.join(hfobjects.BBOX_FORMATS)} "
                                    "[default: inferred when the boxes fit only one]"),
    )

    _ds: Any = None  # the opened dataset, per process (never pickled)
    _objects: tuple[hfobjects.ObjectsSchema, str] | None = None  # objects' keys and box format, once resolved

    def __init__(self, root, split=None, **options):
        super().__init__(root, split, **options)
        if "audio_column" in self.opts:
            if "image_column" in self.opts:
                raise ConfigError("hf: give image_column or audio_column, not both")
            # this instance's samples go through the audio modality (hf alone picks its modality per dataset)
            self.modality = "audio"  # type: ignore[misc]  # a class-level default, set per instance here
        fmt = self.opts.get("bbox_format")
        if fmt is not None and fmt not in hfobjects.BBOX_FORMATS:
            raise ConfigError(f"hf: bbox_format {fmt!r} is not one of {', '.join(hfobjects.BBOX_FORMATS)}")
        if "objects_column" in self.opts and self.modality == "audio":
            raise ConfigError("hf: objects_column is for image datasets, not with audio_column")
        if fmt is not None and "objects_column" not in self.opts:
            raise ConfigError("hf: bbox_format needs objects_column")

    def fields(self) -> tuple[Field, ...]:
        """A ``--label-column`` gives a ``.cls`` label (and the record's ``label``); an ``--objects-column``
        the detection target as the ``coco`` source declares it."""
        own: tuple[Field, ...] = ()
        if self.opts.get("label_column"):
            own += (attachment("label", "cls", "int", "integer"),)
        if self.opts.get("objects_column"):
            own += DETECTION_FIELDS
        return (*own, *super().fields())

    def describe(self) -> dict[str, Any]:
        """A copy of COCO keeps COCO's category table (as the ``coco`` source does) and the box format read."""
        out = super().describe()
        if self.opts.get("objects_column"):
            out.update(bbox_format=self.objects()[1], categories=[dict(c) for c in COCO_2017_CATEGORIES])
        return out

    def objects(self) -> tuple[hfobjects.ObjectsSchema, str]:
        """The objects column's keys and its box format (given, or inferred from every box once)."""
        if self._objects is None:
            self._objects = hfobjects.resolve(self.dataset(), self.opts["objects_column"], self.opts.get("bbox_format"))
        return self._objects

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
        for what in ("label", "key", "objects"):
            name = self.opts.get(f"{what}_column")
            if name is not None and name not in ds.column_names:
                raise ConfigError(f"hf: no {what} column {name!r} (columns: {', '.join(ds.column_names)})")
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
        detection = bool(self.opts.get("objects_column"))
        if detection and not key_col and "image_id" in ds.column_names:
            key_col = "image_id"  # COCO's ids: keys are the 12-digit file stems, as the coco source gives
        values = ds[key_col] if key_col else None
        ids = [str(v) for v in values] if values is not None else [f"{i:09d}" for i in range(n)]
        image_ids: list[int] = list(range(n))  # the row, unless every id is a number
        first_ann: list[int | None] = [None] * n
        if detection:
            schema, _ = self.objects()  # the box format too: workers get it resolved
            numbers = [hfobjects.image_id_of(v) for v in values] if values is not None else []
            if values is not None and key_col == "image_id" and None in numbers:  # COCO's ids must be numbers
                row = numbers.index(None)
                raise ConfigError(f"hf: column image_id holds {values[row]!r} at row {row}, not an image id; "
                                  f"give --key-column to key the rows otherwise")
            if numbers and None not in numbers:
                image_ids = [int(v) for v in numbers if v is not None]
                ids = [f"{v:012d}" for v in image_ids]
            if schema.ids is None:
                first_ann = list(hfobjects.first_ids(ds, schema))
        width = len(str(n - 1))
        # the dataset's fingerprint (what `datasets` derives from its files or revision) is each row's
        # stamp: rows have no state of their own, so a changed dataset redoes every shard
        stamp = f"fingerprint={getattr(ds, '_fingerprint', None) or '-'}"
        builder = ListingBuilder(("row", "image_id", "first_ann") if detection else ("row",))
        for i in range(n):
            lab = labels[i]
            if lab is not None and not isinstance(lab, int):
                raise ConfigError(f"hf: label column {label_col!r} holds {type(lab).__name__}, not int")
            source = f"row {i:0{width}d}" if values is None else str(values[i])
            builder.add(sanitize_key(ids[i]), source, lab, stamp, row=i, image_id=image_ids[i], first_ann=first_ann[i])
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
        if self.opts.get("objects_column"):
            attachments[MEMBER], fields["image_id"] = self._coco(ref, row, data), int(ref.get("image_id"))
        return RawSample(data, attachments, fields)

    def _coco(self, ref: SampleRef, row: dict[str, Any], data: bytes) -> bytes:
        """The sample's ``.coco.json``: its image record (size from the columns, else the image header) and objects."""
        schema, fmt = self.objects()
        width, height = row.get("width"), row.get("height")
        if not isinstance(width, int) or not isinstance(height, int):
            width, height = hfobjects.image_size(data)
        image_id = int(ref.get("image_id"))
        first = ref.get("first_ann")
        anns = hfobjects.coco_annotations(row[schema.column], schema, fmt, image_id, width, height,
                                          0 if first is None else int(first))
        image = {"id": image_id, "file_name": f"{ref.key}.jpg", "width": width, "height": height}
        return record_text(image, anns).encode("utf-8")

"""COCO 2017 detection as users download it: ``train2017/``, ``val2017/``, ``annotations/instances_<split>.json``.

Each sample keeps beside its lossy image a ``.coco.json`` member holding its image record and
every annotation of that image exactly as the JSON holds them (``bbox``, ``category_id``,
``area``, ``iscrowd``, ``segmentation`` polygons or RLE, ``id`` and any other key), and the set
index keeps the category table (``source.categories``), so the ground-truth JSON of a set can be
rebuilt from its shards alone (:func:`pipeline.loaders.detection.ground_truth`). Images without
annotations are samples too. The listing parses the JSON once on the client and hands each
sample its own record as text, so workers never read the (up to 450 MB) annotation file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..store.index import Field, attachment, record
from .base import RawSample, SampleRef, Source, file_stamp, read_file, sanitize_key, text_stamp
from .listing import Listing, ListingBuilder
from . import register

#: the member holding a sample's image record and annotations (JSON, decoded by the safe ``json`` decoder)
MEMBER = "coco.json"


def record_text(image: dict[str, Any], annotations: list[dict[str, Any]]) -> str:
    """One sample's attachment: ``{"image": record, "annotations": [...]}`` as compact JSON.

    Python's JSON writes every float as the shortest text that reads back as the same double, so
    parsing it gives exactly the values the original file held.
    """
    return json.dumps({"image": image, "annotations": annotations}, separators=(",", ":"), ensure_ascii=False)


@register
class Coco(Source):
    name = "coco"
    splits = None  # val2017, train2017, or any instances_<split>.json beside a <split>/ folder
    default_split = "val2017"
    summary = "COCO 2017: {train,val}2017/*.jpg with annotations/instances_{train,val}2017.json (boxes, masks)"

    def __init__(self, root: str | Path, split: str | None = None, **options: Any):
        super().__init__(root, split, **options)
        self._tables: dict[str, Any] | None = None  # categories, info, licenses: read with the listing (small)

    def fields(self) -> tuple[Field, ...]:
        """The annotation member is handed out as a detection target (boxes move with the image)."""
        return (attachment("target", MEMBER, "detection", "json"), record("image_id", "int"), *super().fields())

    def _base(self) -> Path:
        """The folder holding ``annotations/instances_<split>.json``: the root or one folder below it."""
        root = Path(self.root)
        if not root.is_dir():
            raise ConfigError(f"coco: root {root} is not a folder")
        name = f"annotations/instances_{self.split}.json"
        if (root / name).is_file():
            return root
        below = sorted(p for p in root.iterdir() if p.is_dir() and (p / name).is_file())
        if len(below) == 1:
            return below[0]
        if below:
            raise ConfigError(f"coco: several folders under {root} hold {name}: {', '.join(p.name for p in below)}")
        raise ConfigError(f"coco: no {name} under {root} (expected {root}/{name} and {root}/{self.split}/*.jpg)")

    def annotations_file(self) -> Path:
        return self._base() / "annotations" / f"instances_{self.split}.json"

    def _read_json(self) -> dict[str, Any]:
        path = self.annotations_file()
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"coco: cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ConfigError(f"coco: {path} has no 'images' list")
        if not isinstance(data.get("categories", []), list) or not isinstance(data.get("annotations", []), list):
            raise ConfigError(f"coco: {path}: 'categories' and 'annotations' must be lists")
        return data

    def list(self) -> Listing:
        data = self._read_json()
        self._tables = _tables(data)
        folder = self._base() / self.split
        if not folder.is_dir():
            raise ConfigError(f"coco: {folder} is not a folder (the images of {self.annotations_file().name})")
        with os.scandir(folder) as it:
            entries = {e.name: e for e in it if e.is_file()}
        by_image: dict[Any, list[dict[str, Any]]] = {}
        for ann in data.get("annotations", []):
            by_image.setdefault(ann.get("image_id") if isinstance(ann, dict) else None, []).append(ann)
        builder = ListingBuilder(("coco",), path_base=str(folder))
        for image in data["images"]:
            name = image.get("file_name") if isinstance(image, dict) else None
            if not isinstance(name, str) or "id" not in image:
                raise ConfigError(f"coco: an image record without id or file_name: {str(image)[:200]}")
            text = record_text(image, by_image.get(image["id"], []))
            entry = entries.get(name)
            stamp = (file_stamp(entry.stat()) if entry else "file=-") + ";" + text_stamp("coco", text)
            builder.add(sanitize_key(os.path.splitext(os.path.basename(name))[0]), name, None, stamp, coco=text)
        if not len(builder):
            raise ConfigError(f"coco: {self.annotations_file()} lists no images")
        return builder.build()

    def tables(self) -> dict[str, Any]:
        """The JSON's ``categories`` (and ``info``, ``licenses`` when present)."""
        if self._tables is None:
            self._tables = _tables(self._read_json())
        return self._tables

    def describe(self) -> dict[str, Any]:
        """The set index keeps the category table, so ground truth rebuilt from shards is complete."""
        return {**super().describe(), "annotations": f"annotations/instances_{self.split}.json", **self.tables()}

    def read(self, ref: SampleRef) -> RawSample:
        text = ref.get("coco")
        data = read_file(Path(ref.get("path")))
        image_id = json.loads(text)["image"]["id"]
        return RawSample(data, {MEMBER: text.encode("utf-8")}, {"image_id": image_id})


def _tables(data: dict[str, Any]) -> dict[str, Any]:
    return {"categories": list(data.get("categories", [])),
            **{k: data[k] for k in ("info", "licenses") if k in data}}

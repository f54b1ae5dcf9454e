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
#: what a detection sample declares (the ``coco`` source, and ``hf`` with an objects column): the annotation
#: member handed out as a detection target (boxes move with the image), and COCO's image id
DETECTION_FIELDS = (attachment("target", MEMBER, "detection", "json"), record("image_id", "int"))

#: COCO 2017's 80 detection categories as ``instances_*.json`` lists them: official ids 1..90 (with gaps),
#: names and supercategories, in id order (what a Hugging Face copy's renumbered classes are mapped back to)
_GROUPS: tuple[tuple[str, str], ...] = (  # supercategory, "id name; id name; ..."
    ("person", "1 person"),
    ("vehicle", "2 bicycle; 3 car; 4 motorcycle; 5 airplane; 6 bus; 7 train; 8 truck; 9 boat"),
    ("outdoor", "10 traffic light; 11 fire hydrant; 13 stop sign; 14 parking meter; 15 bench"),
    ("animal", "16 bird; 17 cat; 18 dog; 19 horse; 20 sheep; 21 cow; 22 elephant; 23 bear; 24 zebra; 25 giraffe"),
    ("accessory", "27 backpack; 28 umbrella; 31 handbag; 32 tie; 33 suitcase"),
    ("sports", "34 frisbee; 35 skis; 36 snowboard; 37 sports ball; 38 kite; 39 baseball bat; 40 baseball glove; "
               "41 skateboard; 42 surfboard; 43 tennis racket"),
    ("kitchen", "44 bottle; 46 wine glass; 47 cup; 48 fork; 49 knife; 50 spoon; 51 bowl"),
    ("food", "52 banana; 53 apple; 54 sandwich; 55 orange; 56 broccoli; 57 carrot; 58 hot dog; 59 pizza; 60 donut; "
             "61 cake"),
    ("furniture", "62 chair; 63 couch; 64 potted plant; 65 bed; 67 dining table; 70 toilet"),
    ("electronic", "72 tv; 73 laptop; 74 mouse; 75 remote; 76 keyboard; 77 cell phone"),
    ("appliance", "78 microwave; 79 oven; 80 toaster; 81 sink; 82 refrigerator"),
    ("indoor", "84 book; 85 clock; 86 vase; 87 scissors; 88 teddy bear; 89 hair drier; 90 toothbrush"),
)
COCO_2017_CATEGORIES: tuple[dict[str, Any], ...] = tuple(
    {"supercategory": sup, "id": int(entry.split(" ", 1)[0]), "name": entry.split(" ", 1)[1]}
    for sup, entries in _GROUPS for entry in entries.split("; "))
#: the 11 ids of the 2014 paper's 91 categories that no 2017 annotation uses (lists of 91 names keep them)
COCO_UNUSED_NAMES: dict[int, str] = {12: "street sign", 26: "hat", 29: "shoe", 30: "eye glasses", 45: "plate",
                                     66: "mirror", 68: "window", 69: "desk", 71: "door", 83: "blender",
                                     91: "hair brush"}


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
        return (*DETECTION_FIELDS, *super().fields())

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

"""COCO annotations from a Hugging Face copy's objects column, so an ``hf`` set carries what a ``coco`` set does.

Hugging Face copies of COCO keep each image's objects in one column, as a struct of lists
(``Sequence({...})``) or a list of structs, with boxes in one of several formats and categories as
class indices whose names are COCO's (80 contiguous names, or 91 with ``N/A`` placeholders at the
unused ids). This module reads which keys hold what from the dataset's ``Features``, maps the class
names onto COCO's official ids (1..90), turns one cell into COCO's annotation records (``bbox`` as
``[x, y, w, h]`` pixels) and tells the box format from the data only when a single format fits.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError, SampleError
from .coco import COCO_2017_CATEGORIES, COCO_UNUSED_NAMES

#: ``xywh``: COCO's corner and size; ``xyxy``: two corners; ``cxcywh``: centre and size; ``_norm``: the same
#: as fractions of the image's width and height
BBOX_FORMATS = ("xywh", "xyxy", "cxcywh", "xywh_norm", "xyxy_norm", "cxcywh_norm")
BOX_KEYS = ("bbox", "bboxes", "boxes")
CATEGORY_KEYS = ("category", "category_id", "categories", "label", "labels")
ID_KEYS = ("id", "bbox_id")
CROWD_KEYS = ("iscrowd", "is_crowd")
#: names a class list gives the ids no 2017 annotation uses (torchvision: ``N/A``, ``__background__``)
PLACEHOLDERS = frozenset({"n/a", "na", "background", ""})
#: other spellings of COCO's names, after :func:`normalize` (darknet's ``coco.names`` uses VOC's)
ALIASES = {"aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "pottedplant": "potted plant",
           "diningtable": "dining table", "tvmonitor": "tv", "tv monitor": "tv", "hair dryer": "hair drier"}
_IDS = {c["name"]: int(c["id"]) for c in COCO_2017_CATEGORIES}
_UNUSED = frozenset(COCO_UNUSED_NAMES.values())
_PIXEL_SLACK = 1.0  # how far (pixels) a box may pass the image's edge and still fit a format when inferring it
_NORM_SLACK = 1e-3  # the same for normalized boxes (fraction of the side)


def normalize(name: str) -> str:
    """A class name compared case-blind, with ``_`` and ``-`` as spaces (``traffic_light``, ``Traffic Light``)."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def coco_id(name: str) -> int | None:
    """COCO's official id of a class name; 0 for a placeholder or an id no 2017 annotation uses; None if unknown."""
    n = normalize(name)
    n = ALIASES.get(n, n)
    if n in _IDS:
        return _IDS[n]
    return 0 if n in PLACEHOLDERS or n in _UNUSED else None


def category_ids(names: Sequence[str], where: str) -> tuple[int, ...]:
    """Class index -> COCO id for a ClassLabel's names (0: not a 2017 category); ConfigError when one is unknown.

    Mapping by name gives 80 contiguous names their official ids, and a 91-name list (``N/A`` or the
    2014 names at the unused ids) index = id, without guessing which kind of list it is.
    """
    ids = tuple(coco_id(str(n)) for n in names)
    unknown = [str(n) for n, i in zip(names, ids) if i is None]
    if unknown:
        raise ConfigError(f"hf: {where}: class names that are not COCO categories: {', '.join(map(repr, unknown[:8]))}"
                          f"{' ...' if len(unknown) > 8 else ''} (only copies of COCO 2017, whose classes are named "
                          "as COCO names them, are read with their boxes)")
    seen: dict[int, str] = {}
    for n, i in zip(names, ids):
        if i and i in seen:
            raise ConfigError(f"hf: {where}: classes {seen[i]!r} and {n!r} are both COCO category {i}")
        if i:
            seen[i] = str(n)
    if not seen:
        raise ConfigError(f"hf: {where}: no class name is a COCO category")
    return tuple(int(i or 0) for i in ids)


@dataclass(frozen=True)
class ObjectsSchema:
    """Which keys of an objects cell hold what, read once from the dataset's Features (picklable)."""

    column: str
    box: str
    category: str
    ids: str | None = None
    area: str | None = None
    crowd: str | None = None
    box_float32: bool = False  # boxes stored as float32: read as the shortest decimals of their float32 values
    area_float32: bool = False
    category_ids: tuple[int, ...] | None = None  # class index -> COCO id; None: categories stored as names


def _leaf(feature: Any) -> Any:
    while hasattr(feature, "feature"):  # List, LargeList, the old Sequence
        feature = feature.feature
    return feature


def objects_schema(features: Mapping[str, Any], column: str) -> ObjectsSchema:
    """The keys of ``column`` (a struct of lists or a list of structs) and its class-name map; ConfigError otherwise."""
    feature = features[column]
    inner = feature.feature if hasattr(feature, "feature") else feature
    if not isinstance(inner, Mapping):
        raise ConfigError(f"hf: objects column {column!r} is {feature}, not a struct of boxes and categories")

    def pick(keys: tuple[str, ...], what: str) -> str | None:
        found = [k for k in keys if k in inner]
        if len(found) > 1:
            raise ConfigError(f"hf: objects column {column!r} has several {what} keys: {', '.join(found)}")
        return found[0] if found else None

    def need(keys: tuple[str, ...], what: str) -> str:
        found = pick(keys, what)
        if found is None:
            raise ConfigError(f"hf: objects column {column!r} has no {what} key ({' or '.join(keys)}; "
                              f"it has {', '.join(inner)})")
        return found

    box, category, area = need(BOX_KEYS, "box"), need(CATEGORY_KEYS, "category"), pick(("area",), "area")
    cat = _leaf(inner[category])
    where = f"{column}.{category}"
    if hasattr(cat, "names"):  # ClassLabel
        ids: tuple[int, ...] | None = category_ids(list(cat.names), where)
    elif getattr(cat, "dtype", None) in ("string", "large_string"):
        ids = None
    else:
        raise ConfigError(f"hf: {where} holds {cat} without class names; COCO ids are mapped from names "
                          "(a ClassLabel or text), never assumed from numbers")
    return ObjectsSchema(column, box, category, pick(ID_KEYS, "id"), area, pick(CROWD_KEYS, "iscrowd"),
                         getattr(_leaf(inner[box]), "dtype", None) == "float32",
                         area is not None and getattr(_leaf(inner[area]), "dtype", None) == "float32", ids)


def objects_of(cell: Any) -> list[Mapping[str, Any]]:
    """The objects of one cell as a list of records, from a struct of lists or a list of structs."""
    if cell is None:
        return []
    if isinstance(cell, Mapping):
        lists = {k: v for k, v in cell.items() if v is not None}
        lengths = {len(v) for v in lists.values()}
        if len(lengths) > 1:
            sizes = ", ".join(f"{k}: {len(v)}" for k, v in lists.items())
            raise SampleError(f"objects lists of different lengths: {sizes}")
        n = lengths.pop() if lengths else 0
        return [{k: v[i] for k, v in lists.items()} for i in range(n)]
    if isinstance(cell, list) and all(isinstance(o, Mapping) for o in cell):
        return cell
    raise SampleError(f"objects cell of type {type(cell).__name__} is neither a struct of lists nor a list of structs")


def _decimal(value: float, float32: bool) -> Decimal:
    """A stored number as the shortest decimal that reads back as it, in the precision it was stored in."""
    import numpy as np

    return Decimal(str(np.float32(value)) if float32 else repr(float(value)))


def _numbers(box: Any) -> tuple[float, float, float, float]:
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise SampleError(f"box {box!r} is not four numbers")
    try:
        a, b, c, d = (float(v) for v in box)
    except (TypeError, ValueError):
        raise SampleError(f"box {box!r} is not four numbers") from None
    return a, b, c, d


def _convert(a: Any, b: Any, c: Any, d: Any, fmt: str, width: Any, height: Any) -> tuple[Any, Any, Any, Any]:
    """``[x, y, w, h]`` from a box in ``fmt``, in the arithmetic of the numbers given (float or Decimal)."""
    base = fmt
    if fmt.endswith("_norm"):
        a, b, c, d, base = a * width, b * height, c * width, d * height, fmt[:-5]
    if base == "xyxy":
        return a, b, c - a, d - b
    if base == "cxcywh":
        return a - c / 2, b - d / 2, c, d
    return a, b, c, d


#: digits after the point tried for a derived box value before keeping the exact decimal result
_MAX_DECIMALS = 17


def _recomputed(value: Decimal, stored: float, float32: bool, offset: float = 0.0, scale: float = 1.0) -> Decimal:
    """The shortest decimal ``v`` from which the copy's maker, computing ``(offset + v) / scale`` in doubles
    and storing it in the column's precision, gets ``stored`` back bit for bit; ``value`` (the exact decimal
    result) if none (adding 0 and dividing by 1 are exact, so a stored number is its own shortest decimal).

    A number the copy derived (a corner ``x + w``, a centre, a fraction ``x / W``) carries the rounding of
    the maker's binary arithmetic, so exact decimal arithmetic on it gives ``38.64999999999997`` for COCO's
    ``38.65``: the same rule as for a stored number (the shortest decimal that reads back as it), applied
    through the maker's computation."""
    import numpy as np

    def same(v: Decimal) -> bool:
        out = (offset + float(v)) / scale
        return bool(np.float32(out) == np.float32(stored)) if float32 else out == stored

    with localcontext() as ctx:
        ctx.prec = 64  # a box of any sane size at 17 decimals
        for digits in range(_MAX_DECIMALS + 1):
            unit = Decimal(1).scaleb(-digits)
            try:
                q = value.quantize(unit)
            except InvalidOperation:  # too large for that many decimals: no box of an image
                break
            for candidate in (q, q - unit, q + unit):
                if same(candidate):
                    return candidate
    return value


def to_xywh(box: Any, fmt: str, width: int, height: int, float32: bool = False) -> tuple[float, float, float, float]:
    """One box as COCO's ``[x, y, w, h]`` in pixels.

    Each stored number is taken as the shortest decimal that reads back as it (in float32 when stored so) and
    converted in exact decimal arithmetic; a value the copy derived (from corners, centres or fractions) is
    then the shortest decimal from which the copy's numbers are recomputed bit for bit, as doubles (see
    :func:`_recomputed`), so a copy that stored COCO's ``[473.07, 395.93, 38.65, 28.67]`` as corners or
    fractions, in float32 or float64, gives those four values back.
    """
    stored = _numbers(box)
    a, b, c, d = (_decimal(v, float32) for v in stored)
    if not all(v.is_finite() for v in (a, b, c, d)):
        raise SampleError(f"box {box!r} is not four finite numbers")
    x, y, w, h = _convert(a, b, c, d, fmt, width, height)
    base, norm = fmt.removesuffix("_norm"), fmt.endswith("_norm")
    out: list[Decimal] = []
    for pos, size, s_pos, s_size, side in ((x, w, stored[0], stored[2], width), (y, h, stored[1], stored[3], height)):
        scale = float(side) if norm else 1.0
        if base == "cxcywh":  # the size was stored (w, or w / W), the centre made from it
            size = _recomputed(size, s_size, float32, scale=scale)
            pos = _recomputed(pos, s_pos, float32, offset=float(size) / 2, scale=scale)
        else:  # the position was stored (x, or x / W); the size, or the far corner made from it
            pos = _recomputed(pos, s_pos, float32, scale=scale)
            size = _recomputed(size, s_size, float32, offset=float(pos) if base == "xyxy" else 0.0, scale=scale)
        out += [pos, size]
    return float(out[0]), float(out[2]), float(out[1]), float(out[3])


def coco_annotations(cell: Any, schema: ObjectsSchema, fmt: str, image_id: int, width: int, height: int,
                first_id: int) -> list[dict[str, Any]]:
    """One image's objects as COCO annotations, in COCO's key order (no ``segmentation``).

    ``area`` is the copy's when it has one, else the box's ``w * h``; ``iscrowd`` 0 when absent; ``id`` the
    copy's, else ``first_id`` + the object's position (the listing numbers objects 1..N in row order).
    """
    out = []
    for j, obj in enumerate(objects_of(cell)):
        xywh = to_xywh(obj.get(schema.box), fmt, width, height, schema.box_float32)
        if xywh[2] < 0 or xywh[3] < 0:
            raise SampleError(f"box {obj.get(schema.box)!r} read as {fmt} has a negative size")
        category = obj.get(schema.category)
        if schema.category_ids is None:
            cid = coco_id(category) if isinstance(category, str) else None
        else:
            cid = schema.category_ids[category] if isinstance(category, int) and 0 <= category < len(
                schema.category_ids) else None
        if not cid:
            raise SampleError(f"object category {category!r} is not a COCO 2017 category")
        area = obj.get(schema.area) if schema.area else None
        if area is None:
            area = xywh[2] * xywh[3]
        elif schema.area_float32:
            area = float(_decimal(area, True))
        crowd = obj.get(schema.crowd) if schema.crowd else 0
        ann_id = obj.get(schema.ids) if schema.ids else first_id + j
        if crowd not in (0, 1, None, False, True) or not isinstance(ann_id, int) or isinstance(ann_id, bool):
            raise SampleError(f"object {j}: iscrowd {crowd!r} is not 0 or 1, or id {ann_id!r} is not an integer")
        out.append({"area": area, "iscrowd": int(crowd or 0), "image_id": image_id, "bbox": list(xywh),
                    "category_id": cid, "id": ann_id})
    return out


def _fits(box: Any, fmt: str, width: float | None, height: float | None) -> bool:
    """Whether a box read as ``fmt`` has a size and lies inside its image (an unknown side bounds nothing)."""
    norm = fmt.endswith("_norm")
    try:
        x, y, w, h = _convert(*_numbers(box), fmt, 1.0, 1.0)
    except SampleError:
        return False
    slack = _NORM_SLACK if norm else _PIXEL_SLACK
    fw = 1.0 if norm else (math.inf if width is None else float(width))
    fh = 1.0 if norm else (math.inf if height is None else float(height))
    return w >= 0 and h >= 0 and x >= -slack and y >= -slack and x + w <= fw + slack and y + h <= fh + slack


def infer_bbox_format(images: Iterable[tuple[Sequence[Any], int | None, int | None]], where: str) -> str:
    """The one box format under which every box (of ``(boxes, width, height)`` per image) fits its image.

    Only a format the data rules out is dropped (a negative size, a box past an edge), so the answer is
    certain or there is none: several formats left raise a ConfigError asking for ``--bbox-format``.
    """
    left = list(BBOX_FORMATS)
    for boxes, width, height in images:
        for box in boxes:
            left = [f for f in left if _fits(box, f, width, height)]
        if len(left) <= 1:
            break
    if len(left) == 1:
        return left[0]
    if not left:
        raise ConfigError(f"hf: the boxes of {where} fit no format ({', '.join(BBOX_FORMATS)}) inside their images")
    raise ConfigError(f"hf: cannot tell the box format of {where}: every box fits {', '.join(left)}; give "
                      f"--bbox-format (one of {', '.join(BBOX_FORMATS)})")


def boxes_of(cell: Any, schema: ObjectsSchema) -> list[Any]:
    """The boxes of one cell (for inferring the format), without the rest of each object."""
    if isinstance(cell, Mapping):
        return list(cell.get(schema.box) or [])
    return [o.get(schema.box) for o in objects_of(cell)]


def resolve(ds: Any, column: str, bbox_format: str | None) -> tuple[ObjectsSchema, str]:
    """The objects column's keys and box format: ``bbox_format`` when given, else inferred from every box
    (with the ``width`` and ``height`` columns when the dataset has both), read without the images."""
    schema = objects_schema(ds.features, column)
    if bbox_format is not None:
        return schema, bbox_format
    sized = "width" in ds.column_names and "height" in ds.column_names
    batches = ds.select_columns([column, *(("width", "height") if sized else ())]).iter(batch_size=1024)
    images = ((boxes_of(cell, schema), b["width"][i] if sized else None, b["height"][i] if sized else None)
              for b in batches for i, cell in enumerate(b[column]))
    return schema, infer_bbox_format(images, f"{column}.{schema.box}")


def first_ids(ds: Any, schema: ObjectsSchema) -> list[int]:
    """Each row's first annotation id when the copy has none: objects numbered 1..N in row order (unique, and
    the same on every run), from the lengths of the Arrow lists alone."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = ds.select_columns([schema.column]).with_format("arrow")[:].column(schema.column).combine_chunks()
    if pa.types.is_struct(column.type):
        column = column.field(schema.box)
    counts = pc.fill_null(pc.list_value_length(column), 0).to_pylist()
    out, total = [], 1
    for c in counts:
        out.append(total)
        total += c
    return out


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an image from its header, as the pipeline decodes it (EXIF rotations swap the sides)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
    except Exception as exc:  # Pillow raises many types for bad data
        raise SampleError(f"cannot read the image header: {type(exc).__name__}: {exc}") from None
    return width, height


def image_id_of(value: Any) -> int | None:
    """An integer image id from an id column's value: an int, or text of digits (``"139"``, ``"000000000139.jpg"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        stem, dot, ext = value.rsplit("/", 1)[-1].rpartition(".")
        stem = stem if dot and ext.isalpha() else value.rsplit("/", 1)[-1]  # a file's extension only: "12.5" is none
        if stem.isascii() and stem.isdigit():
            return int(stem)
    return None

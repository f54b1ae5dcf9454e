"""Builders for small test datasets in each source's native layout, made from real photographs.

The photographs ship with scikit-image (``skimage.data``) and scikit-learn
(``load_sample_images``), so nothing is downloaded. Each builder writes a dataset under a
folder and returns a :class:`Built` that says, independently of the code under test, which
samples the source must list, with which original name, label and outcome.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import math
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------- photographs


@functools.lru_cache(maxsize=None)
def _full(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        data = load_sample_images()
        return data.images[[Path(f).stem for f in data.filenames].index(name)]
    import skimage.data

    return getattr(skimage.data, name)()


def photo(name: str, height: int, width: int) -> np.ndarray:
    """A real photograph centre-cropped to the aspect ratio and resized (Lanczos) to (height, width)."""
    full = _full(name)
    h, w = full.shape[:2]
    if w * height > h * width:  # too wide: crop width
        cw = h * width // height
        full = full[:, (w - cw) // 2: (w - cw) // 2 + cw]
    else:
        ch = w * height // width
        full = full[(h - ch) // 2: (h - ch) // 2 + ch]
    img = Image.fromarray(full).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(img).copy()


# --------------------------------------------------------------------------- encoded files


def encode_pil(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray, quality: int = 92) -> bytes:
    return encode_pil(Image.fromarray(arr), "JPEG", quality=quality)


def png_bytes(arr: np.ndarray) -> bytes:
    return encode_pil(Image.fromarray(arr), "PNG")


def gray_jpeg(name: str = "camera", size: tuple[int, int] = (96, 96)) -> bytes:
    arr = photo(name, *size)
    if arr.ndim == 3:
        arr = np.asarray(Image.fromarray(arr).convert("L"))
    return jpeg_bytes(arr)


def cmyk_jpeg(name: str = "coffee", size: tuple[int, int] = (96, 128)) -> bytes:
    """A CMYK JPEG (as print workflows write; ImageNet has a few)."""
    return encode_pil(Image.fromarray(photo(name, *size)).convert("CMYK"), "JPEG", quality=95)


def exif_rotated_jpeg(name: str, size: tuple[int, int], orientation: int) -> bytes:
    """A JPEG whose stored pixels are ``photo(name, *size)`` and whose EXIF orientation tag is set."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode_pil(Image.fromarray(photo(name, *size)), "JPEG", quality=92, exif=exif.tobytes())


def truncated_jpeg(name: str = "rocket", size: tuple[int, int] = (96, 128)) -> bytes:
    data = jpeg_bytes(photo(name, *size))
    return data[: len(data) * 3 // 5]


def palette_png(name: str = "chelsea", size: tuple[int, int] = (80, 112), transparent: int | None = None) -> bytes:
    img = Image.fromarray(photo(name, *size)).quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=0)
    opts = {} if transparent is None else {"transparency": transparent}
    return encode_pil(img, "PNG", **opts)


def rgba_png(name: str = "astronaut", size: tuple[int, int] = (100, 100)) -> bytes:
    """A photograph cut out with a soft round mask: transparent corners, opaque centre, graded ring."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2))
    alpha = np.clip(np.rint((1.0 - r) / 0.25 * 255), 0, 255).astype(np.uint8)
    return png_bytes(np.dstack([photo(name, h, w), alpha]))


# expected pixels, computed here without pipeline code ------------------------------------


def pil_raw(data: bytes) -> np.ndarray:
    """Stored pixels as Pillow decodes them, no orientation, no mode conversion."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img).copy()


def over_white(rgba: np.ndarray) -> np.ndarray:
    """Alpha-composite RGBA over white in float, rounded (Pillow's integer result is within 1)."""
    a = rgba[..., 3:4].astype(np.float64) / 255.0
    out = rgba[..., :3].astype(np.float64) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- datasets


@dataclass
class Expected:
    """One listed sample: the original name the pipeline must keep, its bytes, label, and outcome."""

    source: str
    data: bytes
    label: int | None = None
    error: str | None = None  # substring of the error message, or None for an ok sample
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Built:
    root: Path
    samples: dict[str, Expected]  # by original name (SampleRef.source)
    skipped: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> list[Expected]:
        return [e for e in self.samples.values() if e.error is None]


def _write(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


WNIDS = ["n01440764", "n01443537", "n02102040"]  # tench, goldfish, English springer


def standard_wnids() -> list[str]:
    """The ILSVRC-2012 class list as timm ships it (the reference the source's labels are checked against)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def _train_files() -> list[tuple[str, bytes]]:
    """(file stem suffix, bytes) for ImageNet train folders: ordinary JPEGs plus the odd cases."""
    return [
        ("a", jpeg_bytes(photo("astronaut", 96, 128))),
        ("gray", gray_jpeg("camera", (96, 96))),
        ("cmyk", cmyk_jpeg("coffee", (96, 128))),
        ("png", png_bytes(photo("china", 80, 120))),  # a PNG named .JPEG, as in ILSVRC-2012
        ("exif6", exif_rotated_jpeg("rocket", (64, 112), 6)),
        ("b", jpeg_bytes(photo("flower", 112, 80))),
    ]


def build_imagenet(root: Path, layout: str) -> dict[str, Built]:
    """ImageNet in the PyTorch-example layout ("folders") or the Kaggle layout ("kaggle").

    Returns the expectation per split. The val split of the Kaggle layout is flat with labels
    in LOC_val_solution.csv; one val image is missing from the csv and must become an error.
    Labels are the standard ILSVRC-2012 indices of the three wnids (0, 1, 217), from timm's list;
    the Kaggle layout's LOC_synset_mapping.txt is the full standard list, as Kaggle ships it.
    """
    standard = standard_wnids()
    if layout == "folders":
        base = root
    elif layout == "kaggle":
        base = root / "ILSVRC" / "Data" / "CLS-LOC"
        _write(root / "LOC_synset_mapping.txt", "".join(f"{w} class {i}\n" for i, w in enumerate(standard)).encode())
    else:
        raise ValueError(layout)
    label = {w: standard.index(w) for w in WNIDS}
    out = {"train": Built(root, {}), "val": Built(root, {})}
    # train: two images per class; the odd files are spread over the classes
    files = _train_files()
    for i, (suffix, data) in enumerate(files):
        wnid = WNIDS[i % len(WNIDS)]
        rel = f"train/{wnid}/{wnid}_{i:05d}_{suffix}.JPEG"
        _write(base / rel, data)
        out["train"].samples[rel] = Expected(rel, data, label[wnid], fields={"wnid": wnid})
    # val
    val = [
        (WNIDS[0], jpeg_bytes(photo("cat", 96, 128))),
        (WNIDS[1], palette_png("chelsea", (80, 112))),
        (WNIDS[2], jpeg_bytes(photo("immunohistochemistry", 64, 64))),
        (WNIDS[0], truncated_jpeg("rocket", (96, 128))),
    ]
    rows = []
    for i, (wnid, data) in enumerate(val, start=1):
        stem = f"ILSVRC2012_val_{i:08d}"
        if layout == "folders":
            rel = f"val/{wnid}/{stem}.JPEG"
        else:
            rel = f"val/{stem}.JPEG"
            rows.append((stem, f"{wnid} 48 30 200 180 {wnid} 10 12 60 70"))
        _write(base / rel, data)
        error = "cannot decode" if i == len(val) else None
        out["val"].samples[rel] = Expected(rel, data, label[wnid], error, {"wnid": wnid})
    if layout == "kaggle":  # one val image the csv does not know
        rel = f"val/ILSVRC2012_val_{len(val) + 1:08d}.JPEG"
        data = _write(base / rel, jpeg_bytes(photo("coffee", 64, 96)))
        out["val"].samples[rel] = Expected(rel, data, None, "missing label")
        with open(root / "LOC_val_solution.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["ImageId", "PredictionString"])
            w.writerows(rows)
    return out


def build_ade20k(root: Path) -> dict[str, Built]:
    """ADEChallengeData2016 with images, uint8 label maps, and one image without its annotation."""
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(20160)
    out = {}
    for split, folder, names in (("train", "training", ["astronaut", "coffee", "china"]),
                                 ("val", "validation", ["chelsea", "flower", "rocket"])):
        built = Built(root, {})
        for i, name in enumerate(names, start=1):
            stem = f"ADE_{split}_{i:08d}"
            rel = f"images/{folder}/{stem}.jpg"
            data = _write(base / rel, jpeg_bytes(photo(name, 96, 128)))
            if split == "val" and i == len(names):
                built.samples[rel] = Expected(rel, data, None, "missing annotation")
                continue
            # a label map: class ids from a coarse quantisation of the photo, as segmentation masks look
            gray = np.asarray(Image.fromarray(photo(name, 96, 128)).convert("L"))
            seg = (gray // 32).astype(np.uint8) + rng.integers(0, 2, size=gray.shape, dtype=np.uint8) * 8
            seg_bytes = _write(base / f"annotations/{folder}/{stem}.png", png_bytes(seg))
            built.samples[rel] = Expected(rel, data, None, None, {"seg.png": seg_bytes})
        out[split] = built
    return out


def build_imagefolder(root: Path, classes: bool) -> Built:
    """A folder of images with (``classes``) or without class subfolders, plus non-image files to skip."""
    built = Built(root, {})
    items = [
        ("cats", "chelsea.jpg", jpeg_bytes(photo("chelsea", 96, 128))),
        ("cats", "cat.png", png_bytes(photo("cat", 80, 112))),
        ("cats", "cutout_rgba.png", rgba_png("astronaut", (100, 100))),
        ("things", "rocket.JPG", jpeg_bytes(photo("rocket", 112, 80))),
        ("things", "coins.jpeg", gray_jpeg("coins", (96, 112))),
        ("things", "exif8.jpg", exif_rotated_jpeg("coffee", (72, 120), 8)),
        ("things", "broken.jpg", truncated_jpeg("astronaut", (96, 96))),
    ]
    names = sorted({c for c, _, _ in items})
    for cls, fname, data in items:
        # without classes: the "cats" images at the top, the others in a subfolder (then no labels)
        rel = f"{cls}/{fname}" if classes else fname if cls == "cats" else f"sub/{fname}"
        _write(root / rel, data)
        error = "cannot decode" if fname == "broken.jpg" else None
        built.samples[rel] = Expected(rel, data, names.index(cls) if classes else None, error,
                                      {"class_name": cls} if classes else {})
    # files that are not images: skipped and counted
    _write(root / "README.txt", b"not an image\n")
    _write(root / ("cats" if classes else "sub") / "labels.csv", b"a,b\n")
    _write(root / ".hidden" / "x.jpg", b"hidden folders are ignored")
    built.skipped = 2
    return built


def hf_rows() -> list[tuple[bytes, int]]:
    """(image bytes, label) of the Hugging Face test dataset; one row holds a truncated JPEG."""
    return [
        (jpeg_bytes(photo("astronaut", 96, 96)), 0),
        (png_bytes(photo("coffee", 80, 120)), 1),
        (gray_jpeg("camera", (64, 96)), 2),
        (truncated_jpeg("china", (96, 128)), 1),
        (jpeg_bytes(photo("flower", 120, 80)), 0),
        (jpeg_bytes(photo("cat", 64, 80)), -1),  # ClassLabel's "no label"
    ]


HF_CLASSES = ["astronaut", "kitchen", "scene"]


def build_hf(root: Path) -> dict[str, Built]:
    """The same rows as a ``save_to_disk`` folder and as parquet files (two, to test globbing)."""
    import datasets

    rows = hf_rows()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=HF_CLASSES),
                                  "name": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b, _ in rows], "label": [lab for _, lab in rows],
         "name": [f"img{i}" for i in range(len(rows))]}, features=features)
    disk = root / "disk"
    ds.save_to_disk(str(disk))
    pq_dir = root / "parquet"
    pq_dir.mkdir(parents=True)
    ds.select(range(3)).to_parquet(str(pq_dir / "part-0.parquet"))
    ds.select(range(3, len(rows))).to_parquet(str(pq_dir / "part-1.parquet"))
    out = {}
    for kind, where in (("disk", disk), ("parquet", pq_dir)):
        width = len(str(len(rows) - 1))
        built = Built(where, {}, options={"label_column": "label"})
        for i, (data, lab) in enumerate(rows):
            name = f"row {i:0{width}d}"  # the row, not the root as typed (a path change must not redo shards)
            error = "cannot decode" if i == 3 else "missing label" if lab < 0 else None
            built.samples[name] = Expected(name, data, lab, error, {"class_name": HF_CLASSES[lab]} if lab >= 0 else {})
        out[kind] = built
    return out


COCO_CATEGORIES = [{"supercategory": "person", "id": 1, "name": "person"},
                   {"supercategory": "animal", "id": 17, "name": "cat"},
                   {"supercategory": "kitchen", "id": 47, "name": "cup"},
                   {"supercategory": "indoor", "id": 90, "name": "toothbrush"}]


def _polygon_area(poly: list[float]) -> float:
    """Shoelace area of one flat [x0, y0, x1, y1, ...] polygon (COCO's ``area`` of a polygon mask)."""
    x, y = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _crowd_rle(height: int, width: int, top: int, left: int, h: int, w: int) -> dict[str, Any]:
    """An uncompressed (column-major) RLE of a rectangle, as COCO stores crowd regions: counts alternate 0s, 1s."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top:top + h, left:left + w] = 1
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = int(v), 1
    counts.append(run)
    return {"counts": counts, "size": [height, width]}


def coco_val_json() -> tuple[dict[str, Any], dict[str, bytes]]:
    """A hand-made instances_val2017.json and the image files it names (real photographs).

    Boxes are ``[x, y, w, h]`` with fractional values as COCO writes them; one image has polygons
    of two parts, one an RLE crowd region, one (the cat) no annotation, one is a grayscale JPEG and
    one a CMYK JPEG. Areas carry many digits so a lossy float round trip would show.
    """
    files = {
        "000000000139.jpg": jpeg_bytes(photo("astronaut", 96, 128)),
        "000000000285.jpg": jpeg_bytes(photo("coffee", 80, 112)),
        "000000000632.jpg": jpeg_bytes(photo("chelsea", 72, 96)),  # no annotation
        "000000000724.jpg": gray_jpeg("camera", (64, 80)),
        "000000000776.jpg": cmyk_jpeg("coffee", (64, 96)),
    }
    images, anns = [], []
    for i, (name, data) in enumerate(files.items()):
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
        images.append({"license": 1 + i % 2, "file_name": name, "coco_url": f"http://images.cocodataset.org/val2017/{name}",
                       "height": h, "width": w, "date_captured": "2013-11-14 17:02:52", "flickr_url": "",
                       "id": int(name[:-4])})
    person = [[30.5, 10.25, 90.75, 12.0, 95.0, 90.5, 28.125, 88.0]]
    helmet = [[40.0, 8.0, 60.5, 8.0, 60.5, 30.0], [61.0, 9.0, 70.0, 9.0, 70.0, 20.0]]  # two parts
    cup = [[20.0, 30.0, 70.0, 30.0, 70.0, 75.0, 20.0, 75.0]]
    anns += [
        {"segmentation": person, "area": _polygon_area(person[0]), "iscrowd": 0, "image_id": 139,
         "bbox": [28.125, 10.25, 66.875, 80.25], "category_id": 1, "id": 1768},
        {"segmentation": helmet, "area": _polygon_area(helmet[0]) + _polygon_area(helmet[1]), "iscrowd": 0,
         "image_id": 139, "bbox": [40.0, 8.0, 30.0, 22.0], "category_id": 90, "id": 1769},
        {"segmentation": cup, "area": 2250.0 / 3.0, "iscrowd": 0, "image_id": 285,
         "bbox": [20.0, 30.0, 50.0, 45.0], "category_id": 47, "id": 2001},
        {"segmentation": _crowd_rle(80, 112, 5, 80, 30, 25), "area": 750, "iscrowd": 1, "image_id": 285,
         "bbox": [80.0, 5.0, 25.0, 30.0], "category_id": 1, "id": 900100285},
        {"segmentation": [[10.0, 12.0, 50.0, 12.0, 50.0, 60.0, 10.0, 60.0]], "area": 1920.0, "iscrowd": 0,
         "image_id": 724, "bbox": [10.0, 12.0, 40.0, 48.0], "category_id": 1, "id": 3001},
        {"segmentation": [[5.0, 5.0, 30.0, 5.0, 30.0, 40.0]], "area": 437.5, "iscrowd": 0, "image_id": 776,
         "bbox": [5.0, 5.0, 25.0, 35.0], "category_id": 47, "id": 4001},
        {"segmentation": [[50.0, 20.0, 90.0, 20.0, 90.0, 60.0, 50.0, 60.0]], "area": 1600.0, "iscrowd": 0,
         "image_id": 776, "bbox": [50.0, 20.0, 40.0, 40.0], "category_id": 17, "id": 4002},
    ]
    data = {"info": {"description": "mpq test COCO", "version": "1.0", "year": 2017},
            "licenses": [{"url": "http://example.org/1", "id": 1, "name": "one"},
                         {"url": "http://example.org/2", "id": 2, "name": "two"}],
            "images": images, "annotations": anns, "categories": COCO_CATEGORIES}
    return data, files


def build_coco(root: Path) -> dict[str, Built]:
    """COCO 2017 as downloaded, one folder below ``root``: ``coco/{val2017,train2017}/``, ``coco/annotations/``.

    val2017: :func:`coco_val_json`. train2017: two images, one of them listed in the JSON but absent
    from the folder (an error row).
    """
    base = root / "coco"
    out = {}
    val, files = coco_val_json()
    train_files = {"000000000009.jpg": jpeg_bytes(photo("rocket", 64, 96))}
    train = {"images": [{"file_name": "000000000009.jpg", "height": 64, "width": 96, "id": 9},
                        {"file_name": "000000000025.jpg", "height": 64, "width": 96, "id": 25}],
             "annotations": [{"segmentation": [[1.0, 1.0, 20.0, 1.0, 20.0, 30.0]], "area": 285.0, "iscrowd": 0,
                              "image_id": 9, "bbox": [1.0, 1.0, 19.0, 29.0], "category_id": 90, "id": 77}],
             "categories": COCO_CATEGORIES}
    for split, data, imgs in (("val2017", val, files), ("train2017", train, train_files)):
        _write(base / "annotations" / f"instances_{split}.json", json.dumps(data).encode())
        built = Built(root, {})
        for image in data["images"]:
            name = image["file_name"]
            if name in imgs:
                built.samples[name] = Expected(name, _write(base / split / name, imgs[name]))
            else:
                built.samples[name] = Expected(name, b"", None, "cannot read")
        out[split] = built
    return out


# --------------------------------------------------------------------------- reading output back


def read_tar(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Every member of a tar with its bytes, in stored order."""
    with tarfile.open(path) as tf:
        return [(m, tf.extractfile(m).read()) for m in tf.getmembers()]


def group_members(members: list[tuple[tarfile.TarInfo, bytes]]) -> dict[str, list[tuple[str, bytes]]]:
    """Members by sample key (the name up to the first dot), each as [(extension, bytes), ...] in order."""
    out: dict[str, list[tuple[str, bytes]]] = {}
    for info, data in members:
        key, _, ext = info.name.partition(".")
        out.setdefault(key, []).append((ext, data))
    return out


def set_members(folder: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of a set's tars: key -> {extension: bytes}."""
    return {key: dict(members) for tar in sorted(folder.glob("*.tar"))
            for key, members in group_members(read_tar(tar)).items()}


def rgb_pixels(data: bytes) -> np.ndarray:
    """An image file's pixels as RGB (what the pipeline compares stored lossless images by)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB")).copy()


def tree_bytes(folder: Path, pattern: str = "*.tar") -> dict[str, bytes]:
    """Relative path -> bytes of every file matching ``pattern`` under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob(pattern))}


def verify_run(result, built: Built) -> dict[str, dict[str, Any]]:
    """Check every codec set of a finished run against the fixture, recomputing what was recorded.

    Returns, per canonical spec, the JSON records by original name (for further checks).
    """
    import pyarrow.parquet as pq
    import pytest

    from pipeline.codecs import make_codec
    from pipeline.media.image import decode_to_rgb
    from pipeline.metrics.image import mse as mse_of
    from pipeline.metrics.image import psnr_from_mse
    from pipeline.codecs.spec import parse_spec

    assert not result.failed, result.failed
    assert result.listed == len(built.samples)
    assert len(result.sets) == len(result.config.codecs)
    n_ok = len(built.ok)
    records_by_spec = {}
    for summary in result.sets:
        spec = parse_spec(summary.spec)
        assert spec.canonical == summary.spec
        codec = make_codec(spec)
        folder = Path(summary.folder)
        assert folder.name == spec.tag
        assert (summary.samples, summary.ok, summary.errors) == (len(built.samples), n_ok,
                                                                 len(built.samples) - n_ok)
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files left"
        index = json.loads((folder / "index.json").read_text())
        assert index["codec"] == spec.canonical and index["tag"] == spec.tag
        assert index["counts"] == {"listed": len(built.samples), "ok": n_ok, "error": len(built.samples) - n_ok}
        # shards named in the index are exactly the tars present, with the recorded size and hash
        assert sorted(s["name"] for s in index["shards"]) == sorted(p.name for p in folder.glob("*.tar"))
        for s in index["shards"]:
            data = (folder / s["name"]).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (s["bytes"], s["sha256"])
        manifest = pq.read_table(folder / "manifest.parquet").to_pylist()
        assert len(manifest) == len(built.samples)
        rows = {r["source"]: r for r in manifest}
        assert set(rows) == set(built.samples), "manifest must list every sample under its original name"
        assert len({r["key"] for r in manifest}) == len(manifest)

        members: dict[str, list[tuple[str, bytes]]] = {}
        for s in index["shards"]:
            items = read_tar(folder / s["name"])
            for info, _ in items:
                assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", ""), info.name
                assert info.isfile()
            grouped = group_members(items)
            assert not set(grouped) & set(members), "a key in two shards"
            members.update(grouped)
        assert len(members) == n_ok

        records = {}
        for name, exp in built.samples.items():
            row = rows[name]
            key = row["key"]
            assert "." not in key and "/" not in key
            assert row["codec"] == spec.canonical
            assert row["label"] == exp.label
            if exp.error is not None:
                assert row["status"] == "error" and exp.error in row["error"], (name, row["error"])
                assert key not in members
                continue
            assert row["status"] == "ok" and row["error"] is None, (name, row["error"])
            assert row["shard"] in [s["name"] for s in index["shards"]]
            sample = members[key]
            exts = [e for e, _ in sample]
            # payload first, the json record last; the source's attachments in between, sorted
            assert exts[0] == codec.extension and exts[-1] == "json", exts
            attachments = dict(sample[1:-1])
            copied = [e for e in exts[1:-1] if e == "cls" or e in exp.fields]
            assert copied == sorted(copied)
            payload, record = sample[0][1], json.loads(sample[-1][1])
            assert not [k for k in record if k.endswith("_s")], "timings must stay out of shards"
            assert record["codec"] == spec.canonical
            assert record["source"] == exp.source == row["source"]
            assert record["key"] == key
            assert record["source_sha256"] == hashlib.sha256(exp.data).hexdigest() == row["source_sha256"]
            assert record["bits"] == 8 * len(payload) == row["bits"]
            decoded = codec.decode(payload)
            reference = decode_to_rgb(exp.data)
            h, w = reference.shape[:2]
            assert decoded.shape == reference.shape and decoded.dtype == np.uint8
            assert (record["width"], record["height"]) == (w, h) == (row["width"], row["height"])
            assert record["bpp"] == row["bpp"] == record["bits"] / (w * h)
            err = mse_of(reference, decoded)
            psnr = psnr_from_mse(err)
            assert record["mse"] == pytest.approx(err, rel=1e-12, abs=1e-12)
            assert row["psnr"] == pytest.approx(psnr, rel=1e-12)
            assert record["psnr"] == (None if math.isinf(psnr) else pytest.approx(psnr, rel=1e-12))
            if codec.lossless:
                assert np.array_equal(decoded, reference)
            if exp.label is not None:
                assert attachments["cls"] == str(exp.label).encode("ascii")
                assert record["label"] == exp.label
            else:
                assert "cls" not in attachments
            for ext, want in exp.fields.items():
                if ext.endswith(".png"):  # attachments are copied byte for byte
                    assert attachments[ext] == want, ext
                else:
                    assert record[ext] == want and row[ext] == want, ext
            records[name] = record
        records_by_spec[spec.canonical] = records
    return records_by_spec


DEFAULT_CODECS = ("none", "jpeg:quality=50")


def transcode(dataset: str, built: Built, out: Path, *, split: str | None = None,
              codecs: tuple[str, ...] = DEFAULT_CODECS, samples_per_shard: int = 2, executor=None,
              progress=False, **kwargs):
    """Run the pipeline on a fixture dataset (InlineExecutor unless ``executor`` is given)."""
    from pipeline import TranscodeConfig
    from pipeline.run.driver import transcode as run

    config = TranscodeConfig.create(dataset, built.root, list(codecs), out=out, split=split,
                                    samples_per_shard=samples_per_shard,
                                    source_options=kwargs.pop("source_options", built.options), **kwargs)
    return run(config, executor, progress=progress)


@contextlib.contextmanager
def registered_codecs(module_name: str, names: Iterable[str]) -> Iterator[Any]:
    """A test module that registers codecs, imported for the duration; its codecs unregistered afterwards,
    so registry-driven tests and README tables never see them."""
    import importlib
    import sys

    from pipeline.codecs import _REGISTRY

    module = importlib.import_module(module_name)
    try:
        yield module
    finally:
        for name in names:
            _REGISTRY.pop(name, None)
        sys.modules.pop(module_name, None)

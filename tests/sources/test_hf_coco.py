"""Hugging Face copies of COCO (``hf --objects-column``): the same ``.coco.json`` as the ``coco`` source writes.

The copies are made here from the COCO test fixture (real photographs, hand-made boxes) the way copies
on the hub are laid out: a struct of lists or a list of structs, boxes as ``xywh``, ``xyxy`` or
normalized centres, classes as 80 contiguous names or torchvision's 91 (``N/A`` at the unused ids).
Expected annotations are recomputed from the fixture's own COCO JSON, class ids from torchvision's
list, never from the code under test.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fixtures as fx
from pipeline.errors import ConfigError, SampleError
from pipeline.loaders import coco_ground_truth, load
from pipeline.sources import make_source

datasets = pytest.importorskip("datasets")

KEEP = ("area", "iscrowd", "image_id", "bbox", "category_id", "id")  # what a copy without masks carries


def torchvision_names() -> list[str]:
    """torchvision's COCO detector classes: index = COCO id, ``__background__`` and ``N/A`` at unused ids."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return list(FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"])


def names_80() -> list[str]:
    """The 80 contiguous class names most copies use (COCO's id order, unused ids left out)."""
    return [n for n in torchvision_names()[1:] if n != "N/A"]


def names_91() -> list[str]:
    """91 names, index = COCO id, as copies built by a loading script list them (``ClassLabel`` names are
    unique, so the unused ids carry the 2014 paper's names and only 0 is ``N/A``)."""
    paper = {12: "street sign", 26: "hat", 29: "shoe", 30: "eye glasses", 45: "plate", 66: "mirror", 68: "window",
             69: "desk", 71: "door", 83: "blender"}
    return ["N/A", *(paper.get(i, n) for i, n in enumerate(torchvision_names()) if i)]


def _image(data: dict[str, Any], image_id: int) -> dict[str, Any]:
    image = next(i for i in data["images"] if i["id"] == image_id)
    return {k: image[k] for k in ("id", "file_name", "width", "height")}


def _anns(data: dict[str, Any], image_id: int) -> list[dict[str, Any]]:
    return [a for a in data["annotations"] if a["image_id"] == image_id]


def _write_copy(ds: Any, root: Path, kind: str) -> Path:
    if kind == "disk":
        ds.save_to_disk(str(root))
        return root
    root.mkdir(parents=True)
    half = len(ds) // 2
    ds.select(range(half)).to_parquet(str(root / "part-0.parquet"))
    ds.select(range(half, len(ds))).to_parquet(str(root / "part-1.parquet"))
    return root


def copy_xywh(root: Path) -> Path:
    """Parquet, struct of lists (``Sequence({...})``), float32 ``xywh`` boxes, 80 class names, every key present."""
    data, files = fx.coco_val_json()
    names = names_80()
    ids = [i["id"] for i in data["images"]]
    objects = [{"bbox": [a["bbox"] for a in _anns(data, i)],
                "category": [names.index(torchvision_names()[a["category_id"]]) for a in _anns(data, i)],
                "area": [float(a["area"]) for a in _anns(data, i)], "iscrowd": [a["iscrowd"] for a in _anns(data, i)],
                "id": [a["id"] for a in _anns(data, i)]} for i in ids]
    features = datasets.Features({
        "image": datasets.Image(), "image_id": datasets.Value("int64"), "width": datasets.Value("int64"),
        "height": datasets.Value("int64"),
        "objects": datasets.Sequence({"bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                                      "category": datasets.ClassLabel(names=names), "area": datasets.Value("float64"),
                                      "iscrowd": datasets.Value("int64"), "id": datasets.Value("int64")})})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": files[f"{i:012d}.jpg"], "path": None} for i in ids], "image_id": ids,
         "width": [_image(data, i)["width"] for i in ids], "height": [_image(data, i)["height"] for i in ids],
         "objects": objects}, features=features)
    return _write_copy(ds, root, "parquet")


def xyxy_rows() -> tuple[list[int], list[list[dict[str, Any]]]]:
    data, _ = fx.coco_val_json()
    ids = [i["id"] for i in data["images"]]
    return ids, [[{"bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                   "category_id": a["category_id"]} for a in _anns(data, i)] for i in ids]


def copy_xyxy(root: Path, sized: bool = False) -> Path:
    """save_to_disk, list of structs, float64 ``xyxy`` boxes, 91 names (index = id); no ids, areas, crowd flags,
    image id in a column named ``id``, no width and height (read from the image headers) unless ``sized``."""
    data, files = fx.coco_val_json()
    ids, objects = xyxy_rows()
    columns: dict[str, Any] = {"image": datasets.Image(), "id": datasets.Value("int64"),
                               "objects": datasets.List({"bbox": datasets.List(datasets.Value("float64"), length=4),
                                                         "category_id": datasets.ClassLabel(names=names_91())})}
    values: dict[str, Any] = {"image": [{"bytes": files[f"{i:012d}.jpg"], "path": None} for i in ids], "id": ids,
                              "objects": objects}
    if sized:
        columns.update(width=datasets.Value("int64"), height=datasets.Value("int64"))
        values.update(width=[_image(data, i)["width"] for i in ids], height=[_image(data, i)["height"] for i in ids])
    return _write_copy(datasets.Dataset.from_dict(values, features=datasets.Features(columns)), root, "disk")


def expected_xywh() -> dict[int, dict[str, Any]]:
    """Per image id, the record a copy keeping every key must give: the fixture's JSON without the masks."""
    data, _ = fx.coco_val_json()
    return {i["id"]: {"image": _image(data, i["id"]), "annotations": [{k: a[k] for k in KEEP}
                                                                      for a in _anns(data, i["id"])]}
            for i in data["images"]}


def expected_xyxy() -> dict[int, dict[str, Any]]:
    """A copy without ids, areas and crowd flags: ids 1..N in row order, area w*h, iscrowd 0."""
    data, _ = fx.coco_val_json()
    out, next_id = {}, 1
    for image in data["images"]:
        anns = []
        for a in _anns(data, image["id"]):
            x, y, w, h = a["bbox"]
            anns.append({"area": w * h, "iscrowd": 0, "image_id": image["id"], "bbox": [x, y, w, h],
                         "category_id": a["category_id"], "id": next_id})
            next_id += 1
        out[image["id"]] = {"image": _image(data, image["id"]), "annotations": anns}
    return out


COPIES = {"xywh": (copy_xywh, {}, expected_xywh),
          "xyxy": (copy_xyxy, {"key_column": "id", "bbox_format": "xyxy"}, expected_xyxy)}


def _built(root: Path, options: dict[str, Any]) -> fx.Built:
    data, files = fx.coco_val_json()
    built = fx.Built(root, {}, options={"objects_column": "objects", **options})
    for image in data["images"]:
        built.samples[str(image["id"])] = fx.Expected(str(image["id"]), files[image["file_name"]])
    return built


@pytest.fixture(scope="module")
def hf_sets(tmp_path_factory) -> dict[str, tuple[Path, fx.Built]]:
    """Each copy transcoded (lossless and JPEG) into its own output folder, checked by the generic run checks."""
    out = {}
    for name, (make, options, _) in COPIES.items():
        base = tmp_path_factory.mktemp(f"hf-coco-{name}")
        built = _built(make(base / "copy"), options)
        result = fx.transcode("hf", built, base / "out", split="val2017", codecs=("none", "jpeg:quality=40"))
        fx.verify_run(result, built)
        out[name] = (base / "out", built)
    return out


@pytest.mark.parametrize("name", sorted(COPIES))
def test_shards_carry_coco_annotations(hf_sets, name):
    out, _ = hf_sets[name]
    want = COPIES[name][2]()
    for codec in ("none", "jpeg-q40"):
        folder = out / "hf" / "val2017" / codec
        members: dict[str, Any] = {}
        for tar in sorted(folder.glob("*.tar")):
            members.update(fx.group_members(fx.read_tar(tar)))
        assert sorted(members) == sorted(f"{i:012d}" for i in want)  # COCO's 12-digit stems
        for key, parts in members.items():
            found = dict(parts)
            assert json.loads(found["coco.json"]) == want[int(key)]
            assert json.loads(found["json"])["image_id"] == int(key)
        index = json.loads((folder / "index.json").read_text())
        assert [f["name"] for f in index["schema"] if f.get("ext") == "coco.json"] == ["target"]
        assert index["source"]["bbox_format"] == name
        assert [(c["id"], c["name"]) for c in index["source"]["categories"]] == [
            (i, n) for i, n in enumerate(torchvision_names()) if i and n != "N/A"]


@pytest.mark.parametrize("name", sorted(COPIES))
def test_load_gives_xyxy_targets(hf_sets, name):
    out, _ = hf_sets[name]
    want = COPIES[name][2]()
    samples = list(load(str(out), "hf", "val2017", "jpeg:quality=40"))
    assert sorted(s["image_id"] for s in samples) == sorted(want)
    for s in samples:
        record = want[s["image_id"]]
        anns = record["annotations"]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=np.float32).reshape(-1, 4)
        t = s["target"]
        assert np.array_equal(t["boxes"].numpy(), boxes) and t["image_id"] == s["image_id"]
        assert t["labels"].tolist() == [a["category_id"] for a in anns]
        assert tuple(s["image"].shape) == (3, record["image"]["height"], record["image"]["width"])
    gray = next(s for s in samples if s["image_id"] == 724)  # a grayscale JPEG: RGB, its box kept
    assert gray["image"].shape[0] == 3 and gray["target"]["boxes"].tolist() == [[10.0, 12.0, 50.0, 60.0]]
    empty = next(s for s in samples if s["image_id"] == 632)  # an image without objects is a sample too
    assert empty["target"]["boxes"].shape == (0, 4)


def original_layout() -> dict[str, Any]:
    """The copies' data as COCO's own annotation file would hold it (no masks, COCO's category table)."""
    from pipeline.sources.coco import COCO_2017_CATEGORIES

    data, _ = fx.coco_val_json()
    return {"images": [_image(data, i["id"]) for i in data["images"]],
            "annotations": [{k: a[k] for k in KEEP} for a in data["annotations"]],
            "categories": [dict(c) for c in COCO_2017_CATEGORIES]}


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory) -> Path:
    """The same images and annotations in COCO's original layout, transcoded by the ``coco`` source."""
    _, files = fx.coco_val_json()
    base = tmp_path_factory.mktemp("coco-layout")
    root = base / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(original_layout()))
    (root / "val2017").mkdir()
    for name, blob in files.items():
        (root / "val2017" / name).write_bytes(blob)
    built = fx.Built(root, {n: fx.Expected(n, b) for n, b in files.items()})
    fx.verify_run(fx.transcode("coco", built, base / "out", split="val2017", codecs=("none",)), built)
    return base / "out"


def test_ground_truth_equals_the_original_layout(hf_sets, coco_set):
    """The annotation JSON rebuilt from an hf set is the one rebuilt from the same data as COCO's own files."""
    from_coco = coco_ground_truth(str(coco_set), "coco", "val2017", "none")
    assert from_coco == original_layout()
    out, _ = hf_sets["xywh"]
    for codec in ("none", "jpeg:quality=40"):
        assert coco_ground_truth(str(out), "hf", "val2017", codec) == from_coco


def test_eval_detect_as_on_the_original_layout(hf_sets, coco_set, tmp_path):
    """``mpq eval --task detect`` on the hf set: a random-weight detector's rows and figures are those of the
    set made from COCO's own layout (same pixels, same ground truth)."""
    pytest.importorskip("pycocotools")
    import torch
    import torchvision

    from eval_fixtures import rows_of
    from pipeline.eval import EvalConfig, evaluate

    torch.manual_seed(0)
    net = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None,
                                       num_classes=91)
    state = net.state_dict()
    state["roi_heads.box_predictor.cls_score.bias"][1] = 8.0  # favour "person": it detects something everywhere
    weights = tmp_path / "frcnn-random.pt"
    torch.save(state, weights)
    found = {}
    for dataset, out in (("hf", hf_sets["xywh"][0]), ("coco", coco_set)):
        config = EvalConfig.create(str(out), dataset, "val2017", "detect",
                                   "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", weights=str(weights),
                                   codecs=["none"], batch_size=2)
        doc = next(d for d in evaluate(config).published if d["tag"] == "none")
        rows = rows_of(out / dataset / "val2017" / "none" / "eval" / f"{config.name}.parquet")
        found[dataset] = doc, [(r["key"], r["status"], r["image_id"], json.loads(r["ground_truth"]), r["bbox"],
                                r["scores"], r["category_ids"]) for r in rows]
    assert found["hf"][1] == found["coco"][1] and len(found["hf"][1]) == 5
    assert any(row[4] for row in found["hf"][1]) and any(row[3] for row in found["hf"][1])
    assert found["hf"][0]["figures"] == found["coco"][0]["figures"] and found["hf"][0]["figures"]["images"] == 5


def test_categories_are_cocos():
    from pipeline.sources.coco import COCO_2017_CATEGORIES, COCO_UNUSED_NAMES

    names = torchvision_names()
    assert [(c["id"], c["name"]) for c in COCO_2017_CATEGORIES] == [
        (i, n) for i, n in enumerate(names) if i and n != "N/A"]
    assert sorted(i for i in COCO_UNUSED_NAMES if i <= 90) == [i for i, n in enumerate(names) if n == "N/A"]
    for c in fx.COCO_CATEGORIES:  # the test fixture's hand-written table, supercategories included
        assert c in COCO_2017_CATEGORIES


def test_class_names_map_to_coco_ids():
    from pipeline.sources.hfobjects import category_ids

    coco = [i for i, n in enumerate(torchvision_names()) if i and n != "N/A"]
    assert category_ids(names_80(), "t") == tuple(coco)
    assert category_ids(torchvision_names(), "t") == tuple(0 if n in ("__background__", "N/A") else i
                                                            for i, n in enumerate(torchvision_names()))
    assert category_ids(names_91(), "t") == tuple(i if n in names_80() else 0 for i, n in enumerate(names_91()))
    darknet = [{"airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa", "potted plant": "pottedplant",
                "dining table": "diningtable", "tv": "tvmonitor"}.get(n, n) for n in names_80()]
    assert category_ids([n.replace(" ", "_").upper() for n in darknet], "t") == tuple(coco)
    with pytest.raises(ConfigError, match="'couch' and 'sofa' are both COCO category 63"):
        category_ids(["couch", "sofa"], "t")


def _tiny(root: Path, objects: Any, feature: Any, **columns: Any) -> Path:
    """A one-image parquet copy with the given objects cell and feature."""
    features = {"image": datasets.Image(), "objects": feature, **{k: datasets.Value("int64") for k in columns}}
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": fx.jpeg_bytes(fx.photo("astronaut", 96, 128)), "path": None}], "objects": [objects],
         **{k: [v] for k, v in columns.items()}}, features=datasets.Features(features))
    root.mkdir()
    ds.to_parquet(str(root / "tiny.parquet"))
    return root


def test_unmappable_names_and_unnamed_numbers_raise(tmp_path):
    struct = {"bbox": datasets.Sequence(datasets.Value("float32"), length=4)}
    root = _tiny(tmp_path / "a", {"bbox": [[1, 2, 3, 4]], "category": [0]},
                 datasets.Sequence({**struct, "category": datasets.ClassLabel(names=["person", "unicorn"])}))
    with pytest.raises(ConfigError, match="not COCO categories: 'unicorn'"):
        make_source("hf", root, None, {"objects_column": "objects", "bbox_format": "xywh"}).list()
    root = _tiny(tmp_path / "b", {"bbox": [[1, 2, 3, 4]], "label": [1]},
                 datasets.Sequence({**struct, "label": datasets.Value("int64")}))
    with pytest.raises(ConfigError, match="without class names"):
        make_source("hf", root, None, {"objects_column": "objects", "bbox_format": "xywh"}).list()
    with pytest.raises(ConfigError, match="no objects column 'boxes'"):
        make_source("hf", root, None, {"objects_column": "boxes", "bbox_format": "xywh"}).list()
    with pytest.raises(ConfigError, match="bbox_format 'yxyx' is not one of"):
        make_source("hf", root, None, {"objects_column": "objects", "bbox_format": "yxyx"})


def test_box_format_inferred_only_when_certain(tmp_path):
    sized = make_source("hf", copy_xyxy(tmp_path / "sized", sized=True), None, {"objects_column": "objects"})
    refs = sized.list()
    assert sized.describe()["bbox_format"] == "xyxy"  # a box past the right edge as xywh, one left of 0 as cxcywh
    clone = pickle.loads(pickle.dumps(sized))  # what a worker gets: the format resolved, the dataset left behind
    assert getattr(clone, "_ds", None) is None and clone._objects == sized._objects is not None
    assert clone.read(refs[1]).attachments == sized.read(refs[1]).attachments
    unsized = make_source("hf", copy_xyxy(tmp_path / "unsized"), None, {"objects_column": "objects"})
    with pytest.raises(ConfigError, match=r"every box fits xywh, xyxy; give --bbox-format"):
        unsized.list()  # without the image sizes nothing rules xywh out


def test_float32_boxes_read_back_as_cocos_decimals(tmp_path):
    """COCO's two-decimal values stored as float32 corners give back COCO's own [x, y, w, h]."""
    coco = [[473.07, 395.93, 38.65, 28.67], [204.86, 31.02, 254.88, 324.12], [0.0, 0.77, 412.13, 640.0]]
    assert float(np.float32(473.07)) != 473.07  # float32 alone does not keep them
    corners = [[x, y, x + w, y + h] for x, y, w, h in coco]
    feature = datasets.Sequence({"bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                                 "category": datasets.Value("string")})
    root = _tiny(tmp_path / "f32", {"bbox": corners, "category": ["person", "Dining Table", "tvmonitor"]}, feature,
                 image_id=139)
    src = make_source("hf", root, None, {"objects_column": "objects", "bbox_format": "xyxy"})
    refs = src.list()
    assert [r.key for r in refs] == ["000000000139"]
    record = json.loads(src.read(refs[0]).attachments["coco.json"])
    assert [a["bbox"] for a in record["annotations"]] == coco
    assert [a["category_id"] for a in record["annotations"]] == [1, 67, 72]
    assert [a["id"] for a in record["annotations"]] == [1, 2, 3]
    assert record["image"] == {"id": 139, "file_name": "000000000139.jpg", "width": 128, "height": 96}


@pytest.mark.parametrize("fmt", ["xywh", "xyxy", "cxcywh", "xywh_norm", "xyxy_norm", "cxcywh_norm"])
@pytest.mark.parametrize("float32", [False, True], ids=["float64", "float32"])
def test_every_format_gives_back_cocos_two_decimal_boxes(fmt, float32):
    """COCO-like boxes (two decimals, on a 640x480 image) turned into each format by a copy's maker in
    doubles, stored in float64 or float32, come back as the decimals they were made from: a derived
    number's binary rounding (473.07 + 38.65 = 511.71999999999997) is not carried into the box."""
    from pipeline.sources.hfobjects import to_xywh

    rng = np.random.default_rng(7)
    width, height = 640, 480
    for _ in range(300):
        x, y = round(float(rng.uniform(0, 500)), 2), round(float(rng.uniform(0, 400)), 2)
        w, h = round(float(rng.uniform(0.5, width - x)), 2), round(float(rng.uniform(0.5, height - y)), 2)
        box = {"xywh": [x, y, w, h], "xyxy": [x, y, x + w, y + h],
               "cxcywh": [x + w / 2, y + h / 2, w, h]}[fmt.removesuffix("_norm")]
        if fmt.endswith("_norm"):
            box = [box[0] / width, box[1] / height, box[2] / width, box[3] / height]
        if float32:
            box = [float(np.float32(v)) for v in box]
        assert list(to_xywh(box, fmt, width, height, float32)) == [x, y, w, h], box


def test_normalized_centres_and_bad_rows(tmp_path):
    """``cxcywh_norm`` boxes scaled by the image's size, back to the values they were made from; a negative
    size and an unknown category are errors of that sample only."""
    x, y, w, h = 28.125, 10.25, 66.875, 80.25
    norm = [(x + w / 2) / 128, (y + h / 2) / 96, w / 128, h / 96]
    feature = datasets.List({"bbox": datasets.List(datasets.Value("float64"), length=4),
                             "label": datasets.Value("string")})
    root = _tiny(tmp_path / "n", [{"bbox": norm, "label": "person"}], feature, width=128, height=96)
    src = make_source("hf", root, None, {"objects_column": "objects", "bbox_format": "cxcywh_norm"})
    (ref,) = src.list()
    assert ref.key == "000000000" and ref.get("image_id") == 0  # no image ids: the row
    got = json.loads(src.read(ref).attachments["coco.json"])["annotations"][0]["bbox"]
    assert got == [x, y, w, h]
    for objects, match in (([{"bbox": [0.5, 0.5, -0.1, 0.2], "label": "person"}], "negative"),
                           ([{"bbox": norm, "label": "unicorn"}], "not a COCO 2017 category")):
        bad = _tiny(tmp_path / match.replace(" ", "-"), objects, feature, width=128, height=96)
        src = make_source("hf", bad, None, {"objects_column": "objects", "bbox_format": "cxcywh_norm"})
        with pytest.raises(SampleError, match=match):
            src.read(src.list()[0])


def test_image_ids_and_object_ids_that_are_not_integers(tmp_path):
    """An image_id column keys the rows by COCO's ids, so a value that is not one stops the listing; an object
    id that is null (or a crowd flag that is not 0/1) is that sample's error, never a made-up number."""
    from pipeline.sources.hfobjects import image_id_of

    assert [image_id_of(v) for v in (139, "139", "val2017/000000000139.jpg", "12.5", "²", True)] == \
        [139, 139, 139, None, None, None]
    feature = datasets.List({"bbox": datasets.List(datasets.Value("float64"), length=4),
                             "label": datasets.Value("string"), "id": datasets.Value("int64")})
    photo = {"bytes": fx.jpeg_bytes(fx.photo("astronaut", 96, 128)), "path": None}
    ds = datasets.Dataset.from_dict({"image": [photo, photo], "image_id": ["139", "cat"],
                                     "objects": [[], []]},
                                    features=datasets.Features({"image": datasets.Image(), "objects": feature,
                                                                "image_id": datasets.Value("string")}))
    (tmp_path / "ids").mkdir()
    ds.to_parquet(str(tmp_path / "ids" / "x.parquet"))
    with pytest.raises(ConfigError, match="column image_id holds 'cat' at row 1, not an image id"):
        make_source("hf", tmp_path / "ids", None, {"objects_column": "objects", "bbox_format": "xywh"}).list()
    root = _tiny(tmp_path / "nullid", [{"bbox": [1.0, 2.0, 3.0, 4.0], "label": "person", "id": None}], feature)
    src = make_source("hf", root, None, {"objects_column": "objects", "bbox_format": "xywh"})
    with pytest.raises(SampleError, match="id None is not an integer"):
        src.read(src.list()[0])

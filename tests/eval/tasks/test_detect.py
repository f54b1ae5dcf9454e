"""detect: figures from the rows equal pycocotools run independently on the original JSON; a random-weight
torchvision detector through `mpq eval` on 0 and 2 Dask workers; failed samples count as no detections;
hf detectors map their label names onto the set's categories."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

import fixtures as fx
from eval_fixtures import corrupt_member, fresh_copy, rows_of
from pipeline.eval import EvalConfig, evaluate
from pipeline.eval.tasks import get_task
from pipeline.eval.tasks.detect import STATS
from pipeline.loaders import load

pytest.importorskip("pycocotools")

MODEL = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
NAME = "detect-torchvision_fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.fixture(scope="module")
def coco_src(tmp_path_factory):
    return fx.build_coco(tmp_path_factory.mktemp("detect-src"))


@pytest.fixture(scope="module")
def coco_sets(coco_src, tmp_path_factory) -> Path:
    """coco/val2017: none and jpeg:quality=30, 5 samples in 3 shards."""
    out = tmp_path_factory.mktemp("detect-out")
    result = fx.transcode("coco", coco_src["val2017"], out, split="val2017", codecs=("none", "jpeg:quality=30"))
    assert not result.failed
    return out


@pytest.fixture(scope="module")
def annotation_file(coco_src) -> Path:
    return coco_src["val2017"].root / "coco" / "annotations" / "instances_val2017.json"


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory) -> Path:
    """A random-weight detector whose box classifier favours "person", so it detects something everywhere."""
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None,
                                       num_classes=91)
    state = net.state_dict()
    state["roi_heads.box_predictor.cls_score.bias"][1] = 8.0
    path = tmp_path_factory.mktemp("detector") / "frcnn-random.pt"
    torch.save(state, path)
    return path


def independent(annotation_file: Path, dets: list[dict], iou: str = "bbox", image_ids=None) -> list[float | None]:
    """COCOeval on the original annotation file (not the shards, not our rows' ground truth)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        if dets:
            dt = gt.loadRes([dict(d) for d in dets])
        else:
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iou)
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [None if x < 0 else float(x) for x in ev.stats]


def figures_as_list(figures: dict, prefix: str = "") -> list[float | None]:
    return [figures[prefix + name] for name in STATS]


class Scripted:
    """A model answering each image with the detections written for it (boxes xyxy), in order; masks
    when the detections carry them."""

    label_names = None

    def __init__(self, answers, masks: bool):
        self.answers, self.masks = list(answers), masks

    def detect(self, images):
        found = []
        for im, a in zip(images, [self.answers.pop(0) for _ in images]):
            d = {"boxes": np.array([d["box"] for d in a], dtype=np.float64).reshape(-1, 4),
                 "scores": np.array([d["score"] for d in a]), "labels": np.array([d["cat"] for d in a], dtype=np.int64)}
            if self.masks:
                d["masks"] = np.array([d["mask"] for d in a], dtype=bool).reshape(-1, *im.shape[:2])
            found.append(d)
        return found


def _scripted_rows(coco_sets, plan):
    """Rows of the none set's samples through Detect.prepare/run with ``plan(image_id, anns) -> detections``."""
    task = get_task("detect")()
    samples = list(load(str(coco_sets), "coco", "val2017", image_format="numpy"))
    items = [task.prepare(s) for s in samples]
    answers = [plan(truth["image_id"], json.loads(truth["ground_truth"]), im) for im, truth in items]
    rows = task.run(Scripted(answers, any("mask" in d for a in answers for d in a)), items)
    return [{"key": s["__key__"], "status": "ok", "error": None, **r} for s, r in zip(samples, rows)], answers


def _xywh(box):
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def _as_results(answers, image_ids, masks=False):
    from pycocotools import mask as mask_utils

    out = []
    for image_id, a in zip(image_ids, answers):
        for d in a:
            r = {"image_id": image_id, "category_id": d["cat"], "score": d["score"]}
            if masks:
                rle = mask_utils.encode(np.asfortranarray(d["mask"].astype(np.uint8)))
                r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:
                r["bbox"] = _xywh(d["box"])
            out.append(r)
    return out


def _gt_mask(image_id, ann, shape):
    from pycocotools.coco import COCO

    c = COCO()
    c.dataset = {"images": [{"id": image_id, "height": shape[0], "width": shape[1]}], "annotations": [],
                 "categories": []}
    c.createIndex()
    return c.annToMask({**ann, "image_id": image_id}).astype(bool)


def test_perfect_empty_and_mixed_detections_equal_pycocotools(coco_sets, annotation_file):
    aggregate = get_task("detect").aggregate

    def perfect(image_id, anns, im):
        return [{"box": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                 "score": 1.0, "cat": a["category_id"], "mask": _gt_mask(image_id, a, im.shape)}
                for a in anns if not a["iscrowd"]]

    rows, answers = _scripted_rows(coco_sets, perfect)
    figures = aggregate(rows)
    assert figures["map"] == 1.0 and figures["ap50"] == 1.0 and figures["ar100"] == 1.0
    assert figures["segm_map"] == 1.0 and figures["images"] == 5
    ids = [r["image_id"] for r in rows]
    assert figures_as_list(figures) == pytest.approx(independent(annotation_file, _as_results(answers, ids)))

    rows, _ = _scripted_rows(coco_sets, lambda *_: [])
    figures = aggregate(rows)
    assert figures["map"] == 0.0 and figures["ap50"] == 0.0 and figures["ar100"] == 0.0
    assert figures["segm_map"] is None  # no masks predicted: no segm figures
    assert figures_as_list(figures) == independent(annotation_file, [])

    rng = np.random.default_rng(7)

    def mixed(image_id, anns, im):
        out = []
        for k, a in enumerate(anns):
            x, y, w, h = a["bbox"]
            shift = float(rng.integers(0, 12)) / 4  # dyadic: exact in float
            cat = a["category_id"] if k % 3 else 17  # some with the wrong category
            mask = np.roll(_gt_mask(image_id, a, im.shape), int(shift * 2), axis=1)
            out.append({"box": [x + shift, y, x + w + shift, y + h], "score": float(rng.integers(1, 100)) / 128,
                        "cat": cat, "mask": mask})
        if image_id == 632:  # a false positive on the image without annotations
            out.append({"box": [4.0, 4.0, 40.0, 30.0], "score": 0.875, "cat": 1, "mask": np.ones(im.shape[:2], bool)})
        return out

    rows, answers = _scripted_rows(coco_sets, mixed)
    figures = aggregate(rows)
    assert 0 < figures["map"] < 1
    assert figures_as_list(figures) == pytest.approx(independent(annotation_file, _as_results(answers, ids)), abs=1e-12)
    assert figures_as_list(figures, "segm_") == pytest.approx(
        independent(annotation_file, _as_results(answers, ids, masks=True), "segm"), abs=1e-12)


def _rows_as_results(rows):
    return [{"image_id": r["image_id"], "bbox": b, "score": s, "category_id": c}
            for r in rows if r["status"] == "ok" for b, s, c in zip(r["bbox"], r["scores"], r["category_ids"])]


def _eval_cli(out: Path, weights: Path, workers: int) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    res = CliRunner().invoke(cli, ["eval", str(out), "--dataset", "coco", "--split", "val2017", "--task", "detect",
                                   "--model", MODEL, "--weights", str(weights), "--workers", str(workers),
                                   "--batch-size", "2", "--limit", "3", "--no-progress"])
    assert res.exit_code == 0, res.output


def test_random_torchvision_detector_on_0_and_2_dask_workers(coco_sets, detector_weights, annotation_file, tmp_path):
    inline, dist = fresh_copy(coco_sets, tmp_path / "inline"), fresh_copy(coco_sets, tmp_path / "dist")
    _eval_cli(inline, detector_weights, 0)
    _eval_cli(dist, detector_weights, 2)
    aggregate = get_task("detect").aggregate
    for tag in ("none", "jpeg-q30"):
        folder = Path("coco") / "val2017" / tag / "eval"
        a, b = rows_of(inline / folder / f"{NAME}.parquet"), rows_of(dist / folder / f"{NAME}.parquet")
        assert [(r["key"], r["status"], r["image_id"], r["ground_truth"], r["category_ids"]) for r in a] == \
            [(r["key"], r["status"], r["image_id"], r["ground_truth"], r["category_ids"]) for r in b]
        assert len(a) == 3 and all(r["status"] == "ok" and r["scores"] for r in a)  # it detects in every image
        for ra, rb in zip(a, b):
            assert np.allclose(ra["bbox"], rb["bbox"], atol=1e-3) and np.allclose(ra["scores"], rb["scores"], atol=1e-5)
        doc = json.loads((inline / folder / f"{NAME}.json").read_text())
        assert doc["figures"] == aggregate(a)  # recomputable from the rows alone
        want = independent(annotation_file, _rows_as_results(a), image_ids=[r["image_id"] for r in a])
        assert figures_as_list(doc["figures"]) == pytest.approx(want, abs=1e-12)
        assert doc["coverage"]["fraction"] == 1.0 and doc["figures_paired"] == doc["figures"]
    _report_shows_map(inline)


def _report_shows_map(out: Path) -> None:
    """mpq report renders the detect results from the task registry: map against bpp, change from none."""
    from pipeline.report import write_report

    text = (write_report(out) / "report.md").read_text()
    assert f"coco / val2017: detect with `{MODEL}`" in text
    docs = {tag: json.loads((out / "coco" / "val2017" / tag / "eval" / f"{NAME}.json").read_text())
            for tag in ("none", "jpeg-q30")}
    header = next(line for line in text.splitlines() if "| map |" in line.replace("`", ""))
    assert "change from none" in header
    row = next(line for line in text.splitlines() if line.startswith("| `jpeg:quality=30")).split("|")
    delta = docs["jpeg-q30"]["figures"]["map"] - docs["none"]["figures"]["map"]
    assert float(row[3]) == pytest.approx(docs["jpeg-q30"]["figures"]["map"], abs=1e-4)
    assert float(row[4]) == pytest.approx(delta, abs=1e-4)


def test_failed_sample_counts_as_no_detections(coco_sets, detector_weights, annotation_file, tmp_path):
    out = fresh_copy(coco_sets, tmp_path / "out")
    shard = sorted((out / "coco" / "val2017" / "jpeg-q30").glob("*.tar"))[0]
    corrupt_member(shard, "000000000139", "jpg")
    config = EvalConfig.create(str(out), "coco", "val2017", "detect", MODEL, weights=str(detector_weights),
                               codecs=["jpeg:quality=30"], limit=3)  # the first 3 reference keys
    result = evaluate(config)
    doc = next(d for d in result.published if d["tag"] == "jpeg-q30")
    rows = rows_of(out / "coco" / "val2017" / "jpeg-q30" / "eval" / f"{NAME}.parquet")
    bad = next(r for r in rows if r["key"] == "000000000139")
    assert bad["status"] == "error" and bad["image_id"] == 139 and bad["bbox"] == []
    assert json.loads(bad["ground_truth"]) == [a for a in json.loads(annotation_file.read_text())["annotations"]
                                               if a["image_id"] == 139]
    dets = _rows_as_results(rows)
    assert [r["image_id"] for r in rows] == [139, 285, 632] and dets
    assert figures_as_list(doc["figures"]) == pytest.approx(
        independent(annotation_file, dets, image_ids=[139, 285, 632]), abs=1e-12)
    assert figures_as_list(doc["figures_paired"]) == pytest.approx(
        independent(annotation_file, dets, image_ids=[285, 632]), abs=1e-12)
    assert doc["figures"]["images"] == 3 and doc["figures_paired"]["images"] == 2
    assert doc["coverage"]["failed_eval"] == 1 and doc["coverage"]["evaluated"] == 2


def test_mask_detector_gives_rle_rows_and_segm_figures(coco_sets):
    """Mask R-CNN's masks, thresholded at 0.5, kept as RLE in the rows; segm figures from them."""
    import torch
    import torchvision
    from pycocotools import mask as mask_utils

    from pipeline.eval.models.vision import Detector

    torch.manual_seed(0)
    net = torchvision.models.get_model("maskrcnn_resnet50_fpn", weights=None, weights_backbone=None, num_classes=91,
                                       min_size=96, max_size=128)
    with torch.no_grad():
        net.roi_heads.box_predictor.cls_score.bias[1] = 8.0
    default = torchvision.models.get_model_weights("maskrcnn_resnet50_fpn").DEFAULT
    model = Detector(net, default.transforms(), "cpu")
    task = get_task("detect")()
    samples = list(load(str(coco_sets), "coco", "val2017", image_format="numpy"))[:1]
    items = [task.prepare(s) for s in samples]
    raw = model.detect([im for im, _ in items])
    rows = task.run(model, items)
    for out, row, (im, _) in zip(raw, rows, items):
        assert out["masks"].shape == (len(out["scores"]), *im.shape[:2]) and len(row["masks"]) == len(out["scores"])
        for mask, counts in zip(out["masks"], row["masks"]):
            rle = {"size": list(im.shape[:2]), "counts": counts.encode()}
            assert np.array_equal(mask_utils.decode(rle).astype(bool), mask)
    figures = get_task("detect").aggregate([{"key": s["__key__"], "status": "ok", **r} for s, r in zip(samples, rows)])
    assert figures["segm_map"] is not None and figures["map"] is not None


@pytest.fixture(scope="module")
def tiny_detr(tmp_path_factory) -> Path:
    """A random-weight DETR whose labels are named: COCO names, "N/A" and a name the set lacks."""
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    torch.manual_seed(0)
    names = {0: "N/A", 1: "person", 2: "Cat", 3: "cup", 4: "toothbrush", 5: "zebra"}
    cfg = DetrConfig(backbone_config=ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                                  out_features=["stage4"]),
                     use_timm_backbone=False, use_pretrained_backbone=False, d_model=16, encoder_layers=1,
                     decoder_layers=1, encoder_ffn_dim=16, decoder_ffn_dim=16, encoder_attention_heads=2,
                     decoder_attention_heads=2, num_queries=12, id2label=names,
                     label2id={v: k for k, v in names.items()})
    folder = tmp_path_factory.mktemp("detr") / "tiny-detr"
    net = DetrForObjectDetection(cfg)
    with torch.no_grad():  # spread the queries over every label, "N/A" and "zebra" included
        net.class_labels_classifier.bias[:6] = torch.tensor([3.0, 3.0, 3.0, 3.0, 3.0, 3.0])
        net.class_labels_classifier.weight.normal_(0, 2.0)
    net.save_pretrained(folder)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    return folder


def test_hf_detector_labels_mapped_by_name(coco_sets, tiny_detr, tmp_path):
    from pipeline.eval.models.hf import _HFDetector

    out = fresh_copy(coco_sets, tmp_path / "out")
    config = EvalConfig.create(str(out), "coco", "val2017", "detect", f"hf:{tiny_detr}", codecs=["none"], batch_size=2)
    result = evaluate(config)
    assert not result.failed
    rows = rows_of(out / "coco" / "val2017" / "none" / "eval" / f"{config.name}.parquet")
    model = _HFDetector(str(tiny_detr), "cpu", {"local_files_only": True})
    to_category = {1: 1, 2: 17, 3: 47, 4: 90}  # by name, case aside; 0 "N/A" and 5 "zebra" are not in the set
    samples = list(load(str(out), "coco", "val2017", image_format="numpy"))
    found = model.detect([s["image"] for s in samples])
    for row, raw in zip(rows, found):
        keep = [k for k, lab in enumerate(raw["labels"].tolist()) if lab in to_category]
        assert row["category_ids"] == [to_category[int(raw["labels"][k])] for k in keep]
        assert row["scores"] == pytest.approx([float(raw["scores"][k]) for k in keep], abs=1e-6)
        assert row["unmapped"] == len(raw["labels"]) - len(keep)
    assert sum(len(r["category_ids"]) for r in rows) > 0  # "Cat" is the set's "cat"


def test_label_names_mapped_onto_the_set_categories(coco_sets):
    """A model naming its labels: names matched to the set's category table (case aside); others counted."""
    config = EvalConfig.create(str(coco_sets), "coco", "val2017", "detect", "hf:some/detector")
    task_cls = get_task("detect").bind(config)
    assert dict(task_cls.categories) == {"person": 1, "cat": 17, "cup": 47, "toothbrush": 90}

    class Named:
        label_names = {0: "N/A", 1: "Person", 7: "toothbrush", 9: "zebra"}

        def detect(self, images):
            return [{"boxes": np.array([[1.0, 2.0, 5.0, 9.0]] * 5), "scores": np.array([0.9, 0.8, 0.7, 0.6, 0.5]),
                     "labels": np.array([1, 0, 9, 7, 3])} for _ in images]

    task = task_cls()
    sample = next(iter(load(str(coco_sets), "coco", "val2017", image_format="numpy")))
    (row,) = task.run(Named(), [task.prepare(sample)])
    assert row["category_ids"] == [1, 90] and row["scores"] == [0.9, 0.6] and row["unmapped"] == 3
    assert row["bbox"] == [[1.0, 2.0, 4.0, 7.0]] * 2


def test_detect_needs_a_detector(coco_sets):
    from pipeline.errors import ConfigError
    from pipeline.eval import plan_eval

    with pytest.raises(ConfigError, match="no detector"):
        plan_eval(EvalConfig.create(str(coco_sets), "coco", "val2017", "detect", "torchvision:resnet18"))
    with pytest.raises(ConfigError, match="cannot do task detect"):
        plan_eval(EvalConfig.create(str(coco_sets), "coco", "val2017", "detect", "timm:resnet18"))

"""segment: per-sample intersection/union by hand, dataset mIoU against torchmetrics over every pixel."""
from __future__ import annotations

import numpy as np
import pytest

from eval_fixtures import fresh_copy, rows_of
from pipeline.eval import EvalConfig, evaluate
from pipeline.eval.tasks import get_task
from pipeline.eval.tasks.segment import confusion_counts


def test_counts_by_hand():
    gt = np.array([[0, 1, 1], [2, 2, 3]])
    pred = np.array([[5, 1, 2], [2, 2, 2]])  # labels (model class + 1); the 0 pixel is ignored
    c = confusion_counts(pred, gt)
    inter, union = c["intersection"], c["union"]
    assert len(inter) == 150
    assert inter[:3] == [1, 2, 0] and union[:3] == [2, 4, 1]
    assert c["correct"] == 3 and c["labelled"] == 5
    assert sum(inter[3:]) == 0 and sum(union[3:]) == 0


def test_dataset_miou_is_not_mean_of_image_ious():
    """Two images: IoUs summed over the set give 2/3 for class 1, per-image averaging would give 0.75."""
    a = confusion_counts(np.array([1, 1, 1, 1]), np.array([1, 1, 1, 1]))  # class 1: 4/4
    b = confusion_counts(np.array([1, 2]), np.array([1, 1]))  # class 1: 1/2; class 2: 0/1
    agg = get_task("segment").aggregate([{"status": "ok", **a}, {"status": "ok", **b}])
    assert agg["miou"] == pytest.approx(((5 / 6) + 0.0) / 2)
    assert agg["pixel_accuracy"] == pytest.approx(5 / 6)
    assert agg["classes_scored"] == 2


def test_run_against_torchmetrics(ade_out, segformer_dir, tmp_path):
    ade_out = fresh_copy(ade_out, tmp_path / "out")
    import torch
    import torchmetrics

    from pipeline.eval.models.hf import _HFSegmenter
    from pipeline.loaders import load

    config = EvalConfig.create(str(ade_out), "ade20k", "train", "segment", f"hf:{segformer_dir}", batch_size=2)
    result = evaluate(config)
    assert not result.failed and len(result.published) == 2
    model = _HFSegmenter(str(segformer_dir), "cpu", {"local_files_only": True})
    for doc in result.published:
        rows = rows_of(ade_out / "ade20k" / "train" / doc["tag"] / "eval" / f"{config.name}.parquet")
        samples = list(load(str(ade_out), "ade20k", "train", doc["codec"], image_format="numpy"))
        assert [r["key"] for r in rows] == [s["__key__"] for s in samples] and len(rows) == 3
        preds = [p + 1 for p in model.segment([s["image"] for s in samples])]
        target = torch.cat([torch.as_tensor(np.asarray(s["segmentation"]), dtype=torch.long).flatten() for s in samples])
        pred = torch.cat([torch.as_tensor(p, dtype=torch.long).flatten() for p in preds])
        keep = (target >= 1) & (target <= 150)
        cm = torchmetrics.functional.confusion_matrix(pred[keep], target[keep], task="multiclass", num_classes=152)
        iou = torchmetrics.functional.jaccard_index(pred[keep], target[keep], task="multiclass", num_classes=152,
                                                    average="none")
        union = cm.sum(0) + cm.sum(1) - cm.diag()
        present = union[1:151] > 0
        assert doc["figures"]["miou"] == pytest.approx(float(iou[1:151][present].mean()), abs=1e-9)
        assert doc["figures"]["pixel_accuracy"] == pytest.approx(float(cm.diag().sum() / keep.sum()))
        # and the figure is recomputable from the rows alone
        inter = np.sum([r["intersection"] for r in rows], axis=0)
        uni = np.sum([r["union"] for r in rows], axis=0)
        assert doc["figures"]["miou"] == pytest.approx(float(np.mean(inter[uni > 0] / uni[uni > 0])))
        assert doc["figures_paired"] == doc["figures"] and doc["coverage"]["fraction"] == 1.0  # fully covered


def test_a_sample_failed_at_eval_predicts_nothing(ade_out, segformer_dir, tmp_path):
    """A lossy payload that does not decode: its row counts the none set's annotation as all missed."""
    from eval_fixtures import corrupt_member
    from pipeline.loaders import load

    ade_out = fresh_copy(ade_out, tmp_path / "out")
    key = "ADE_train_00000002"
    corrupt_member(ade_out / "ade20k" / "train" / "jpeg-q10" / "ade20k-train-jpeg-q10-000000.tar", key, "jpg")
    config = EvalConfig.create(str(ade_out), "ade20k", "train", "segment", f"hf:{segformer_dir}", batch_size=2)
    docs = {d["tag"]: d for d in evaluate(config).published}
    rows = {r["key"]: r for r in rows_of(ade_out / "ade20k" / "train" / "jpeg-q10" / "eval" / f"{config.name}.parquet")}
    reference = {s["__key__"]: s for s in load(str(ade_out), "ade20k", "train", "none", image_format="numpy")}
    gt = np.asarray(reference[key]["segmentation"]).astype(np.int64)
    assert gt.ndim == 2
    counts = np.bincount(gt.ravel(), minlength=256)[1:151]
    assert rows[key]["status"] == "error"
    assert rows[key]["intersection"] == [0] * 150 and rows[key]["union"] == counts.tolist()
    assert rows[key]["correct"] == 0 and rows[key]["labelled"] == int(counts.sum())
    ok = [r for r in rows.values() if r["status"] == "ok"]
    inter = np.sum([r["intersection"] for r in ok], axis=0)
    union = np.sum([r["union"] for r in ok], axis=0)
    doc = docs["jpeg-q10"]
    paired = union > 0
    assert doc["figures_paired"]["miou"] == pytest.approx(float(np.mean(inter[paired] / union[paired])))
    union = union + counts
    assert doc["figures"]["miou"] == pytest.approx(float(np.mean(inter[union > 0] / union[union > 0])))
    assert doc["figures"]["pixel_accuracy"] == pytest.approx(sum(r["correct"] for r in ok)
                                                             / (sum(r["labelled"] for r in ok) + counts.sum()))
    assert doc["coverage"]["failed_eval"] == 1 and doc["coverage"]["evaluated"] == 2

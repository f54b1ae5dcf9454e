"""classify: figures by hand, from the rows, and against a bare torchvision forward pass."""
from __future__ import annotations

import math

import pytest

from eval_fixtures import fresh_copy, rows_of
from pipeline.eval import EvalConfig, evaluate
from pipeline.eval.tasks import get_task


def test_aggregate_by_hand():
    rows = [{"status": "ok", "correct1": True, "correct5": True, "loss": 0.5},
            {"status": "ok", "correct1": False, "correct5": True, "loss": 1.5},
            {"status": "ok", "correct1": False, "correct5": False, "loss": 4.0},
            {"status": "error", "correct1": None, "correct5": None, "loss": None}]
    got = get_task("classify").aggregate(rows)
    assert got == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3), "loss": pytest.approx(2.0)}


def test_run_rows_match_bare_model_and_torchmetrics(imagenet_out, resnet_weights, tmp_path):
    imagenet_out = fresh_copy(imagenet_out, tmp_path / "out")
    import torch
    import torchmetrics
    import torchvision

    from pipeline.loaders import load

    config = EvalConfig.create(str(imagenet_out), "imagenet", "val", "classify", "torchvision:resnet18",
                               weights=str(resnet_weights), batch_size=2)
    result = evaluate(config)
    assert not result.failed and {d["tag"] for d in result.published} == {"none", "jpeg-q10"}
    net = torchvision.models.get_model("resnet18", weights=None, num_classes=1000)
    net.load_state_dict(torch.load(resnet_weights, weights_only=True))
    net.eval()
    tf = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    for doc in result.published:
        folder = imagenet_out / "imagenet" / "val" / doc["tag"] / "eval"
        rows = rows_of(folder / "classify-torchvision_resnet18.parquet")
        samples = list(load(str(imagenet_out), "imagenet", "val", doc["codec"]))
        assert [r["key"] for r in rows] == [s["__key__"] for s in samples]
        with torch.no_grad():
            logits = net(torch.stack([tf(s["image"]) for s in samples]))
        labels = torch.tensor([int(s["label"]) for s in samples])
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        assert [r["pred"] for r in rows] == logits.argmax(1).tolist()
        assert [r["label"] for r in rows] == labels.tolist()
        assert [r["loss"] for r in rows] == pytest.approx(loss.tolist(), abs=1e-4)
        acc = torchmetrics.functional.accuracy(torch.tensor([r["pred"] for r in rows]), labels, task="multiclass",
                                               num_classes=1000)
        assert doc["figures"]["top1"] == pytest.approx(float(acc))
        assert doc["figures"]["loss"] == pytest.approx(float(loss.mean()), abs=1e-4)
        assert doc["figures"]["top5"] == 1.0  # 3 classes: the label is always among the top 3
        assert doc["samples"] == 3 and doc["errors"] == 0
        assert doc["model"]["weights_sha256"] and len(doc["model"]["weights_sha256"]) == 64
        assert set(doc["definitions"]) == {"top1", "top5", "loss"}
        assert all(math.isfinite(v) for v in doc["figures"].values())

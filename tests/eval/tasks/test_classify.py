"""classify: figures by hand, from the rows, and against a bare torchvision forward pass."""
from __future__ import annotations

import math

import pytest

import tolerance
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
        inputs = torch.stack([tf(s["image"]) for s in samples])
        with torch.no_grad():
            logits = net(inputs)
        # the pipeline ran batches of 2, this one pass of 3: other kernels, other rounding. A logit's
        # float32 error (measured against float64 here) moves the cross-entropy by at most twice as much.
        tol = 2 * tolerance.bound(tolerance.float32_error(net, lambda m, x: m(x), inputs), float(logits.abs().max()))
        labels = torch.tensor([int(s["label"]) for s in samples])
        assert sorted(set(labels.tolist())) == [0, 1, 217]  # standard ILSVRC-2012 indices of the fixture's wnids
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        assert [r["pred"] for r in rows] == logits.argmax(1).tolist()
        assert [r["label"] for r in rows] == labels.tolist()
        assert [r["loss"] for r in rows] == pytest.approx(loss.tolist(), abs=tol)
        preds = torch.tensor([r["pred"] for r in rows])
        acc = torchmetrics.functional.accuracy(preds, labels, task="multiclass", num_classes=1000)
        acc5 = torchmetrics.functional.accuracy(logits, labels, task="multiclass", num_classes=1000, top_k=5)
        assert doc["figures"]["top1"] == pytest.approx(float(acc))
        assert doc["figures"]["top5"] == pytest.approx(float(acc5))
        assert doc["figures"]["loss"] == pytest.approx(float(loss.mean()), abs=tol)
        assert doc["model"]["outputs"] == 1000 and doc["model"]["label_offset"] == 0
        assert doc["samples"] == 3 and doc["errors"] == 0
        assert doc["model"]["weights_sha256"] and len(doc["model"]["weights_sha256"]) == 64
        assert set(doc["definitions"]) == {"top1", "top5", "loss"}
        assert all(math.isfinite(v) for v in doc["figures"].values())

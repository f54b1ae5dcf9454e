"""mpq report's evaluation tables: task figure against rate, change from none, machine BD-rate."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from pipeline.report.eval import eval_bd, eval_table


def _summary(rows):
    return pd.DataFrame([{"dataset": d, "split": "val", "tag": t, "family": t.split("-")[0], "rate_unit": u,
                          f"{u}_mean": r} for d, t, u, r in rows])


def _doc(dataset, tag, task, figures, samples=10, errors=0):
    codec = "none" if tag == "none" else tag.replace("-", ":q=")
    return {"format": "mpq-eval/1", "dataset": dataset, "split": "val", "tag": tag, "codec": codec, "task": task,
            "figures": figures, "samples": samples, "errors": errors, "model": {"name": "m"}}


def test_machine_bd_rate_by_hand():
    """webp reaches each top-1 of jpeg at half the rate: -50 %; mp3 needs twice opus's rate per WER: +100 %."""
    rates = [0.25, 0.5, 1.0, 2.0]
    top1 = [0.2, 0.4, 0.55, 0.6]
    wer = [0.5, 0.3, 0.2, 0.15]
    summary = _summary([("imagenet", f"jpeg-{i}", "bpp", r) for i, r in enumerate(rates)]
                       + [("imagenet", f"webp-{i}", "bpp", r / 2) for i, r in enumerate(rates)]
                       + [("imagenet", "none", "bpp", 12.0)]
                       + [("librispeech", f"opus-{i}", "kbps", 8 * r) for i, r in enumerate(rates)]
                       + [("librispeech", f"mp3-{i}", "kbps", 16 * r) for i, r in enumerate(rates[:3])])
    docs = ([_doc("imagenet", f"jpeg-{i}", "classify", {"top1": q}) for i, q in enumerate(top1)]
            + [_doc("imagenet", f"webp-{i}", "classify", {"top1": q}) for i, q in enumerate(top1)]
            + [_doc("imagenet", "none", "classify", {"top1": 0.7})]
            + [_doc("librispeech", f"opus-{i}", "asr", {"wer": w}) for i, w in enumerate(wer)]
            + [_doc("librispeech", f"mp3-{i}", "asr", {"wer": w}) for i, w in enumerate(wer[:3])])
    table = eval_table(docs, summary)
    jpeg = table[(table["family"] == "jpeg")].sort_values("rate")
    assert jpeg["delta"].tolist() == pytest.approx([q - 0.7 for q in top1])
    assert table[table["tag"] == "none"]["delta"].tolist() == [0.0]
    bd = eval_bd(table).set_index("family")
    assert bd.loc["webp", "anchor"] == "jpeg"
    assert bd.loc["webp", "bd_rate_cubic"] == pytest.approx(-50.0, abs=1e-6)
    assert bd.loc["webp", "bd_rate_pchip"] == pytest.approx(-50.0, abs=1e-6)
    assert "none" not in bd.index  # the reference is no curve
    # three mp3 points: no figure, a reason
    assert math.isnan(bd.loc["mp3", "bd_rate_cubic"]) and "at least 4" in bd.loc["mp3", "reason"]


def test_lower_is_better_is_oriented():
    rates = [1.0, 2.0, 4.0, 8.0]
    wer = [0.5, 0.3, 0.2, 0.15]
    summary = _summary([("librispeech", f"opus-{i}", "kbps", r) for i, r in enumerate(rates)]
                       + [("librispeech", f"mp3-{i}", "kbps", 2 * r) for i, r in enumerate(rates)])
    docs = ([_doc("librispeech", f"opus-{i}", "asr", {"wer": w}) for i, w in enumerate(wer)]
            + [_doc("librispeech", f"mp3-{i}", "asr", {"wer": w}) for i, w in enumerate(wer)])
    bd = eval_bd(eval_table(docs, summary), anchor="opus").set_index("family")
    assert bd.loc["mp3", "bd_rate_pchip"] == pytest.approx(100.0, abs=1e-6)


def test_report_includes_eval_results(tmp_path):
    import torch
    import torchvision

    import fixtures as fx
    from pipeline.eval import EvalConfig, evaluate
    from pipeline.report import write_report

    built = fx.build_imagenet(tmp_path / "src", "folders")
    fx.transcode("imagenet", built["val"], tmp_path / "out", split="val", codecs=("none", "jpeg:quality=10"))
    weights = tmp_path / "w.pt"
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=3).state_dict(), weights)
    evaluate(EvalConfig.create(str(tmp_path / "out"), "imagenet", "val", "classify", "torchvision:resnet18",
                               weights=str(weights)))
    target = write_report(tmp_path / "out")
    table = pd.read_csv(target / "eval.csv")
    assert sorted(table["tag"]) == ["jpeg-q10", "none"]
    summary = pd.read_csv(target / "summary.csv").set_index("tag")
    for r in table.to_dict(orient="records"):
        assert r["rate"] == pytest.approx(summary.loc[r["tag"], "bpp_mean"])
    md = (target / "report.md").read_text()
    assert "Machine perception" in md and "classify with `torchvision:resnet18`" in md
    assert (target / "eval-imagenet-val-classify-torchvision_resnet18.png").is_file()


def test_old_and_new_results_are_both_read(tmp_path):
    """An mpq-eval/1 result (figures over its ok samples) still reads: figures_paired falls back to its
    figures and its coverage is None; an mpq-eval/2 result is read as written and the report uses ``figures``."""
    import json

    from pipeline.report.eval import find_results

    old = _doc("imagenet", "jpeg-q10", "classify", {"top1": 0.5})
    new = {**_doc("imagenet", "webp-q10", "classify", {"top1": 0.4}), "format": "mpq-eval/2",
           "figures_paired": {"top1": 0.45}, "figure_sets": {"figures": "all", "figures_paired": "paired"},
           "coverage": {"reference": "none", "reference_keys": 10, "evaluated": 9, "failed_transcode": 1,
                        "failed_eval": 0, "excluded": 0, "extra": 0, "fraction": 0.9}}
    for doc in (old, new):
        path = tmp_path / "imagenet" / "val" / doc["tag"] / "eval" / "classify-m.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(doc))
    found = {d["tag"]: d for d in find_results(tmp_path)}
    assert found["jpeg-q10"]["figures_paired"] == {"top1": 0.5} and found["jpeg-q10"]["coverage"] is None
    assert "mpq-eval/1" in found["jpeg-q10"]["figure_sets"]["figures"]
    assert found["webp-q10"]["figures_paired"] == {"top1": 0.45} and found["webp-q10"]["coverage"]["fraction"] == 0.9
    summary = _summary([("imagenet", "jpeg-q10", "bpp", 0.5), ("imagenet", "webp-q10", "bpp", 0.4)])
    table = eval_table(list(found.values()), summary).set_index("tag")
    assert table.loc["jpeg-q10", "value"] == 0.5 and table.loc["webp-q10", "value"] == 0.4  # figures, not paired

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
    """A real mpq eval (mpq-eval/2) over none, jpeg q10 and a bpp target one sample cannot reach: the report's
    figure is the JSON's over every reference key, its coverage is shown and the short set flagged."""
    import json

    import pyarrow.parquet as pq
    import torch
    import torchvision

    import fixtures as fx
    from pipeline.eval import EvalConfig, evaluate
    from pipeline.report import write_report
    from pipeline.report.eval import FLAG

    built = fx.build_imagenet(tmp_path / "src", "folders")
    fx.transcode("imagenet", built["val"], tmp_path / "out", split="val",
                 codecs=("none", "jpeg:quality=10", "jpeg:bpp=0.8"))
    weights = tmp_path / "w.pt"
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=1000).state_dict(), weights)
    evaluate(EvalConfig.create(str(tmp_path / "out"), "imagenet", "val", "classify", "torchvision:resnet18",
                               weights=str(weights)))
    target = write_report(tmp_path / "out")
    table = pd.read_csv(target / "eval.csv").set_index("tag")
    assert sorted(table.index) == ["jpeg-bpp0p8", "jpeg-q10", "none"]
    base = tmp_path / "out" / "imagenet" / "val"
    for tag, r in table.iterrows():
        doc = json.loads((base / tag / "eval" / "classify-torchvision_resnet18.json").read_text())
        assert r["value"] == doc["figures"]["top1"] and r["coverage_fraction"] == doc["coverage"]["fraction"]
        manifest = pq.read_table(base / tag / "manifest.parquet").to_pandas()
        assert r["rate"] == pytest.approx(manifest.loc[manifest["status"] == "ok", "bpp"].mean(), rel=1e-15)
    short = table.loc["jpeg-bpp0p8"]
    assert (short["coverage_reference_keys"], short["coverage_evaluated"], short["coverage_failed_transcode"]) == \
        (3, 2, 1)
    rows = pq.read_table(base / "jpeg-bpp0p8" / "eval" / "classify-torchvision_resnet18.parquet").to_pandas()
    assert short["value"] == pytest.approx(rows.loc[rows["status"] == "ok", "correct1"].sum() / 3, abs=0)
    md = (target / "report.md").read_text()
    assert "Machine perception" in md and "classify with `torchvision:resnet18`" in md
    assert f"66.7 % {FLAG}" in md
    assert f"{FLAG} `{short['codec']}`: 2 of 3 reference keys evaluated ok (1 failed transcode)" in md
    assert md.count(FLAG) == 2  # the flagged cell and its footnote: jpeg q10 and none are at 100 %
    assert (target / "eval-imagenet-val-classify-torchvision_resnet18.png").is_file()


def _coverage(reference_keys, evaluated, failed_transcode=0, failed_eval=0, excluded=0, extra=0):
    return {"reference": "none", "reference_keys": reference_keys, "evaluated": evaluated,
            "failed_transcode": failed_transcode, "failed_eval": failed_eval, "excluded": excluded, "extra": extra,
            "fraction": evaluated / reference_keys}


def test_coverage_is_shown_and_a_set_under_100_percent_is_flagged(tmp_path):
    """mpq-eval/2 results: coverage columns in eval.csv, a flag and a footnote (counts, paired figure) for
    the set under 100 %; an mpq-eval/1 result beside them still renders, with no coverage and a note."""
    from pipeline.report.eval import FLAG, eval_blocks
    from pipeline.report.render import to_markdown

    summary = _summary([("imagenet", "none", "bpp", 12.0), ("imagenet", "jpeg-1", "bpp", 0.5),
                        ("imagenet", "jpeg-2", "bpp", 1.0), ("imagenet", "webp-1", "bpp", 0.6)])
    v2 = {"format": "mpq-eval/2"}
    docs = [{**_doc("imagenet", "none", "classify", {"top1": 0.75}, samples=100), **v2,
             "figures_paired": {"top1": 0.75}, "coverage": _coverage(100, 100)},
            {**_doc("imagenet", "jpeg-1", "classify", {"top1": 0.70}, samples=95, errors=1), **v2,
             "figures_paired": {"top1": 0.7368}, "coverage": _coverage(100, 95, failed_transcode=4, failed_eval=1)},
            {**_doc("imagenet", "jpeg-2", "classify", {"top1": 0.74}, samples=100), **v2,
             "figures_paired": {"top1": 0.74}, "coverage": _coverage(100, 100)},
            _doc("imagenet", "webp-1", "classify", {"top1": 0.71})]  # mpq-eval/1: no coverage
    table = eval_table(docs, summary).set_index("tag")
    assert table.loc["jpeg-1", "coverage_fraction"] == 0.95 and table.loc["jpeg-1", "value"] == 0.70
    assert table.loc["jpeg-1", "value_paired"] == 0.7368 and table.loc["jpeg-1", "coverage_failed_transcode"] == 4
    assert table.loc["jpeg-1", "delta"] == pytest.approx(0.70 - 0.75)  # figures (all reference keys), not paired
    assert math.isnan(table.loc["webp-1", "coverage_fraction"]) and math.isnan(table.loc["webp-1", "value_paired"])
    md = to_markdown(eval_blocks(eval_table(docs, summary), eval_bd(eval_table(docs, summary)), tmp_path)[0])
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| `")}
    assert f"95.0 % {FLAG}" in lines["`jpeg:q=1`"] and "100.0 %" in lines["`jpeg:q=2`"]
    assert FLAG not in lines["`jpeg:q=2`"] + lines["`none`"] and "| – |" in lines["`webp:q=1`"]
    assert (f"{FLAG} `jpeg:q=1`: 95 of 100 reference keys evaluated ok (4 failed transcode, 1 failed eval); top1 "
            "counts a missing or failed sample as the task's failure") in md
    assert "over the keys ok both here and in the reference: 0.7368." in md
    assert "Coverage –: the result was written before coverage was recorded (mpq-eval/1)" in md


def test_figure_keys_leave_out_the_extra_keys(tmp_path):
    """Rows of a, b, c (c ok here but not in the reference set none: coverage's extra): the figures are over
    a and b, so the means and the rate are too; a result without coverage keeps every key of its rows."""
    from types import SimpleNamespace

    from pipeline.report.eval import eval_rate, figure_keys

    pd.DataFrame({"key": ["a", "b", "c"], "status": ["ok", "error", "ok"]}).to_parquet(tmp_path / "r.parquet")
    none = SimpleNamespace(dataset="d", split="s", tag="none",
                           manifest=pd.DataFrame({"key": ["a", "b", "c"], "status": ["ok", "ok", "error"]}))
    lossy = SimpleNamespace(dataset="d", split="s", tag="x", manifest=pd.DataFrame(
        {"key": ["a", "b", "c"], "status": ["ok", "ok", "ok"], "bpp": [1.0, 2.0, 4.0]}))
    doc = {"dataset": "d", "split": "s", "tag": "x", "path": str(tmp_path / "r.json"), "rows": "r.parquet",
           "coverage": {"reference": "none"}}
    assert figure_keys(doc, [none, lossy]) == {"a", "b"}
    assert eval_rate(lossy, doc, "bpp", [none, lossy]) == (1.5, 2)
    assert figure_keys({**doc, "coverage": None}, [none, lossy]) == {"a", "b", "c"}
    assert figure_keys({**doc, "rows": "absent.parquet"}, [none, lossy]) is None


def test_recovered_fraction_of_a_fine_tuned_variant_by_hand():
    """The seed study's segmentation numbers: 44.5 mIoU at none, 30.5 at 0.1 bpp, 42 after fine-tuning:
    (42 - 30.5) / (44.5 - 30.5) = 82 % of the drop recovered."""
    summary = _summary([("ade20k", "jpeg-1", "bpp", 0.1), ("ade20k", "jpeg-2", "bpp", 0.5),
                        ("ade20k", "none", "bpp", 12)])
    base = [_doc("ade20k", "none", "segment", {"miou": 0.445}), _doc("ade20k", "jpeg-1", "segment", {"miou": 0.305}),
            _doc("ade20k", "jpeg-2", "segment", {"miou": 0.445})]  # no drop at 0.5 bpp: nothing to recover
    tuned = [_doc("ade20k", "none", "segment", {"miou": 0.44}), _doc("ade20k", "jpeg-1", "segment", {"miou": 0.42}),
             _doc("ade20k", "jpeg-2", "segment", {"miou": 0.44})]
    for d in tuned:
        d["model"] = {"name": "m", "variant": "ft-jpeg"}
    table = eval_table(base + tuned, summary).set_index(["model", "tag"])
    assert table.loc[("m [ft-jpeg]", "jpeg-1"), "recovered"] == pytest.approx((0.42 - 0.305) / (0.445 - 0.305))
    assert round(100 * table.loc[("m [ft-jpeg]", "jpeg-1"), "recovered"]) == 82
    assert math.isnan(table.loc[("m [ft-jpeg]", "jpeg-2"), "recovered"])  # no drop
    assert math.isnan(table.loc[("m [ft-jpeg]", "none"), "recovered"])
    assert table.loc[("m", "jpeg-1"), "recovered"] != table.loc[("m", "jpeg-1"), "recovered"]  # the start: NaN
    assert table.loc[("m [ft-jpeg]", "jpeg-1"), "delta"] == pytest.approx(0.42 - 0.44)  # its own none
    alone = eval_table(tuned, summary)  # the starting point not evaluated: no column to fill
    assert alone["recovered"].isna().all()


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

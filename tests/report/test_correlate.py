"""Correlation of distortion metrics with task figures: recomputed by hand from the per-setting figures.

Sets come from a real transcode (JPEG at five qualities plus the lossless reference); the eval
files that ``mpq eval`` would write are written here by hand, in the format issue 12 fixes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import stats

import fixtures as fx
from pipeline.report import write_report
from pipeline.report.correlate import (_figure, auc_table, correlation_table, roc_auc, sample_outcomes,
                                       setting_points)
from pipeline.report.load import find_sets

QUALITIES = (5, 15, 30, 60, 90)


@pytest.fixture(scope="module")
def out(tmp_path_factory, imagefolder_classes) -> Path:
    root = tmp_path_factory.mktemp("corr")
    codecs = tuple(f"jpeg:quality={q}" for q in QUALITIES) + ("none",)
    fx.transcode("imagefolder", imagefolder_classes, root, codecs=codecs, samples_per_shard=4)
    rng = np.random.default_rng(7)
    for folder in sorted(root.glob("imagefolder/all/*")):
        manifest = pq.read_table(folder / "manifest.parquet").to_pandas()
        ok = manifest[manifest["status"] == "ok"]
        psnr = ok["psnr"].to_numpy()
        # a classifier that is right more often on better-coded images, with noise
        correct = (np.where(np.isfinite(psnr), psnr, 60) + rng.normal(0, 4, len(ok))) > 30
        rows = pd.DataFrame({"key": list(ok["key"]) + ["missing-key"], "status": ["ok"] * len(ok) + ["error"],
                             "correct1": list(correct) + [False]})
        (folder / "eval").mkdir()
        rows.to_parquet(folder / "eval" / "classify-torchvision_resnet18.parquet")
        top1 = float(np.mean(correct))
        (folder / "eval" / "classify-torchvision_resnet18.json").write_text(json.dumps(
            {"task": "classify", "top1": top1, "top5": 1.0, "loss": 1.0, "samples": len(ok), "errors": 1}))
    return root


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b by counting pairs (ties in x or y excluded from the matching denominators)."""
    conc = disc = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif dx == dy:
                conc += 1
            else:
                disc += 1
    return (conc - disc) / math.sqrt((conc + disc + tx) * (conc + disc + ty))


def test_correlation_table_recomputed_by_hand(out):
    sets, _ = find_sets(out)
    table = correlation_table(setting_points(sets))
    row = table[table["metric"] == "psnr"].iloc[0]
    xs, ys = [], []
    for folder in sorted(out.glob("imagefolder/all/*")):
        m = pq.read_table(folder / "manifest.parquet").to_pandas()
        mean_psnr = m.loc[m["status"] == "ok", "psnr"].astype(float).mean()
        top1 = json.loads((folder / "eval" / "classify-torchvision_resnet18.json").read_text())["top1"]
        if np.isfinite(mean_psnr):  # the lossless set has +inf PSNR: no point
            xs.append(mean_psnr)
            ys.append(top1)
    x, y = np.array(xs), np.array(ys)
    assert (row["dataset"], row["split"], row["task"], row["model"], row["figure"]) == \
        ("imagefolder", "all", "classify", "torchvision_resnet18", "top1")
    assert row["n"] == len(QUALITIES) == len(x)
    assert row["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert row["spearman"] == pytest.approx(np.corrcoef(stats.rankdata(x), stats.rankdata(y))[0, 1], abs=1e-12)
    assert row["kendall"] == pytest.approx(kendall_tau_b(x, y), abs=1e-12)
    assert 0 <= row["pearson_p"] <= 1
    assert set(table["metric"]) == {"psnr"}  # only what the manifests hold (no --ms-ssim, no deep metric)


def test_too_few_settings_give_no_correlation():
    points = pd.DataFrame({"dataset": "d", "split": "s", "task": "asr", "model": "m", "figure": "wer",
                           "value": [0.1, 0.2, np.nan], "snr": [10.0, 20.0, 30.0], "family": "x"})
    (row,) = correlation_table(points).to_dict(orient="records")
    assert row["n"] == 2 and math.isnan(row["pearson"]) and math.isnan(row["kendall"])


def test_auc_against_sklearn(out):
    from sklearn.metrics import roc_auc_score

    sets, _ = find_sets(out)
    samples = sample_outcomes(sets)
    assert "missing-key" not in set(samples["key"]) and len(samples) == 6 * len(samples["tag"].unique())
    (row,) = auc_table(samples).to_dict(orient="records")
    psnr = samples["psnr"].to_numpy(dtype=float)
    wrong = ~samples["correct1"].to_numpy(dtype=bool)
    assert row["metric"] == "psnr" and row["n"] == len(psnr) and row["wrong"] == wrong.sum()
    finite = np.where(np.isfinite(psnr), psnr, 1e9)  # +inf: the least distorted
    assert row["auc"] == pytest.approx(roc_auc_score(wrong, -finite), abs=1e-12)
    assert row["auc"] > 0.5  # low PSNR flags wrong predictions in this fixture


def test_roc_auc_with_ties_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, 200).astype(float)
    labels = rng.random(200) < 0.3
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert math.isnan(roc_auc(scores, np.zeros(200, bool)))


def test_sdr_figure_is_the_mean_over_stems():
    assert _figure({"sdr": 4.0}, "sdr") == 4.0
    assert _figure({"sdr": {"vocals": 2.0, "drums": 4.0}}, "sdr") == 3.0
    assert _figure({"vocals": {"sdr": 1.0, "sir": 9.0}, "bass": {"sdr": 3.0}}, "sdr") == 2.0
    assert _figure({"top1": 0.5}, "sdr") is None


def test_report_has_the_correlation_section(out, tmp_path):
    target = write_report(out, report_dir=tmp_path / "rep")
    table = pd.read_csv(target / "correlation.csv")
    assert list(table["metric"]) == ["psnr"] and table["n"].tolist() == [len(QUALITIES)]
    assert (target / "auc.csv").is_file()
    pngs = sorted(p.name for p in target.glob("corr-*.png"))
    assert pngs == ["corr-imagefolder-all-classify-torchvision_resnet18-top1-psnr.png"]
    assert (target / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (target / "report.md").read_text()
    assert "What predicts machine perception" in md and "flags wrong predictions" in md
    html = (target / "report.html").read_text()
    assert "What predicts machine perception" in html


def test_no_eval_files_no_correlation(tmp_path, imagefolder_classes):
    fx.transcode("imagefolder", imagefolder_classes, tmp_path / "o", codecs=("jpeg:quality=50",))
    target = write_report(tmp_path / "o", report_dir=tmp_path / "rep")
    assert not (target / "correlation.csv").exists()
    assert "What predicts machine perception" not in (target / "report.md").read_text()

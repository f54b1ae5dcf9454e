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
from pipeline.report.correlate import auc_table, correlation_table, roc_auc, sample_outcomes, setting_points
from pipeline.report.eval import task_figure
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
        write_result(folder, "classify", "torchvision:resnet18", rows,
                     {"top1": float(np.mean(correct)), "top5": 1.0, "loss": 1.0}, ["correct1"])
    return root


def write_result(folder: Path, task: str, model: str, rows: pd.DataFrame, figures: dict, columns: list[str]) -> None:
    """An eval result as ``mpq eval`` publishes it (the keys of pipeline.eval.run.publish_set)."""
    stem = f"{task}-{model.replace(':', '_')}"
    (folder / "eval").mkdir(exist_ok=True)
    rows.to_parquet(folder / "eval" / f"{stem}.parquet")
    index = json.loads((folder / "index.json").read_text())
    ok = int((rows["status"] == "ok").sum())
    doc = {"format": "mpq-eval/1", "dataset": folder.parts[-3], "split": folder.parts[-2], "tag": folder.name,
           "codec": index.get("codec", folder.name), "task": task, "figures": figures, "samples": ok,
           "errors": len(rows) - ok, "model": {"name": model}, "rows": f"{stem}.parquet", "columns": columns}
    (folder / "eval" / f"{stem}.json").write_text(json.dumps(doc))


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
        top1 = json.loads((folder / "eval" / "classify-torchvision_resnet18.json").read_text())["figures"]["top1"]
        if np.isfinite(mean_psnr):  # the lossless set has +inf PSNR: no point
            xs.append(mean_psnr)
            ys.append(top1)
    x, y = np.array(xs), np.array(ys)
    assert (row["dataset"], row["split"], row["task"], row["model"], row["figure"]) == \
        ("imagefolder", "all", "classify", "torchvision:resnet18", "top1")
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


def test_task_figures_come_from_the_task_registry():
    from pipeline.eval.tasks import get_task, task_names

    for task in task_names():
        cls = get_task(task)
        assert task_figure(task) == ((cls.primary if cls.perception else None), cls.higher_is_better)
    assert task_figure("separate")[0] == "sdr" and task_figure("similarity")[0] is None
    assert task_figure("caption") == (None, True)  # an unknown task has no figure


def test_similarity_results_give_the_metrics_the_manifests_lack(out, tmp_path):
    """Sets transcoded without --lpips, then ``mpq eval --task similarity``: the report uses those rows."""
    import shutil

    root = tmp_path / "sim"
    shutil.copytree(out, root)
    rng = np.random.default_rng(11)
    means = {}
    for folder in sorted(root.glob("imagefolder/all/*")):
        if folder.name == "none":
            continue  # the reference is not evaluated by the similarity task
        manifest = pq.read_table(folder / "manifest.parquet").to_pandas()
        keys = list(manifest.loc[manifest["status"] == "ok", "key"])
        values = rng.uniform(0.05, 0.6, len(keys))
        rows = pd.DataFrame({"key": keys, "status": "ok", "lpips_alex": values})
        write_result(folder, "similarity", "lpips:alex", rows, {"mean": float(values.mean())}, ["lpips_alex"])
        means[folder.name] = float(values.mean())
    sets, _ = find_sets(root)
    points = setting_points(sets)
    assert set(points["task"]) == {"classify"}  # similarity is a metric here, not a task figure
    got = points.set_index("tag")["lpips_alex"].to_dict()
    assert {t: v for t, v in got.items() if t != "none"} == pytest.approx(means) and math.isnan(got["none"])
    row = correlation_table(points).set_index("metric").loc["lpips_alex"]
    assert row["n"] == len(QUALITIES)
    samples = sample_outcomes(sets)
    aucs = auc_table(samples).set_index("metric")
    assert "lpips_alex" in aucs.index and aucs.loc["lpips_alex", "n"] == 6 * len(QUALITIES)


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

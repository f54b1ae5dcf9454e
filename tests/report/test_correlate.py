"""Correlation of distortion metrics with task figures: recomputed by hand from the per-setting figures.

Sets come from a real transcode (JPEG at five qualities plus the lossless reference) of photographs, a
uniformly gray image (bit-exact through JPEG at any quality: +inf PSNR in every lossy set) and one image
large enough for MS-SSIM (finite MS-SSIM, 1.0 at ``none``); the eval files that ``mpq eval`` would write
are written here by hand, in the format issue 12 fixes.
"""
from __future__ import annotations

import io
import json
import math
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats

import fixtures as fx
from pipeline.report import write_report
from pipeline.report.correlate import (auc_table, correlation_table, db_mean, roc_auc, sample_outcomes,
                                       setting_points)
from pipeline.report.eval import task_figure
from pipeline.report.load import find_sets

QUALITIES = (5, 15, 30, 60, 90)
MODEL = "torchvision:resnet18"
EPS = np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def out(tmp_path_factory, imagefolder_classes) -> Path:
    root = tmp_path_factory.mktemp("corr")
    src = root / "src"
    shutil.copytree(imagefolder_classes.root, src)
    fx._write(src / "things" / "gray.png", fx.png_bytes(np.full((48, 64, 3), 128, np.uint8)))  # bit-exact as JPEG
    fx._write(src / "cats" / "large.png", fx.png_bytes(fx.photo("astronaut", 168, 168)))  # MS-SSIM needs > 160 px
    built = fx.Built(src, {}, options=imagefolder_classes.options)
    codecs = tuple(f"jpeg:quality={q}" for q in QUALITIES) + ("none",)
    fx.transcode("imagefolder", built, root / "out", codecs=codecs, samples_per_shard=4, ms_ssim=True)
    rng = np.random.default_rng(7)
    for folder in set_folders(root / "out"):
        ok = ok_manifest(folder)
        psnr = ok["psnr"].to_numpy()
        # a classifier that is right more often on better-coded images, with noise
        correct = (np.where(np.isfinite(psnr), psnr, 60) + rng.normal(0, 4, len(ok))) > 30
        rows = pd.DataFrame({"key": list(ok["key"]) + ["missing-key"], "status": ["ok"] * len(ok) + ["error"],
                             "correct1": list(correct) + [False]})
        write_result(folder, "classify", MODEL, rows, {"top1": float(np.mean(correct)), "top5": 1.0, "loss": 1.0},
                     ["correct1"])
    return root / "out"


def set_folders(out: Path) -> list[Path]:
    return sorted(out.glob("imagefolder/all/*"))


def ok_manifest(folder: Path) -> pd.DataFrame:
    m = pq.read_table(folder / "manifest.parquet").to_pandas()
    return m[m["status"] == "ok"].reset_index(drop=True)


def write_result(folder: Path, task: str, model: str, rows: pd.DataFrame, figures: dict, columns: list[str],
                 **extra) -> None:
    """An eval result as ``mpq eval`` publishes it (the keys of pipeline.eval.run.publish_set)."""
    stem = f"{task}-{model.replace(':', '_')}"
    (folder / "eval").mkdir(exist_ok=True)
    rows.to_parquet(folder / "eval" / f"{stem}.parquet")
    index = json.loads((folder / "index.json").read_text())
    ok = int((rows["status"] == "ok").sum())
    doc = {"format": "mpq-eval/1", "dataset": folder.parts[-3], "split": folder.parts[-2], "tag": folder.name,
           "codec": index.get("codec", folder.name), "task": task, "figures": figures, "samples": ok,
           "errors": len(rows) - ok, "model": {"name": model}, "rows": f"{stem}.parquet", "columns": columns,
           **extra}
    (folder / "eval" / f"{stem}.json").write_text(json.dumps(doc))


def top1(folder: Path) -> float:
    return json.loads((folder / "eval" / "classify-torchvision_resnet18.json").read_text())["figures"]["top1"]


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


def decoded_pixels(folder: Path) -> dict[str, np.ndarray]:
    """key -> RGB pixels of every payload in a set's shards, decoded with Pillow (not the project's loader)."""
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if ext in ("jpg", "png"):
                    data = tar.extractfile(m).read()  # type: ignore[union-attr]
                    out[key] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
    return out


def hand_psnr_of_mean_mse(folder: Path, reference: dict[str, np.ndarray]) -> float:
    """PSNR of the mean MSE over the set's samples, from pixels decoded here against the lossless set."""
    pixels = decoded_pixels(folder)
    mses = [float(np.mean((pixels[k] - reference[k]) ** 2)) for k in sorted(pixels)]
    return 10.0 * math.log10(255.0 ** 2 / float(np.mean(mses)))


def db_tolerance(values: np.ndarray) -> float:
    """Float error of ``db_mean`` against the direct PSNR of the mean MSE, derived from the operations: each
    dB value d carries a relative error of a few eps (one log10); 10^(-d/10) turns an absolute error e in d
    into a relative one of e ln(10)/10, the mean and the final log add a few eps, and the dB scale multiplies
    a relative error by 10/ln(10). With 8 eps per rounding that is 8 eps (max|d| + 10/ln(10) x 4)."""
    finite = np.abs(values[np.isfinite(values)])
    return 8 * EPS * (float(finite.max(initial=0.0)) + 4 * 10 / math.log(10))


def test_a_bit_exact_sample_keeps_its_setting_and_the_psnr_of_the_mean_mse(out):
    """Every lossy set holds a bit-exact sample (+inf PSNR): its setting stays, its PSNR mean is finite and
    is the PSNR of the mean MSE computed here from decoded pixels."""
    reference = decoded_pixels(out / "imagefolder" / "all" / "none")
    sets, _ = find_sets(out)
    points = setting_points(sets).set_index("tag")
    for folder in set_folders(out):
        if folder.name == "none":
            continue
        psnr = ok_manifest(folder)["psnr"].to_numpy(dtype=np.float64)
        assert np.isposinf(psnr).sum() == 1  # the gray image
        hand = hand_psnr_of_mean_mse(folder, reference)
        assert math.isfinite(points.loc[folder.name, "psnr"])
        assert points.loc[folder.name, "psnr"] == pytest.approx(hand, rel=0, abs=db_tolerance(psnr))
    table = correlation_table(setting_points(sets))
    assert table.loc[table["metric"] == "psnr", "n"].tolist() == [len(QUALITIES)]


def test_db_mean_by_hand():
    assert db_mean([10.0, 20.0]) == pytest.approx(-10 * math.log10((0.1 + 0.01) / 2), abs=40 * EPS)
    assert db_mean([30.0, math.inf]) == pytest.approx(30 + 10 * math.log10(2), abs=40 * EPS)  # no noise from inf
    assert db_mean([math.inf, math.inf]) == math.inf and db_mean([math.nan]) is None
    assert db_mean([5.0, math.nan]) == pytest.approx(5.0, abs=40 * EPS)


def test_one_n_per_table_no_none_point_recomputed_with_scipy(out):
    """PSNR (+inf at none) and MS-SSIM (1.0 at none) over the same five lossy settings; the correlations
    equal scipy's on points computed here from the manifests (PSNR of the mean MSE, mean MS-SSIM)."""
    sets, _ = find_sets(out)
    table = correlation_table(setting_points(sets))
    assert set(table["metric"]) == {"psnr", "ms_ssim"}  # what the manifests hold (no deep metric)
    assert table["n"].tolist() == [len(QUALITIES)] * 2
    assert set(table["settings"]) == {";".join(sorted(f"jpeg-q{q}" for q in QUALITIES))}  # no none
    xs: dict[str, list[float]] = {"psnr": [], "ms_ssim": []}
    ys = []
    for folder in set_folders(out):
        if folder.name == "none":
            continue
        ok = ok_manifest(folder)
        xs["psnr"].append(10 * math.log10(255.0 ** 2 / ok["mse"].astype(float).mean()))
        xs["ms_ssim"].append(ok["ms_ssim"].astype(float).dropna().mean())
        ys.append(top1(folder))
    y = np.array(ys)
    for metric, values in xs.items():
        x = np.array(values)
        row = table[table["metric"] == metric].iloc[0]
        assert (row["dataset"], row["split"], row["task"], row["model"], row["figure"]) == \
            ("imagefolder", "all", "classify", MODEL, "top1")
        pearson, spearman, kendall = stats.pearsonr(x, y), stats.spearmanr(x, y), stats.kendalltau(x, y)
        # x differs from the report's in its last bits only (the mean MSE directly, not through db_mean)
        assert row["pearson"] == pytest.approx(pearson[0], abs=1e-9)
        assert row["pearson_p"] == pytest.approx(pearson[1], abs=1e-9)
        assert row["spearman"] == pytest.approx(spearman[0], abs=1e-12)
        assert row["kendall"] == pytest.approx(kendall[0], abs=1e-12)
        assert row["kendall"] == pytest.approx(kendall_tau_b(x, y), abs=1e-12)
        assert row["kendall_p"] == pytest.approx(kendall[1], abs=1e-12)


def test_too_few_settings_give_no_correlation():
    points = pd.DataFrame({"dataset": "d", "split": "s", "task": "asr", "model": "m", "figure": "wer", "tag": "t",
                           "reference": False, "value": [0.1, 0.2, np.nan], "snr": [10.0, 20.0, 30.0],
                           "family": "x"})
    (row,) = correlation_table(points).to_dict(orient="records")
    assert row["n"] == 2 and math.isnan(row["pearson"]) and math.isnan(row["kendall"])


def test_a_setting_missing_one_metric_leaves_every_metric(out, tmp_path):
    """LPIPS from similarity results on four of the five lossy sets: all three metrics over those four."""
    root = tmp_path / "o"
    shutil.copytree(out, root)
    rng = np.random.default_rng(5)
    for folder in set_folders(root)[1:-1]:  # jpeg-q15 .. jpeg-q90 (sorted: jpeg-q15, q30, q5, q60, q90, none)
        keys = list(ok_manifest(folder)["key"])
        values = rng.uniform(0.05, 0.6, len(keys))
        write_result(folder, "similarity", "lpips:alex", pd.DataFrame({"key": keys, "status": "ok",
                                                                       "lpips_alex": values}),
                     {"mean": float(values.mean())}, ["lpips_alex"])
    sets, _ = find_sets(root)
    points = setting_points(sets)
    table = correlation_table(points)
    assert set(table["metric"]) == {"psnr", "ms_ssim", "lpips_alex"} and set(table["n"]) == {4}
    target = write_report(root, report_dir=tmp_path / "rep")
    md = (target / "report.md").read_text()
    assert "Settings left out of this table: `jpeg-q15` (no finite lpips_alex)." in md


def test_auc_over_the_same_samples_for_every_metric(out, tmp_path):
    """auc.csv: lossy settings only, the same (setting, sample) pairs for PSNR, MS-SSIM and LPIPS (LPIPS
    lacks one key per set, MS-SSIM is measured on the large image only), each AUC equal to sklearn's."""
    from sklearn.metrics import roc_auc_score

    root = tmp_path / "o"
    shutil.copytree(out, root)
    rng = np.random.default_rng(11)
    for folder in set_folders(root):
        if folder.name == "none":
            continue
        keys = list(ok_manifest(folder)["key"])[1:]  # the first key has no LPIPS
        values = rng.uniform(0.05, 0.6, len(keys))
        write_result(folder, "similarity", "lpips:alex", pd.DataFrame({"key": keys, "status": "ok",
                                                                       "lpips_alex": values}),
                     {"mean": float(values.mean())}, ["lpips_alex"])
    sets, _ = find_sets(root)
    samples = sample_outcomes(sets)
    assert "none" not in set(samples["tag"]) and "missing-key" not in set(samples["key"])
    table = auc_table(samples)
    assert set(table["metric"]) == {"psnr", "ms_ssim", "lpips_alex"}
    common = samples.dropna(subset=["psnr", "ms_ssim", "lpips_alex"])
    assert len(common) == len(QUALITIES) and set(common["key"]) == {"cats_large"}  # MS-SSIM's only image
    assert set(table["n"]) == {len(common)} and set(table["wrong"]) == {int((~common["correct1"]).sum())}
    wrong = ~common["correct1"].to_numpy(dtype=bool)
    for r in table.to_dict(orient="records"):
        x = common[r["metric"]].to_numpy(dtype=float)
        score = x if r["metric"] == "lpips_alex" else -x
        expected = roc_auc_score(wrong, score) if 0 < wrong.sum() < len(wrong) else math.nan
        assert r["auc"] == pytest.approx(expected, abs=1e-12, nan_ok=True)


def test_auc_against_sklearn(out):
    from sklearn.metrics import roc_auc_score

    sets, _ = find_sets(out)
    samples = sample_outcomes(sets)
    n_ok = len(ok_manifest(out / "imagefolder" / "all" / "none"))
    assert len(samples) == n_ok * len(QUALITIES) and "none" not in set(samples["tag"])
    table = auc_table(samples).set_index("metric")
    common = samples.dropna(subset=["psnr", "ms_ssim"])
    row = table.loc["psnr"]
    psnr = common["psnr"].to_numpy(dtype=float)
    wrong = ~common["correct1"].to_numpy(dtype=bool)
    assert row["n"] == table.loc["ms_ssim", "n"] == len(psnr) and row["wrong"] == wrong.sum()
    finite = np.where(np.isfinite(psnr), psnr, 1e9)  # +inf: the least distorted
    if 0 < wrong.sum() < len(wrong):
        assert row["auc"] == pytest.approx(roc_auc_score(wrong, -finite), abs=1e-12)


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
    root = tmp_path / "sim"
    shutil.copytree(out, root)
    rng = np.random.default_rng(11)
    means = {}
    for folder in set_folders(root):
        if folder.name == "none":
            continue  # the reference is not evaluated by the similarity task
        keys = list(ok_manifest(folder)["key"])
        values = rng.uniform(0.05, 0.6, len(keys))
        rows = pd.DataFrame({"key": keys, "status": "ok", "lpips_alex": values})
        write_result(folder, "similarity", "lpips:alex", rows, {"mean": float(values.mean())}, ["lpips_alex"])
        means[folder.name] = float(values.mean())
    sets, _ = find_sets(root)
    points = setting_points(sets)
    assert set(points["task"]) == {"classify"}  # similarity is a metric here, not a task figure
    got = points.set_index("tag")["lpips_alex"].to_dict()
    assert {t: v for t, v in got.items() if t != "none"} == pytest.approx(means, abs=1e-15)
    assert math.isnan(got["none"])
    row = correlation_table(points).set_index("metric").loc["lpips_alex"]
    assert row["n"] == len(QUALITIES)


def test_with_limit_means_and_rates_come_from_the_keys_the_eval_saw(out, tmp_path):
    """Results over the first three keys of each set (``mpq eval --limit 3``): metric means in the
    correlation and the rate in eval.csv are over those keys, not the whole set."""
    root = tmp_path / "lim"
    shutil.copytree(out, root)
    expected = {}
    for folder in set_folders(root):
        ok = ok_manifest(folder).head(3)
        rows = pd.DataFrame({"key": ok["key"], "status": "ok", "correct1": [True, False, True]})
        write_result(folder, "classify", MODEL, rows, {"top1": 2 / 3}, ["correct1"], limit=3)
        mse = ok["mse"].astype(float).mean()
        expected[folder.name] = (float(ok["bpp"].mean()), 10 * math.log10(255.0 ** 2 / mse) if mse else math.inf)
    sets, _ = find_sets(root)
    points = setting_points(sets).set_index("tag")
    target = write_report(root, report_dir=tmp_path / "rep")
    ev = pd.read_csv(target / "eval.csv").set_index("tag")
    for tag, (bpp, psnr) in expected.items():
        assert ev.loc[tag, "rate"] == pytest.approx(bpp, rel=4 * EPS) and ev.loc[tag, "rate_samples"] == 3
        assert points.loc[tag, "samples"] == 3
        if tag != "none":
            assert points.loc[tag, "psnr"] == pytest.approx(psnr, abs=1e-12)
    summary = pd.read_csv(target / "summary.csv").set_index("tag")
    assert ev.loc["jpeg-q5", "rate"] != pytest.approx(summary.loc["jpeg-q5", "bpp_mean"])  # the whole set differs


def test_report_has_the_correlation_section(out, tmp_path):
    target = write_report(out, report_dir=tmp_path / "rep")
    table = pd.read_csv(target / "correlation.csv")
    assert list(table["metric"]) == ["psnr", "ms_ssim"] and table["n"].tolist() == [len(QUALITIES)] * 2
    assert (target / "auc.csv").is_file()
    pngs = sorted(p.name for p in target.glob("corr-*.png"))
    assert pngs == [f"corr-imagefolder-all-classify-torchvision_resnet18-top1-{m}.png" for m in ("ms_ssim", "psnr")]
    assert (target / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (target / "report.md").read_text()
    assert "What predicts machine perception" in md and "flags wrong predictions" in md
    assert "Settings left out" not in md
    html = (target / "report.html").read_text()
    assert "What predicts machine perception" in html


def test_no_eval_files_no_correlation(tmp_path, imagefolder_classes):
    fx.transcode("imagefolder", imagefolder_classes, tmp_path / "o", codecs=("jpeg:quality=50",))
    target = write_report(tmp_path / "o", report_dir=tmp_path / "rep")
    assert not (target / "correlation.csv").exists()
    assert "What predicts machine perception" not in (target / "report.md").read_text()

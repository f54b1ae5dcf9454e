"""Which distortion metric predicts machine perception: correlations across settings, AUC per sample.

Inputs are only files a run published: each set's manifest (per-sample distortion, as measured at
transcode time) and the results ``mpq eval`` writes next to it, read through
:func:`pipeline.report.eval.find_results` (the one reader of eval results): the task figure named
by the task registry (``primary``), the per-sample rows for ``classify``'s ``correct1``, and the
``similarity`` results as a second source of deep metrics (LPIPS, DISTS, CDPAM) for sets
transcoded without ``--lpips``/``--dists``/``--cdpam``.

- **Across settings** (:func:`correlation_table`): per dataset, split, task, model and figure, one
  point per codec setting (every family together, the lossless reference included where the
  metric is finite): x = the setting's mean of a distortion metric over ok samples, y = its task
  figure. Pearson, Spearman and Kendall (tau-b) from scipy with their two-sided p-values, and n,
  the number of settings where both are finite; fewer than :data:`MIN_SETTINGS` give no correlation.
- **Per sample** (:func:`auc_table`, tasks with a per-sample outcome: ``classify``'s ``correct1``):
  over every (setting, sample) pair with an ok evaluation and a finite metric, the ROC AUC of the
  metric as a detector of a wrong prediction, oriented so that "more distortion" predicts "wrong"
  (lower PSNR/MS-SSIM/SNR/SI-SDR/PESQ/STOI, higher LPIPS/DISTS/CDPAM): 0.5 is chance, 1 perfect.
  Computed as the Mann-Whitney U statistic over n_wrong x n_correct (ties count one half).

Task figures (the registry's ``primary``): ``top1`` (classify), ``miou`` (segment), ``wer`` (asr),
``sdr`` (separate: the mean over stems). Signs are as measured: WER falls as quality rises, so a
good metric correlates negatively with it.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..metrics.deep import columns as deep_columns
from .eval import distortion_column, find_results, read_rows, safe_name, task_figure
from .load import CodecSet
from .tables import METRICS

#: metrics where a larger value means more distortion (the others: larger is better)
LOWER_IS_BETTER = frozenset(deep_columns())  # the deep metrics are distances
MIN_SETTINGS = 3
COLUMNS = ["dataset", "split", "task", "model", "figure", "metric", "n", "pearson", "pearson_p", "spearman",
           "spearman_p", "kendall", "kendall_p"]
AUC_COLUMNS = ["dataset", "split", "task", "model", "metric", "n", "wrong", "auc"]


def set_results(s: CodecSet) -> list[dict[str, Any]]:
    """The finished ``mpq eval`` results of one set (read by :func:`pipeline.report.eval.find_results`)."""
    return find_results(s.store.root, s.dataset, s.split, s.tag)


def _finite_mean(values: Any) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else None


def setting_points(sets: Iterable[CodecSet]):
    """One row per (set, perception result): the setting's metric means next to its task figure.

    Metric means come from the manifest (transcode-time columns) and, for a metric the manifest
    lacks, from the set's ``similarity`` results (the same per-sample numbers, measured afterwards).
    """
    import pandas as pd

    rows = []
    for s in sets:
        ok = s.manifest[s.manifest["status"] == "ok"]
        means = {}
        for m in METRICS:
            if m in ok.columns:
                mean = _finite_mean(ok[m].to_numpy(dtype=np.float64, na_value=np.nan))
                if mean is not None:
                    means[m] = mean
        results = set_results(s)
        for doc in results:
            column = distortion_column(doc)
            if column in METRICS and column not in means and doc["figures"].get("mean") is not None:
                means[column] = float(doc["figures"]["mean"])  # mean over ok samples with a finite distance
        for doc in results:
            figure, _ = task_figure(doc["task"])
            value = doc["figures"].get(figure) if figure else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({"dataset": s.dataset, "split": s.split, "tag": s.tag, "family": s.family,
                             "codec": s.codec, "task": doc["task"], "model": doc["model"]["name"], "figure": figure,
                             "value": float(value), **means})
    return pd.DataFrame(rows)


def correlate(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """n and Pearson, Spearman, Kendall (with p-values) over the pairs where both are finite."""
    from scipy import stats

    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out: dict[str, float] = {"n": int(keep.sum())}
    for name, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        r = p = math.nan
        if len(x) >= MIN_SETTINGS and np.ptp(x) > 0 and np.ptp(y) > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = fn(x, y)
            r, p = float(res[0]), float(res[1])
        out[name], out[f"{name}_p"] = r, p
    return out


def correlation_table(points: Any):
    """Per dataset, split, task, model, figure and metric present: n, Pearson, Spearman, Kendall."""
    import pandas as pd

    rows = []
    if len(points):
        keys = ["dataset", "split", "task", "model", "figure"]
        for key, part in points.groupby(keys, sort=True):
            for m in METRICS:
                if m in part.columns and part[m].notna().any():
                    c = correlate(part[m].to_numpy(dtype=np.float64, na_value=np.nan),
                                  part["value"].to_numpy(dtype=np.float64))
                    rows.append({**dict(zip(keys, key)), "metric": m, **c})
    return pd.DataFrame(rows, columns=COLUMNS)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 1/2 P(equal): the Mann-Whitney U over n1 x n0."""
    from scipy.stats import rankdata

    positive = positive.astype(bool)
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = rankdata(scores)  # ties get their average rank
    u = ranks[positive].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n1 * n0))


def _sample_metrics(s: CodecSet, results: list[dict[str, Any]]):
    """key and every per-sample metric of a set: the manifest's, then those only its similarity results hold."""

    ok = s.manifest[s.manifest["status"] == "ok"]
    frame = ok[["key"] + [m for m in METRICS if m in ok.columns and ok[m].notna().any()]]  # measured ones only
    for doc in results:
        column = distortion_column(doc)
        rows = read_rows(doc, ["key", "status", column]) if column in METRICS and column not in frame.columns else None
        if rows is not None:
            frame = frame.merge(rows[rows["status"] == "ok"][["key", column]], on="key", how="left")
    return frame


def sample_outcomes(sets: Iterable[CodecSet]):
    """Per-sample rows (set, key, correct1 and every metric) where a classify evaluation has them."""
    import pandas as pd

    frames = []
    for s in sets:
        results = set_results(s)
        metrics = None
        for doc in results:
            rows = read_rows(doc) if doc["task"] == "classify" else None
            if rows is None or "correct1" not in rows.columns:
                continue
            if metrics is None:
                metrics = _sample_metrics(s, results)
            rows = rows[rows["status"] == "ok"][["key", "correct1"]]
            joined = rows.merge(metrics, on="key", how="inner")
            for name, value in (("model", doc["model"]["name"]), ("task", doc["task"]), ("tag", s.tag),
                                ("split", s.split), ("dataset", s.dataset)):
                joined.insert(0, name, value)
            frames.append(joined)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def auc_table(samples: Any):
    """Per dataset, split, task, model and metric: how well the metric flags wrong predictions (ROC AUC)."""
    import pandas as pd

    rows = []
    if len(samples):
        keys = ["dataset", "split", "task", "model"]
        for key, part in samples.groupby(keys, sort=True):
            wrong = ~part["correct1"].astype(bool).to_numpy()
            for m in METRICS:
                if m not in part.columns:
                    continue
                x = part[m].to_numpy(dtype=np.float64, na_value=np.nan)
                keep = ~np.isnan(x)  # +inf (lossless PSNR) is kept: it ranks as the least distorted
                if not keep.any():
                    continue
                score = x[keep] if m in LOWER_IS_BETTER else -x[keep]
                rows.append({**dict(zip(keys, key)), "metric": m, "n": int(keep.sum()),
                             "wrong": int(wrong[keep].sum()), "auc": roc_auc(score, wrong[keep])})
    return pd.DataFrame(rows, columns=AUC_COLUMNS)


def scatter_plot(part: Any, metric: str, figure: str, path: Path, title: str) -> bool:
    """One PNG: a point per setting (metric mean, task figure), a colour per codec family."""
    x = part[metric].to_numpy(dtype=np.float64, na_value=np.nan)
    y = part["value"].to_numpy(dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        return False
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), dpi=100)
    ax = fig.add_subplot()
    families = part["family"].astype(str).to_numpy()
    for family in sorted(set(families[keep])):
        sel = keep & (families == family)
        ax.scatter(x[sel], y[sel], label=family, s=24)
    ax.set_xlabel(f"{metric} (mean over samples)")
    ax.set_ylabel(figure)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


def correlation_section(sets: list[CodecSet], target: Path) -> list[Any]:
    """Write ``correlation.csv``, ``auc.csv`` and ``corr-*.png`` into ``target``; the report's blocks.

    Nothing is written (and no block returned) when no set has eval files.
    """
    from .render import Heading, Image, Para, Table, fmt

    for old in target.glob("corr-*.png"):
        old.unlink()
    points = setting_points(sets)
    if not len(points):
        return []
    table = correlation_table(points)
    aucs = auc_table(sample_outcomes(sets))
    table.to_csv(target / "correlation.csv", index=False)
    aucs.to_csv(target / "auc.csv", index=False)
    blocks: list[Any] = [Heading("What predicts machine perception", 2), Para(
        "Correlation across codec settings (all families together) between each setting's mean distortion "
        "and its task figure; n = settings where both are finite. Kendall is tau-b. WER falls as quality "
        "rises, so a good metric correlates negatively with it. All figures: `correlation.csv`, `auc.csv`.")]
    keys = ["dataset", "split", "task", "model", "figure"]
    for key, part in table.groupby(keys, sort=True):
        ds, sp, task, model, figure = key
        blocks.append(Heading(f"{ds} / {sp}: {figure} ({task}, `{model}`)", 3))
        rows = [[r["metric"], fmt(r["n"], 0), fmt(r["pearson"], 3), fmt(r["spearman"], 3), fmt(r["kendall"], 3),
                 fmt(r["pearson_p"], 3)] for r in part.to_dict(orient="records")]
        blocks.append(Table(["metric", "n", "Pearson", "Spearman", "Kendall", "Pearson p"], rows,
                            right={1, 2, 3, 4, 5}))
        sel = points
        for k, v in zip(keys, key):
            sel = sel[sel[k] == v]
        for metric in part["metric"]:
            path = target / safe_name(f"corr-{ds}-{sp}-{task}-{model}-{figure}-{metric}.png")
            if scatter_plot(sel, metric, figure, path, f"{ds} / {sp}: {figure} ({model}) against {metric}"):
                blocks.append(Image(path, f"{figure} against mean {metric}, one point per setting"))
    if len(aucs):
        blocks.append(Heading("Per sample: which metric flags wrong predictions", 3))
        blocks.append(Para("ROC AUC of each metric as a detector of a wrong top-1 prediction, over every (setting, "
                           "sample) pair, oriented so that more distortion predicts wrong: 0.5 is chance."))
        rows = [[f"{r['dataset']} / {r['split']}", f"`{r['model']}`", r["metric"], fmt(r["n"], thousands=True),
                 fmt(r["wrong"], thousands=True), fmt(r["auc"], 3)] for r in aucs.to_dict(orient="records")]
        blocks.append(Table(["set", "model", "metric", "samples", "wrong", "AUC"], rows, right={3, 4, 5}))
    return blocks


"""Which distortion metric predicts machine perception: correlations across settings, AUC per sample.

Inputs are only files a run published: each set's manifest (per-sample distortion, as measured at
transcode time) and the results ``mpq eval`` writes next to it, read through
:func:`pipeline.report.eval.find_results` (the one reader of eval results): the task figure named
by the task registry (``primary``, from the JSON's ``figures``: over all reference keys where the
result records coverage), the per-sample rows for ``classify``'s ``correct1``, and the
``similarity`` results as a second source of deep metrics (LPIPS, DISTS, CDPAM) for sets
transcoded without ``--lpips``/``--dists``/``--cdpam``.

Every figure here compares metrics over the same points, so that a ranking of metrics is not an
artefact of which points each one happened to get:

- **Points are lossy settings.** The reference ``none`` (and any setting of a codec the registry
  declares lossless) is never a point: it is where every metric is at its best for free.
- **Keys are the eval's keys.** A setting's metric means are over the manifest's ok samples whose key
  is in that result's rows (with ``mpq eval --limit N`` the first N reference keys, not the whole set),
  less the ``extra`` keys that are not ok in the reference set its coverage names (in no figure):
  :func:`pipeline.report.eval.figure_keys`. The AUC's samples are chosen the same way.
- **Means of dB metrics** (:data:`DB_METRICS`: PSNR, SNR, SI-SDR) are the level of the mean linear
  noise-to-signal ratio, ``-10 log10(mean(10^(-d/10)))`` (:func:`db_mean`); for PSNR (peak 255) that is
  exactly the PSNR of the mean MSE. A bit-exact sample (+inf dB) adds no noise instead of making the
  mean infinite; the other metrics are arithmetic means. NaN samples are left out of every mean.
- **Across settings** (:func:`correlation_table`): per dataset, split, task, model and figure, the
  compared metrics are those with a finite mean on at least one lossy setting with a finite figure;
  a setting enters only where the figure and every compared metric are finite, so ``n`` is one
  number per table (settings left out are listed, with the metric that lacks). Pearson, Spearman
  and Kendall (tau-b) from scipy with their two-sided p-values; fewer than :data:`MIN_SETTINGS`
  settings give no correlation.
- **Per sample** (:func:`auc_table`, tasks with a per-sample outcome: ``classify``'s ``correct1``):
  over the (lossy setting, sample) pairs with an ok evaluation where every compared metric is a
  number (not NaN; +inf, a bit-exact sample, ranks as the least distorted), the ROC AUC of the metric
  as a detector of a wrong prediction, oriented so that "more distortion" predicts "wrong" (lower
  PSNR/MS-SSIM/SNR/SI-SDR/PESQ/STOI, higher LPIPS/DISTS/CDPAM): 0.5 is chance, 1 perfect. The same
  pairs for every metric of a model. Computed as the Mann-Whitney U statistic over n_wrong x n_correct
  (ties count one half).

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
from .eval import distortion_column, figure_keys, find_results, read_rows, safe_name, task_figure
from .load import CodecSet
from .tables import METRICS

#: metrics where a larger value means more distortion (the others: larger is better)
LOWER_IS_BETTER = frozenset(deep_columns())  # the deep metrics are distances
#: metrics in dB of a signal-to-noise power ratio: averaged as the level of the mean noise ratio (db_mean)
DB_METRICS = frozenset({"psnr", "snr", "si_sdr"})
MIN_SETTINGS = 3
COLUMNS = ["dataset", "split", "task", "model", "figure", "metric", "n", "pearson", "pearson_p", "spearman",
           "spearman_p", "kendall", "kendall_p", "settings"]
AUC_COLUMNS = ["dataset", "split", "task", "model", "metric", "n", "wrong", "auc"]
GROUP = ["dataset", "split", "task", "model", "figure"]


def set_results(s: CodecSet) -> list[dict[str, Any]]:
    """The finished ``mpq eval`` results of one set (read by :func:`pipeline.report.eval.find_results`)."""
    return find_results(s.store.root, s.dataset, s.split, s.tag)


def is_reference(s: CodecSet) -> bool:
    """The lossless reference ``none``, or a setting of a codec the registry declares lossless: never a point."""
    from ..codecs import get_codec
    from ..errors import ConfigError

    if s.tag == "none" or s.family == "none":
        return True
    try:
        return bool(get_codec(s.family).lossless)
    except ConfigError:  # a codec this install does not know: judged by its numbers (an infinite PSNR mean)
        return False


def db_mean(values: Any) -> float | None:
    """``-10 log10(mean(10^(-d/10)))`` over the non-NaN samples: the dB level of the mean linear noise ratio.

    For PSNR with its fixed peak (255) this is the PSNR of the mean MSE, since MSE = 255^2 10^(-PSNR/10);
    a bit-exact sample (+inf dB) contributes zero noise, so one such sample no longer makes the mean
    infinite; only a setting whose every sample is bit-exact has +inf. None without any sample.
    """
    d = np.asarray(values, dtype=np.float64)
    d = d[~np.isnan(d)]
    if not len(d):
        return None
    with np.errstate(over="ignore"):
        noise = float(np.mean(np.power(10.0, -d / 10.0)))
    if noise == 0.0:
        return math.inf
    return -10.0 * math.log10(noise) if math.isfinite(noise) else -math.inf


def metric_mean(metric: str, values: Any) -> float | None:
    """A setting's mean of one metric: :func:`db_mean` for :data:`DB_METRICS`, else the arithmetic mean
    over the non-NaN samples (None without any)."""
    if metric in DB_METRICS:
        return db_mean(values)
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else None


def setting_points(sets: Iterable[CodecSet]):
    """One row per (set, perception result): the setting's metric means next to its task figure.

    Metric means are over the set's ok samples among the keys of that result's rows (the keys the eval
    saw), from the manifest (transcode-time columns) and, for a metric the manifest lacks, from the
    set's ``similarity`` rows (the same per-sample numbers, measured afterwards). ``reference`` marks
    the lossless reference (no point of any table); ``samples`` counts the ok samples averaged.
    """
    import pandas as pd

    sets = list(sets)
    rows = []
    for s in sets:
        results = set_results(s)
        metrics = None
        for doc in results:
            figure, _ = task_figure(doc["task"])
            value = doc["figures"].get(figure) if figure else None
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if metrics is None:
                metrics = _sample_metrics(s, results)
            keys = figure_keys(doc, sets)
            sel = metrics if keys is None else metrics[metrics["key"].isin(keys)]
            means = {m: metric_mean(m, sel[m].to_numpy(dtype=np.float64, na_value=np.nan))
                     for m in METRICS if m in sel.columns}
            rows.append({"dataset": s.dataset, "split": s.split, "tag": s.tag, "family": s.family,
                         "codec": s.codec, "reference": is_reference(s), "task": doc["task"],
                         "model": doc["model"]["name"], "figure": figure, "value": float(value),
                         "samples": len(sel), **{m: v for m, v in means.items() if v is not None}})
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


def _finite(part: Any, column: str) -> np.ndarray:
    return np.isfinite(part[column].to_numpy(dtype=np.float64, na_value=np.nan))


def common_points(part: Any) -> tuple[Any, list[str], list[tuple[str, str]]]:
    """The points one table correlates: (lossy settings where the figure and every compared metric are
    finite, the compared metrics, [(tag, why left out)] for the other lossy settings)."""
    lossy = part[~part["reference"].astype(bool)] if "reference" in part.columns else part[part["tag"] != "none"]
    figure_ok = _finite(lossy, "value")
    metrics = [m for m in METRICS if m in lossy.columns and (_finite(lossy, m) & figure_ok).any()]
    keep = figure_ok.copy()
    for m in metrics:
        keep &= _finite(lossy, m)
    dropped = []
    for i, r in enumerate(lossy.to_dict(orient="records")):
        if not keep[i]:
            lacking = ([part["figure"].iloc[0]] if not figure_ok[i] else []) + [
                m for m in metrics if not (isinstance(r.get(m), float) and math.isfinite(r[m]))]
            dropped.append((str(r["tag"]), "no finite " + ", ".join(lacking)))
    return lossy[keep], metrics, dropped


def correlation_table(points: Any):
    """Per dataset, split, task, model, figure: every compared metric over the same lossy settings
    (:func:`common_points`), so n is one number per table; Pearson, Spearman, Kendall, and the settings'
    tags (``;``-separated)."""
    import pandas as pd

    rows = []
    if len(points):
        for key, part in points.groupby(GROUP, sort=True):
            kept, metrics, _ = common_points(part)
            y = kept["value"].to_numpy(dtype=np.float64)
            settings = ";".join(str(t) for t in kept["tag"])  # the points, so that a row can be recomputed
            for m in metrics:
                c = correlate(kept[m].to_numpy(dtype=np.float64, na_value=np.nan), y)
                rows.append({**dict(zip(GROUP, key)), "metric": m, **c, "settings": settings})
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
    """key and every per-sample metric of a set's ok samples: the manifest's, then those only its
    similarity results hold (their ok rows; a key they lack is NaN)."""

    ok = s.manifest[s.manifest["status"] == "ok"]
    frame = ok[["key"] + [m for m in METRICS if m in ok.columns and ok[m].notna().any()]]  # measured ones only
    for doc in results:
        column = distortion_column(doc)
        rows = read_rows(doc, ["key", "status", column]) if column in METRICS and column not in frame.columns else None
        if rows is not None:
            frame = frame.merge(rows[rows["status"] == "ok"][["key", column]], on="key", how="left")
    return frame


def sample_outcomes(sets: Iterable[CodecSet]):
    """Per-sample rows (set, key, correct1 and every metric) of the lossy sets where a classify evaluation
    has them: ok eval rows only (an error or missing row carries no prediction)."""
    import pandas as pd

    sets = list(sets)
    frames = []
    for s in sets:
        if is_reference(s):
            continue
        results = set_results(s)
        metrics = None
        for doc in results:
            rows = read_rows(doc) if doc["task"] == "classify" else None
            if rows is None or "correct1" not in rows.columns:
                continue
            if metrics is None:
                metrics = _sample_metrics(s, results)
            keys = figure_keys(doc, sets)  # an extra key (not ok in the reference) is in no figure
            rows = rows[(rows["status"] == "ok") & (rows["key"].isin(keys) if keys is not None else True)]
            rows = rows[["key", "correct1"]]
            joined = rows.merge(metrics, on="key", how="inner")
            for name, value in (("model", doc["model"]["name"]), ("task", doc["task"]), ("tag", s.tag),
                                ("split", s.split), ("dataset", s.dataset)):
                joined.insert(0, name, value)
            frames.append(joined)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def auc_table(samples: Any):
    """Per dataset, split, task and model: how well each metric flags wrong predictions (ROC AUC), every
    metric over the same (setting, sample) pairs: those where every compared metric is a number."""
    import pandas as pd

    rows = []
    if len(samples):
        keys = ["dataset", "split", "task", "model"]
        for key, part in samples.groupby(keys, sort=True):
            metrics = [m for m in METRICS if m in part.columns and part[m].notna().any()]
            if not metrics:
                continue
            values = {m: part[m].to_numpy(dtype=np.float64, na_value=np.nan) for m in metrics}
            keep = np.logical_and.reduce([~np.isnan(v) for v in values.values()])  # +inf ranks least distorted
            wrong = ~part["correct1"].astype(bool).to_numpy()[keep]
            for m in metrics:
                score = values[m][keep] if m in LOWER_IS_BETTER else -values[m][keep]
                rows.append({**dict(zip(keys, key)), "metric": m, "n": int(keep.sum()),
                             "wrong": int(wrong.sum()), "auc": roc_auc(score, wrong)})
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
    label = "level of the mean noise ratio, dB" if metric in DB_METRICS else "mean over samples"
    ax.set_xlabel(f"{metric} ({label})")
    ax.set_ylabel(figure)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


INTRO = ("Correlation across lossy codec settings (all families together; the reference `none` is no point) "
         "between each setting's mean distortion and its task figure. Every metric of one table is correlated "
         "over the same settings: those where the figure and every compared metric are finite, so n is the "
         "same on every row; settings left out are named below the table. Means are over the samples the "
         "eval saw (its rows' keys that are reference keys); PSNR, SNR and SI-SDR are averaged as the dB "
         "level of the mean noise ratio (for PSNR: the PSNR of the mean MSE), so a bit-exact sample adds no "
         "noise rather than an infinite mean. Kendall is tau-b. WER falls as quality rises, so a good metric "
         "correlates negatively with it. All figures: `correlation.csv`, `auc.csv`.")


def _table_blocks(key: tuple, part: Any, points: Any, target: Path) -> list[Any]:
    """One correlation table with its note on left-out settings and its scatter plots (the same points)."""
    from .render import Heading, Image, Para, Table, fmt

    ds, sp, task, model, figure = key
    blocks: list[Any] = [Heading(f"{ds} / {sp}: {figure} ({task}, `{model}`)", 3)]
    rows = [[r["metric"], fmt(r["n"], 0), fmt(r["pearson"], 3), fmt(r["spearman"], 3), fmt(r["kendall"], 3),
             fmt(r["pearson_p"], 3)] for r in part.to_dict(orient="records")]
    blocks.append(Table(["metric", "n", "Pearson", "Spearman", "Kendall", "Pearson p"], rows, right={1, 2, 3, 4, 5}))
    sel = points
    for k, v in zip(GROUP, key):
        sel = sel[sel[k] == v]
    kept, _, dropped = common_points(sel)
    if dropped:
        blocks.append(Para("Settings left out of this table: "
                           + "; ".join(f"`{tag}` ({why})" for tag, why in dropped) + "."))
    for metric in part["metric"]:
        path = target / safe_name(f"corr-{ds}-{sp}-{task}-{model}-{figure}-{metric}.png")
        if scatter_plot(kept, metric, figure, path, f"{ds} / {sp}: {figure} ({model}) against {metric}"):
            blocks.append(Image(path, f"{figure} against mean {metric}, one point per lossy setting"))
    return blocks


def correlation_section(sets: list[CodecSet], target: Path) -> list[Any]:
    """Write ``correlation.csv``, ``auc.csv`` and ``corr-*.png`` into ``target``; the report's blocks.

    Nothing is written (and no block returned) when no set has eval files.
    """
    from .render import Heading, Para, Table, fmt

    for old in target.glob("corr-*.png"):
        old.unlink()
    points = setting_points(sets)
    if not len(points):
        return []
    table = correlation_table(points)
    aucs = auc_table(sample_outcomes(sets))
    table.to_csv(target / "correlation.csv", index=False)
    aucs.to_csv(target / "auc.csv", index=False)
    blocks: list[Any] = [Heading("What predicts machine perception", 2), Para(INTRO)]
    for key, part in table.groupby(GROUP, sort=True):
        blocks += _table_blocks(key, part, points, target)
    if len(aucs):
        blocks.append(Heading("Per sample: which metric flags wrong predictions", 3))
        blocks.append(Para("ROC AUC of each metric as a detector of a wrong top-1 prediction, over the (lossy "
                           "setting, sample) pairs with an ok evaluation where every metric is measured (the same "
                           "pairs for every metric of a model), oriented so that more distortion predicts wrong: "
                           "0.5 is chance."))
        rows = [[f"{r['dataset']} / {r['split']}", f"`{r['model']}`", r["metric"], fmt(r["n"], thousands=True),
                 fmt(r["wrong"], thousands=True), fmt(r["auc"], 3)] for r in aucs.to_dict(orient="records")]
        blocks.append(Table(["set", "model", "metric", "samples", "wrong", "AUC"], rows, right={3, 4, 5}))
    return blocks

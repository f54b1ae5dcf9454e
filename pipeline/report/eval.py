"""Task figures against rate: the ``mpq eval`` results joined to the rate of each set.

For every (dataset, split, task, model) with results: a table of the task's figure per setting
with its mean bpp or kbps, the change from the lossless reference ``none`` and the result's
coverage, one plot per codec family (PNG), and a machine BD-rate: the percent rate change of a
family against the anchor family at equal task figure (:func:`pipeline.report.bdrate.bd_rate`, at
least :data:`~pipeline.report.bdrate.MIN_POINTS` points per family, else a reason). Figures where
lower is better (WER) are negated for the BD-rate, so that quality rises with rate.

The figure is the JSON's ``figures`` (``mpq-eval/2``: over every reference key, a sample missing or
failed here counted as the task's failure); its ``coverage`` is shown beside it and a set under
100 % is flagged, with the paired figure in a footnote. The rate is the mean over the set's ok
samples among the keys of the result's rows (the keys the eval saw: with ``--limit N`` the first N),
not over the whole set. Results written before coverage existed (``mpq-eval/1``) show none.

A result of ``mpq eval --variant V`` (fine-tuned weights) is the model ``NAME [V]``; when the
model's own result (no variant, its starting point) is there too, each setting gets
``recovered``: the fraction of the starting point's drop from ``none`` that the variant wins back,
``(variant - start) / (start at none - start)``.
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from .bdrate import MIN_POINTS, bd_rate
from .render import Block, Heading, Image, Para, Table, fmt

#: what a result's ``coverage`` holds (mpq-eval/2), as columns of eval.csv (NaN for an mpq-eval/1 result)
COVERAGE_FIELDS = ("reference_keys", "evaluated", "failed_transcode", "failed_eval", "excluded", "extra", "fraction")
EVAL_COLUMNS = ["dataset", "split", "task", "model", "figure", "higher_is_better", "family", "codec", "tag",
                "rate_unit", "rate", "rate_samples", "value", "value_paired", "reference", "delta", "samples", "errors",
                "recovered", *(f"coverage_{f}" for f in COVERAGE_FIELDS)]
FLAG = "†"  # marks a set under 100 % coverage in the report's tables
EVAL_BD_COLUMNS = ["dataset", "split", "task", "model", "figure", "anchor", "family", "anchor_points", "points",
                   "bd_rate_cubic", "bd_rate_pchip", "reason"]


def task_figure(task: str) -> tuple[str | None, bool]:
    """The task's primary figure and its direction, from the task registry.

    None for an unknown task, and for a task that measures distortion rather than perception
    (``similarity``: its per-sample column is a distortion metric, see :func:`distortion_column`).
    """
    from ..errors import ConfigError
    from ..eval.tasks import get_task

    try:
        cls = get_task(task)
    except ConfigError:
        return None, True
    return (cls.primary if cls.perception else None), cls.higher_is_better


def distortion_column(doc: dict[str, Any]) -> str | None:
    """The per-sample distortion column of a result that measures distortion (``lpips_alex``, ``cdpam``, ...)."""
    from ..errors import ConfigError
    from ..eval.tasks import get_task

    try:
        perception = get_task(doc["task"]).perception
    except ConfigError:
        return None
    columns = doc.get("columns") or []
    return None if perception or len(columns) != 1 else str(columns[0])


def rows_path(doc: dict[str, Any]) -> str:
    """The per-sample rows (parquet) of a result returned by :func:`find_results` (a path or URL)."""
    path = str(doc["path"])
    if "://" in path:
        return f"{path.rsplit('/', 1)[0]}/{doc['rows']}"
    return os.path.join(os.path.dirname(path), doc["rows"])


def read_rows(doc: dict[str, Any], columns: list[str] | None = None) -> Any:
    """The per-sample rows of a result as a DataFrame (None when the file is not there), from its store."""
    import pyarrow.parquet as pq

    from ..store.storage import open_store

    path = rows_path(doc)
    store = open_store(path)
    if not store.is_file(path):
        return None
    return pq.read_table(io.BytesIO(store.read_bytes(path)), columns=columns).to_pandas()


def evaluated_keys(doc: dict[str, Any]) -> frozenset[str] | None:
    """The keys of a result's rows, whatever their status (the keys the eval saw); None without its parquet."""
    from ..store.storage import is_url

    path = rows_path(doc)
    if is_url(path):  # a store: read the key column through it
        rows = read_rows(doc, ["key"])
        return None if rows is None else frozenset(rows["key"].astype(str))
    if not os.path.isfile(path):
        return None
    st = os.stat(path)
    return _keys(path, st.st_mtime_ns, st.st_size)


def figure_keys(doc: dict[str, Any], sets: Iterable[Any]) -> frozenset[str] | None:
    """The keys behind a result's figures: its rows' keys (:func:`evaluated_keys`), less the ``extra`` keys
    (evaluated here but not ok in the reference set the result's coverage names, so not in its figures)."""
    keys = evaluated_keys(doc)
    ref = (doc.get("coverage") or {}).get("reference")
    if keys is None or not ref:
        return keys
    for s in sets:
        if (s.dataset, s.split, s.tag) == (doc["dataset"], doc["split"], ref):
            m = s.manifest
            return keys & frozenset(m.loc[m["status"] == "ok", "key"].astype(str))
    return keys


@functools.lru_cache(maxsize=256)
def _keys(path: str, mtime_ns: int, size: int) -> frozenset[str]:
    import pyarrow.parquet as pq

    return frozenset(str(k) for k in pq.read_table(path, columns=["key"]).column("key").to_pylist())


def find_results(out_root: str | os.PathLike, dataset: str | None = None, split: str | None = None,
                 tag: str | None = None) -> list[dict[str, Any]]:
    """Every finished evaluation JSON under ``OUT/D/S/<tag>/eval/`` (the one reader of eval results),
    each with ``path``: the file (path or URL) it was read from."""
    from ..store.storage import open_store

    store = open_store(os.fspath(out_root))
    prefix = store.join("")
    found = []
    for path in store.glob(store.join("*", "*", "*", "eval", "*.json")):
        ds, sp, tg = path[len(prefix):].replace(os.sep, "/").split("/")[:3]
        if (dataset and ds != dataset) or (split and sp != split) or (tag and tg != tag):
            continue
        try:
            doc = json.loads(store.read_bytes(path))
        except ValueError:
            continue
        if isinstance(doc, dict) and str(doc.get("format", "")).startswith("mpq-eval/"):
            found.append({**upgrade(doc), "path": str(path)})
    return found


#: what an ``mpq-eval/1`` result's figures are over (written before coverage was recorded)
V1_FIGURES = "over the samples evaluated ok in this set (mpq-eval/1: no coverage against the reference set recorded)"


def upgrade(doc: dict[str, Any]) -> dict[str, Any]:
    """A result in the current shape: an ``mpq-eval/1`` document (figures over its ok samples only)
    gets ``figures_paired`` = its ``figures``, ``coverage`` None and ``figure_sets`` saying so."""
    if "figures_paired" in doc and "coverage" in doc:
        return doc
    figures = doc.get("figures") or {}
    return {**doc, "figures": figures, "figures_paired": doc.get("figures_paired", figures),
            "coverage": doc.get("coverage"),
            "figure_sets": doc.get("figure_sets") or {"figures": V1_FIGURES, "figures_paired": V1_FIGURES}}


def eval_rate(s: Any, doc: dict[str, Any], unit: str, sets: Iterable[Any] = ()) -> tuple[float, int] | None:
    """(mean ``unit``, samples) over the set's ok samples among the keys behind the figures (:func:`figure_keys`);
    None when the result has no rows file or the manifest no such column."""
    import numpy as np

    keys = figure_keys(doc, sets)
    ok = s.manifest[s.manifest["status"] == "ok"]
    if keys is None or unit not in ok.columns:
        return None
    v = ok.loc[ok["key"].astype(str).isin(keys), unit].to_numpy(dtype="float64", na_value=math.nan)
    v = v[~np.isnan(v)]
    return (float(v.mean()) if len(v) else math.nan), len(v)


def eval_table(results: list[dict[str, Any]], summary: Any, sets: Iterable[Any] = ()) -> Any:
    """One row per result: the task figure (``figures``), its coverage, the rate over the keys the eval
    saw (from ``sets``' manifests; the summary's whole-set mean where a set or rows file is missing), the
    change from ``none``."""
    import pandas as pd

    rates = {}
    for r in summary.to_dict(orient="records") if len(summary) else []:
        rates[(r["dataset"], r["split"], r["tag"])] = (r["family"], r["rate_unit"], r.get(f"{r['rate_unit']}_mean"))
    sets = list(sets)
    by_tag = {(s.dataset, s.split, s.tag): s for s in sets}
    rows, starts = [], {}
    for doc in results:
        figure, higher = task_figure(doc["task"])
        if figure is None:
            continue
        where = (doc["dataset"], doc["split"], doc["tag"])
        family, unit, rate = rates.get(where, (doc["codec"].split(":")[0], "", None))
        measured = eval_rate(by_tag[where], doc, unit, sets) if where in by_tag and unit else None
        rate, rate_samples = measured if measured is not None else (rate, doc.get("samples"))
        coverage = doc.get("coverage") or {}
        model, variant = doc["model"]["name"], doc["model"].get("variant")
        if variant:  # its starting point is the same model without a variant
            starts[f"{model} [{variant}]"] = model
            model = f"{model} [{variant}]"
        rows.append({"dataset": doc["dataset"], "split": doc["split"], "task": doc["task"],
                     "model": model, "figure": figure, "higher_is_better": higher, "family": family,
                     "codec": doc["codec"], "tag": doc["tag"], "rate_unit": unit, "rate": _num(rate),
                     "rate_samples": _num(rate_samples), "value": _num(doc["figures"].get(figure)),
                     "value_paired": _num((doc.get("figures_paired") or {}).get(figure)),
                     "samples": doc["samples"], "errors": doc["errors"],
                     **{f"coverage_{f}": _num(coverage.get(f)) for f in COVERAGE_FIELDS}})
    frame = pd.DataFrame(rows, columns=[c for c in EVAL_COLUMNS if c not in ("reference", "delta", "recovered")])
    keys = ["dataset", "split", "task", "model"]
    ref = frame[frame["tag"] == "none"].set_index(keys)["value"].to_dict() if len(frame) else {}
    frame["reference"] = [ref.get(tuple(r[k] for k in keys), math.nan) for r in frame.to_dict(orient="records")]
    frame["delta"] = frame["value"] - frame["reference"]
    frame["recovered"] = _recovered(frame, starts)
    return frame.sort_values(keys + ["family", "rate", "tag"], kind="stable")[EVAL_COLUMNS].reset_index(drop=True)


def _recovered(frame: Any, starts: dict[str, str]) -> list[float]:
    """Per row of a variant: (variant - start) / (start at none - start) at the same setting; NaN elsewhere
    (no starting point, the reference itself, or no drop to recover)."""
    value = frame.set_index(["dataset", "split", "task", "model", "tag"])["value"].to_dict() if len(frame) else {}
    out = []
    for r in frame.to_dict(orient="records"):
        start = starts.get(r["model"])
        where = (r["dataset"], r["split"], r["task"], start)
        s, s0 = value.get((*where, r["tag"]), math.nan), value.get((*where, "none"), math.nan)
        drop = s0 - s
        ok = start is not None and r["tag"] != "none" and math.isfinite(drop) and drop != 0
        out.append((r["value"] - s) / drop if ok else math.nan)
    return out


def _num(v: Any) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _points(part: Any) -> dict[str, tuple[list[float], list[float]]]:
    """Per lossy family: (rates, figures oriented so that higher is better), finite points only."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for r in part.to_dict(orient="records"):
        if r["family"] == "none" or not (math.isfinite(r["rate"]) and math.isfinite(r["value"]) and r["rate"] > 0):
            continue
        q = r["value"] if r["higher_is_better"] else -r["value"]
        rates, qs = out.setdefault(r["family"], ([], []))
        rates.append(r["rate"])
        qs.append(q)
    return out


def eval_bd(table: Any, anchor: str | None = None) -> Any:
    """Machine BD-rate of each lossy family against the anchor (default: jpeg, else the most points)."""
    import pandas as pd

    rows = []
    for (ds, sp, task, model), part in table.groupby(["dataset", "split", "task", "model"], sort=True):
        pts = _points(part)
        if not pts:
            continue
        most = sorted(pts, key=lambda f: (-len(pts[f][0]), f))[0]
        chosen = anchor if anchor in pts else ("jpeg" if "jpeg" in pts else most)
        ra, qa = pts[chosen]
        for fam, (rt, qt) in sorted(pts.items()):
            if fam == chosen:
                continue
            row = {"dataset": ds, "split": sp, "task": task, "model": model, "figure": part["figure"].iloc[0],
                   "anchor": chosen, "family": fam, "anchor_points": len(ra), "points": len(rt)}
            reasons = []
            for method in ("cubic", "pchip"):
                res = bd_rate(ra, qa, rt, qt, method)
                row[f"bd_rate_{method}"] = res.value
                if res.reason and res.reason not in reasons:
                    reasons.append(res.reason)
            if min(len(ra), len(rt)) < MIN_POINTS:
                reasons = [f"{min(len(ra), len(rt))} points in the smaller family; at least {MIN_POINTS} needed"]
            row["reason"] = "; ".join(reasons)
            rows.append(row)
    return pd.DataFrame(rows, columns=EVAL_BD_COLUMNS)


def eval_plot(part: Any, path: Path, title: str, anchor: str | None) -> bool:
    """The task figure against rate, one curve per lossy family (through the report's RD plot)."""
    import pandas as pd

    from .plots import rd_plot

    r0 = part.iloc[0]
    unit, figure = r0["rate_unit"], r0["figure"]
    if not unit:
        return False
    modality = "image" if unit == "bpp" else "audio"  # curve_points looks up the modality's RD metric (absent here)
    frame = pd.DataFrame({"family": part["family"], "tag": part["tag"], "modality": modality,
                          f"{unit}_mean": part["rate"], f"{figure}_mean": part["value"]})
    return rd_plot(frame[frame["family"] != "none"], unit, figure, path, title, anchor)


def eval_blocks(table: Any, bd: Any, target: Path) -> tuple[list[Block], list[str]]:
    """Report blocks (tables, plots, BD-rates) for every task with results, and the plot file names."""
    blocks: list[Block] = []
    plots: list[str] = []
    if not len(table):
        return blocks, plots
    blocks.append(Heading("Machine perception (mpq eval)", 2))
    for (ds, sp, task, model), part in table.groupby(["dataset", "split", "task", "model"], sort=True):
        figure, unit = part["figure"].iloc[0], part["rate_unit"].iloc[0] or "rate"
        b = bd[(bd["dataset"] == ds) & (bd["split"] == sp) & (bd["task"] == task) & (bd["model"] == model)] \
            if len(bd) else bd
        anchor = b["anchor"].iloc[0] if len(b) else None
        blocks.append(Heading(f"{ds} / {sp}: {task} with `{model}`", 3))
        rows = [[f"`{r['codec']}`", fmt(r["rate"], 4 if unit == "bpp" else 2), fmt(r["value"], 4),
                 fmt(r["delta"], 4), coverage_cell(r), fmt(r["samples"], thousands=True),
                 fmt(r["errors"], thousands=True)]
                for r in part.to_dict(orient="records")]
        head = ["setting", f"{unit} mean", figure, "change from none", "coverage", "samples", "errors"]
        if part["recovered"].notna().any():  # a fine-tuned variant whose starting point was evaluated too
            head.append("recovered")
            for row, rec in zip(rows, part["recovered"]):
                row.append(fmt(100 * rec, 1, pct=True))
        blocks.append(Table(head, rows, right=set(range(1, len(head)))))
        notes = coverage_notes(part)
        if notes:
            blocks.append(Para(" ".join(notes)))
        name = f"eval-{ds}-{sp}-{task}-{safe_name(model)}.png"
        if eval_plot(part, target / name, f"{ds} / {sp}: {task} {figure} ({model}) against {unit}", anchor):
            blocks.append(Image(target / name, f"{figure} against {unit}, one curve per codec family"))
            plots.append(name)
        if len(b):
            better = "higher" if part["higher_is_better"].iloc[0] else "lower"
            blocks.append(Table(["family", "points / anchor", "BD-rate cubic", "BD-rate pchip", "note"],
                                [[r["family"], f"{r['points']} / {r['anchor_points']}",
                                  fmt(r["bd_rate_cubic"], 2, pct=True), fmt(r["bd_rate_pchip"], 2, pct=True),
                                  r["reason"] or ""]
                                 for r in b.to_dict(orient="records")], right={1, 2, 3}))
            blocks.append(Para(f"Machine BD-rate against {anchor}: percent rate change at equal {figure} "
                               f"({better} is better); negative means fewer bits for the same machine figure. "
                               f"At least {MIN_POINTS} points per family."))
    return blocks, plots


def _covered(r: dict[str, Any]) -> bool | None:
    """True at 100 % coverage, False under it, None for a result that records none (mpq-eval/1)."""
    frac = r.get("coverage_fraction")
    if frac is None or math.isnan(frac):
        return None
    keys, evaluated = r.get("coverage_reference_keys"), r.get("coverage_evaluated")
    return bool(keys == evaluated) if keys is not None and not math.isnan(keys) else bool(frac >= 1.0)


def coverage_cell(r: dict[str, Any]) -> str:
    """The coverage as a percentage, flagged with :data:`FLAG` under 100 %; an en dash where none is recorded."""
    covered = _covered(r)
    if covered is None:
        return "–"
    text = fmt(100.0 * r["coverage_fraction"], 1) + " %"
    return text if covered else f"{text} {FLAG}"


def coverage_notes(part: Any) -> list[str]:
    """Footnotes under a task table: what each flagged set lacks, and what a missing coverage means."""
    notes = []
    records = part.to_dict(orient="records")
    for r in records:
        if _covered(r) is not False:
            continue
        n = {f: int(r[f"coverage_{f}"]) if math.isfinite(r[f"coverage_{f}"]) else 0 for f in COVERAGE_FIELDS[:-1]}
        parts = [f"{n[f]} {f.replace('_', ' ')}" for f in ("failed_transcode", "failed_eval", "excluded") if n[f]]
        paired = fmt(r["value_paired"], 4)
        notes.append(f"{FLAG} `{r['codec']}`: {n['evaluated']} of {n['reference_keys']} reference keys evaluated ok"
                     + (f" ({', '.join(parts)})" if parts else "") + f"; {r['figure']} counts a missing or failed "
                     "sample as the task's failure (excluded where the task has none); over the keys ok both here and "
                     f"in the reference: {paired}.")
    if any(_covered(r) is None for r in records):
        notes.append("Coverage –: the result was written before coverage was recorded (mpq-eval/1); its figure is "
                     "over the samples it evaluated, which may differ from the reference's.")
    return notes


def safe_name(text: str) -> str:
    """A file-name-safe form of a model name or a plot title (runs of other characters become ``_``)."""
    import re

    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")

"""Last in the flow, rate-distortion reports over finished codec sets: ``mpq report OUT``.

Reads only what a transcode published (``index.json`` and ``manifest.parquet`` per setting, and
tar headers for the storage breakdown) and writes, into one folder:

- ``report.md`` and ``report.html`` (self-contained: CSS inline, plots embedded);
- ``summary.csv`` / ``summary.json``: one row per setting, every figure at full precision;
- ``bdrate.csv``: BD-rate and BD-PSNR (BD-SNR for audio: ``bd_quality_*``) of each family against the anchor;
- ``classes.csv``: per setting and class, mean rate and metrics (labelled datasets);
- ``storage.csv``: where the bytes of the shards go (payload, tar headers, padding, JSON, labels);
- ``rd-<dataset>-<split>-<metric>.png``: one rate-distortion curve per codec family;
- ``correlation.csv``, ``auc.csv``, ``corr-*.png``: which distortion metric predicts the task figures of
  ``mpq eval`` (:mod:`.correlate`), where sets have eval files.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..store.storage import is_url, open_store, staging_folder
from .bdrate import METHODS, MIN_POINTS, bd_psnr, bd_rate
from .correlate import correlation_section
from .eval import eval_bd, eval_blocks, eval_table, find_results
from .load import CodecSet, find_sets
from .plots import LABELS, curve_points, rd_plot
from .render import Block, Bullets, Heading, Para, to_html, to_markdown
from .sections import group_blocks
from .tables import (class_summary, extreme_classes, modality_of, primary, storage_breakdown, summarize)

__all__ = ["write_report", "find_sets", "summarize", "class_summary", "storage_breakdown", "bd_rate", "bd_psnr",
           "bd_table", "DEFAULT_REPORT_DIR"]

DEFAULT_REPORT_DIR = "_report"  # under OUT (in the current folder for a remote OUT); apart from dataset folders
DEFAULT_ANCHOR = "jpeg"

METHOD_NOTES = [
    "Statistics are over samples with status `ok`; percentiles (p05, p95) interpolate linearly between "
    "samples (numpy's default).",
    "A setting's point on a curve is (mean of per-sample bpp or kbps, mean of per-sample PSNR or SNR). "
    "The other common average, the PSNR of the mean MSE, is in `summary.csv` as `psnr_mse`; it weights "
    "badly coded images more and is lower or equal.",
    "Settings whose mean quality is infinite (lossless samples, PSNR +inf) are left out of curves and BD-rate.",
    "BD-rate: percent rate change of a family against the anchor family at equal quality, over the quality "
    "interval both curves cover (no extrapolation): log-rate as a function of quality is interpolated, "
    "integrated exactly, and BD-rate = (exp(mean difference) - 1) x 100. `cubic` fits a least-squares cubic "
    "polynomial (Bjontegaard, VCEG-M33, 2001); `pchip` interpolates piecewise cubic Hermite, as in the "
    "JCT-VC/JVET common-test-condition sheets (JCTVC-L1100, JVET-T2010); the two agree on smooth curves, "
    "pchip does not overshoot on uneven ones. Both need at least "
    f"{MIN_POINTS} points per family; below that the result is empty with a reason. BD-PSNR is the mean "
    "quality difference in dB at equal rate, over the shared log-rate interval.",
    "A family is a codec name: every `jpeg:...` setting is on the jpeg curve.",
    "Compression ratio: raw bits over payload bits, summed over samples (raw: 24 bits per pixel, or 16 bits "
    "per channel-sample for audio).",
    "Storage: disk bytes per sample = shard bytes from index.json / ok samples; payload = mean stored payload "
    "file (bits / 8 for images; `container_bytes` for audio, whose bits count the coded stream only); "
    "tar overhead = disk / payload - 1. It counts one 512-byte header per member (payload, `.cls`, "
    "`.json`, ...), padding of every member to 512 bytes, and the end of the archive; `_stats.json`, "
    "manifest and index are outside it (they are in the folder bytes).",
]


BD_COLUMNS = ["dataset", "split", "anchor", "family", "quality", "rate_unit", "anchor_points", "points",
              "bd_rate_cubic", "bd_quality_cubic", "quality_low", "quality_high", "bd_rate_pchip",
              "bd_quality_pchip", "reason"]


def _anchor_for(families: list[str], counts: dict[str, int], anchor: str | None) -> str | None:
    if anchor is not None:
        return anchor if anchor in families else None
    if DEFAULT_ANCHOR in families:
        return DEFAULT_ANCHOR
    return sorted(families, key=lambda f: (-counts[f], f))[0] if families else None


def bd_table(summary: Any, anchor: str | None = None):
    """BD-rate and BD-PSNR, both methods, of every family against the anchor, per dataset/split.

    ``anchor`` None picks jpeg where present, else the family with most points. A named anchor
    missing from every dataset/split is a ConfigError.
    """
    import pandas as pd

    rows: list[dict[str, Any]] = []
    if anchor is not None and anchor not in set(summary["family"]):
        raise ConfigError(f"anchor family {anchor!r} is not among the codec families here: "
                          + ", ".join(sorted(set(summary["family"]))))
    for (ds, sp), part in summary.groupby(["dataset", "split"], sort=True):
        unit = part["rate_unit"].iloc[0]
        metric = primary(part["modality"].iloc[0])
        points = curve_points(part, unit, metric)
        families = sorted(set(part["family"]))
        chosen = _anchor_for(families, {f: len(points.get(f, ((), (), []))[0]) for f in families}, anchor)
        if chosen is None:
            continue
        ra, qa, _ = points.get(chosen, ((), (), []))
        for fam in families:
            if fam == chosen:
                continue
            rt, qt, _ = points.get(fam, ((), (), []))
            row: dict[str, Any] = {"dataset": ds, "split": sp, "anchor": chosen, "family": fam, "quality": metric,
                                   "rate_unit": unit, "anchor_points": len(ra), "points": len(rt)}
            reasons: list[str] = []
            for method in METHODS:
                r = bd_rate(ra, qa, rt, qt, method)
                p = bd_psnr(ra, qa, rt, qt, method)
                row[f"bd_rate_{method}"] = r.value
                row[f"bd_quality_{method}"] = p.value
                if method == "cubic":
                    row["quality_low"], row["quality_high"] = r.low, r.high
                for x in (r.reason, p.reason):
                    if x and x not in reasons:
                        reasons.append(x)
            if len(rt) == 0:  # say why once, in words, rather than "0 usable points"
                reasons = [f"no setting with a finite mean {metric} (lossless, or no ok samples)"]
            elif len(ra) < MIN_POINTS:
                reasons = [f"the anchor {chosen} has {len(ra)} curve points; at least {MIN_POINTS} needed"]
            elif len(rt) < MIN_POINTS:
                reasons = [f"{len(rt)} curve points; at least {MIN_POINTS} needed"] + [
                    x for x in reasons if "usable points" not in x]
            row["reason"] = "; ".join(reasons)
            rows.append(row)
    return pd.DataFrame(rows, columns=BD_COLUMNS)


def _family_warnings(sets: list[CodecSet], summary: Any) -> list[str]:
    """Curves that mix settings differing in more than one parameter, or whose quality is not monotone."""
    out = []
    by_family: dict[tuple[str, str, str], list[CodecSet]] = {}
    for s in sets:
        by_family.setdefault((s.dataset, s.split, s.family), []).append(s)
    for (ds, sp, fam), members in sorted(by_family.items()):
        keys = sorted({k for s in members for k in s.params})
        varying = [k for k in keys if len({json.dumps(s.params.get(k)) for s in members}) > 1]
        if len(varying) > 1:
            out.append(f"{ds}/{sp} {fam}: its settings differ in {', '.join(varying)}; the {fam} curve mixes them.")
    for (ds, sp), part in summary.groupby(["dataset", "split"], sort=True):
        metric = primary(part["modality"].iloc[0])
        for fam, (_r, q, tags) in curve_points(part, part["rate_unit"].iloc[0], metric).items():
            if len(q) > 1 and not all(b > a for a, b in zip(q, q[1:])):
                out.append(f"{ds}/{sp} {fam}: {metric} does not rise with rate along {', '.join(tags)}; "
                           "BD figures for this family are doubtful.")
    return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return _json_safe(value.item())
    return value


def _records(frame: Any) -> list[dict[str, Any]]:
    return [{k: _json_safe(v) for k, v in r.items()} for r in frame.to_dict(orient="records")]


def _errors(sets: list[CodecSet], limit: int = 10) -> list[tuple[str, int, int]]:
    """Distinct error messages: (message, distinct samples, settings affected), most frequent first."""
    seen: dict[str, tuple[set[str], set[str]]] = {}
    for s in sets:
        bad = s.manifest[s.manifest["status"] == "error"]
        for key, err in zip(bad["key"], bad["error"]):
            keys, tags = seen.setdefault(str(err), (set(), set()))
            keys.add(str(key))
            tags.add(s.tag)
    ranked = sorted(((e, len(k), len(t)) for e, (k, t) in seen.items()), key=lambda x: (-x[1], x[0]))
    return ranked[:limit]


def write_report(out_root: str | Path, dataset: str | None = None, split: str | None = None,
                 report_dir: str | Path | None = None, anchor: str | None = None, *,
                 breakdown_shards: int | None = 1) -> Path | str:
    """Write the report for the finished sets under ``out_root`` and return the report folder.

    ``out_root`` is a folder or an fsspec URL (``s3://bucket/prefix``), read through the output's
    store. ``report_dir`` defaults to ``OUT/_report`` for a folder and to ``./_report`` (a local
    folder) for a URL; a URL there writes the report into a store: rendered in a local staging
    folder, each file uploaded whole, ``report.html`` last. ``anchor`` is the BD-rate anchor family
    (default: jpeg where present). ``breakdown_shards`` tar files per setting are read for the
    storage breakdown (None: all, 0: none); everything else comes from index.json and manifest.parquet.
    Plots (``rd-*.png``) of an earlier report in that folder are replaced. Raises ConfigError when
    there is nothing to report or the anchor is unknown.
    """
    root = os.fspath(out_root)
    where = (os.fspath(report_dir) if report_dir is not None
             else DEFAULT_REPORT_DIR if is_url(root) else os.path.join(root, DEFAULT_REPORT_DIR))
    if not is_url(where):
        target = Path(where)
        _render(root, target, dataset, split, anchor, breakdown_shards)
        return target
    store = open_store(where)
    with staging_folder() as folder:
        _render(root, folder, dataset, split, anchor, breakdown_shards)
        for prefix in ("rd-", "eval-", "corr-"):  # plots of a previous report there
            for name in store.names(where, prefix):
                store.remove(store.child(where, name))
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        for name in sorted(files, key=lambda n: (n == "report.html", n == "report.md", n)):
            store.upload(folder / name, store.child(where, name))
    return where


def _render(out_root: str, target: Path, dataset: str | None, split: str | None, anchor: str | None,
            breakdown_shards: int | None) -> None:
    """Every table, plot and document of the report, into the local folder ``target``."""
    sets, incomplete = find_sets(out_root, dataset, split)
    summary = summarize(sets)
    order = {(r["dataset"], r["split"], r["tag"]): i for i, r in enumerate(summary.to_dict(orient="records"))}
    sets.sort(key=lambda s: order[(s.dataset, s.split, s.tag)])  # every table in the summary's order
    bd = bd_table(summary, anchor)
    classes = class_summary(sets)
    extremes = extreme_classes(classes, summary)
    storage = storage_breakdown(sets, None if breakdown_shards is None else max(0, breakdown_shards))
    target.mkdir(parents=True, exist_ok=True)
    for old in [*target.glob("rd-*.png"), *target.glob("eval-*.png")]:  # plots of a previous report
        old.unlink()

    blocks = _intro(out_root, len(sets), dataset, split, incomplete)
    warnings = _family_warnings(sets, summary)
    if warnings:
        blocks.append(Bullets(warnings))
    plot_files: list[str] = []
    for (ds, sp), part in summary.groupby(["dataset", "split"], sort=True):
        plots = _rd_plots(ds, sp, part, bd, target)
        plot_files += [path.name for path, _ in plots]
        group_sets = [s for s in sets if (s.dataset, s.split) == (ds, sp)]
        blocks += group_blocks(ds, sp, part, bd, storage, extremes, _errors(group_sets), plots)
    blocks += correlation_section(sets, target)  # correlation.csv, auc.csv: where sets have eval files
    ev = eval_table(find_results(out_root, dataset, split), summary, sets)  # mpq eval results, when there are any
    ev_bd = eval_bd(ev, anchor)
    ev_blocks, ev_plots = eval_blocks(ev, ev_bd, target)
    blocks += ev_blocks
    plot_files += ev_plots
    blocks += [Heading("Method", 2), Bullets(METHOD_NOTES)]

    tables = {"summary": summary, "bdrate": bd, "classes": classes, "storage": storage}
    if len(ev):
        tables.update(eval=ev, eval_bdrate=ev_bd)
    for name, frame in tables.items():
        frame.to_csv(target / f"{name}.csv", index=False)
    doc = {"out_root": str(out_root), "dataset": dataset, "split": split, "settings": _records(summary),
           "bd_rate": _records(bd), "storage": _records(storage), "warnings": warnings,
           "incomplete": [str(p) for p in incomplete], "plots": plot_files, "method": METHOD_NOTES,
           "eval": _records(ev), "eval_bd_rate": _records(ev_bd)}
    (target / "summary.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    (target / "report.md").write_text(to_markdown(blocks))
    (target / "report.html").write_text(to_html(blocks, "Rate-distortion report: "
                                                + os.path.basename(out_root.rstrip("/"))))


def _intro(out_root: str, settings: int, dataset: str | None, split: str | None,
           incomplete: list[str]) -> list[Block]:
    """The title, what was read, and the sets that are not finished yet."""
    blocks: list[Block] = [Heading("Rate-distortion report", 1),
                           Para(f"{settings} finished codec settings under `{out_root}`"
                                + (f" ({dataset or 'all datasets'}, {split or 'all splits'})"
                                   if dataset or split else "")
                                + ". Machine-readable figures: `summary.csv`, `summary.json`, `bdrate.csv`, "
                                  "`classes.csv`, `storage.csv`.")]
    if incomplete:
        blocks.append(Para("Unfinished sets (no index.json yet; not summarised): "
                           + ", ".join(f"`{_relative(p, out_root)}`" for p in incomplete)))
    return blocks


def _relative(loc: str, root: str) -> str:
    """``loc`` under ``root`` (a folder or URL), as written below it."""
    root = root.rstrip("/" + os.sep)
    return loc[len(root) + 1:] if loc.startswith(root) else loc


def _rd_plots(ds: str, sp: str, part: Any, bd: Any, target: Path) -> list[tuple[Path, str]]:
    """The rate-distortion plots of one dataset/split that could be drawn, with their alt texts."""
    unit = part["rate_unit"].iloc[0]
    b = bd[(bd["dataset"] == ds) & (bd["split"] == sp)] if len(bd) else bd
    group_anchor = b["anchor"].iloc[0] if len(b) else None
    plots = []
    for metric in modality_of(part["modality"].iloc[0]).REPORT.qualities:
        path = target / f"rd-{ds}-{sp}-{metric}.png"
        if rd_plot(part, unit, metric, path, f"{ds} / {sp}: {metric} against {unit}", group_anchor):
            plots.append((path, f"{LABELS.get(metric, metric)} against {LABELS.get(unit, unit)}; "
                                "one curve per codec family, lossless settings left out"))
    return plots

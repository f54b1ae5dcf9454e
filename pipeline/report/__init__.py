"""Rate-distortion reports over finished codec sets: ``mpq report OUT``.

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
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .bdrate import METHODS, MIN_POINTS, bd_psnr, bd_rate
from .correlate import correlation_section
from .eval import eval_bd, eval_blocks, eval_table, find_results
from .load import CodecSet, find_sets
from .plots import LABELS, curve_points, rd_plot
from .render import Block, Bullets, Heading, Image, Para, Table, fmt, to_html, to_markdown
from .tables import (class_summary, extreme_classes, modality_of, primary, storage_breakdown, summarize)

__all__ = ["write_report", "find_sets", "summarize", "class_summary", "storage_breakdown", "bd_rate", "bd_psnr",
           "bd_table", "DEFAULT_REPORT_DIR"]

DEFAULT_REPORT_DIR = "_report"  # under OUT; the underscore keeps it apart from dataset folders
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


def _group_blocks(ds: str, sp: str, part: Any, bd: Any, storage: Any, classes: Any, extremes: dict,
                  errors: list[tuple[str, int, int]], plots: list[tuple[Path, str]]) -> list[Block]:
    unit = part["rate_unit"].iloc[0]
    modality = part["modality"].iloc[0]
    metrics = [m for m in ("psnr", "psnr_mse", "ms_ssim", "snr", "si_sdr", "pesq", "stoi")
               if f"{m}_mean" in part.columns and part[f"{m}_mean"].notna().any()
               or (m == "psnr_mse" and m in part.columns and part[m].notna().any())]
    names = {"psnr": "PSNR dB", "psnr_mse": "PSNR(mean MSE)", "ms_ssim": "MS-SSIM", "snr": "SNR dB",
             "si_sdr": "SI-SDR dB", "pesq": "PESQ", "stoi": "STOI"}
    digits = {"ms_ssim": 4, "stoi": 4, "pesq": 3}
    blocks: list[Block] = [Heading(f"{ds} / {sp} ({modality}, {len(part)} settings)", 2),
                           Heading("Rate and quality", 3)]
    headers = ["setting", "ok", "errors", f"{unit} mean", "median", "p05", "p95", "ratio"] + [names[m] for m in metrics]
    rows = []
    for r in part.to_dict(orient="records"):
        cells = [f"`{r['codec']}`", fmt(r["ok"], thousands=True), fmt(r["errors"], thousands=True)]
        cells += [fmt(r.get(f"{unit}_{s}"), 4 if unit == "bpp" else 2) for s in ("mean", "median", "p05", "p95")]
        cells.append(fmt(r["ratio"], 1))
        for m in metrics:
            v = r.get(m) if m == "psnr_mse" else r.get(f"{m}_mean")
            cells.append(fmt(v, digits.get(m, 2)))
        rows.append(cells)
    blocks.append(Table(headers, rows, right=set(range(1, len(headers)))))
    raw = modality_of(modality).REPORT.raw
    blocks.append(Para(f"{unit}: mean, median and 5th/95th percentiles over ok samples. Quality columns are means "
                       "of per-sample values"
                       + (" (PSNR(mean MSE): from the mean MSE)" if "psnr_mse" in metrics else "")
                       + f". Ratio: raw ({raw}) over payload bits, summed over samples."))
    if plots:
        blocks.append(Heading("Rate-distortion curves", 3))
        blocks += [Image(p, alt) for p, alt in plots]
    if bd is not None and len(bd):
        b = bd[(bd["dataset"] == ds) & (bd["split"] == sp)]
        if len(b):
            anchor = b["anchor"].iloc[0]
            q = b["quality"].iloc[0]
            qn = names.get(q, q).replace(" dB", "")
            blocks.append(Heading(f"BD-rate against {anchor}", 3))
            rows = [[r["family"], f"{r['points']} / {r['anchor_points']}", fmt(r["bd_rate_cubic"], 2, pct=True),
                     fmt(r["bd_rate_pchip"], 2, pct=True), fmt(r["bd_quality_cubic"], 3),
                     fmt(r["bd_quality_pchip"], 3),
                     (f"{fmt(r['quality_low'])} – {fmt(r['quality_high'])}"
                      if math.isfinite(r["quality_low"]) else "–"), r["reason"] or ""]
                    for r in b.to_dict(orient="records")]
            blocks.append(Table(["family", "points / anchor", "BD-rate cubic", "BD-rate pchip", f"BD-{qn} cubic dB",
                                 f"BD-{qn} pchip dB", f"{qn} interval dB", "note"], rows, right={1, 2, 3, 4, 5}))
            blocks.append(Para(f"Negative BD-rate: the family needs fewer bits than {anchor} for the same mean {qn}. "
                               f"Computed from the per-setting means in the table above; at least {MIN_POINTS} "
                               "points per family."))
    blocks.append(Heading("Storage", 3))
    rows = []
    for r in part.to_dict(orient="records"):
        disk_rate = r.get("disk_bpp") if unit == "bpp" else r.get("disk_kbps")
        rows.append([f"`{r['tag']}`", fmt(r["shards"], thousands=True), fmt(r["shard_bytes"] / 1e6, 2),
                     fmt(r["folder_bytes"] / 1e6, 2), fmt(r["disk_bytes_per_sample"], thousands=True),
                     fmt(r["stored_payload_bytes_mean"], thousands=True), fmt(r["tar_overhead_pct"], 1, pct=True),
                     fmt(disk_rate, 4 if unit == "bpp" else 2)])
    blocks.append(Table(["set", "shards", "shards MB", "folder MB", "disk B/sample", "payload B/sample",
                         "tar overhead", f"{unit} on disk"], rows, right=set(range(1, 8))))
    st = storage[(storage["dataset"] == ds) & (storage["split"] == sp)] if len(storage) else storage
    if len(st):
        rows = [[f"`{r['tag']}`", fmt(r["samples"], thousands=True), fmt(r["members_per_sample"], 1),
                 fmt(r["payload_per_sample"], thousands=True), fmt(r["header_per_sample"], thousands=True),
                 fmt(r["payload_pad_per_sample"] + r["json_pad_per_sample"] + r["other_pad_per_sample"],
                     thousands=True),
                 fmt(r["json_per_sample"], thousands=True), fmt(r["other_per_sample"], thousands=True),
                 fmt(r["end_per_sample"], 1), fmt(r["overhead_pct"], 1, pct=True)]
                for r in st.to_dict(orient="records")]
        total = part.set_index("tag")["shards"]
        every = all(r["shards_read"] == total[r["tag"]] for r in st.to_dict(orient="records"))
        k = int(st["shards_read"].max())
        which = "every shard" if every else "the first shard" if k == 1 else f"the first {k} shards"
        blocks.append(Para(f"Tar layout (bytes per sample, from the tar headers of {which} of each set; "
                           "`mpq report --breakdown-shards -1` reads them all):"))
        blocks.append(Table(["set", "samples", "members", "payload", "headers", "padding", "json", "labels etc.",
                             "end of archive", "overhead"], rows, right=set(range(1, 10))))
    if (ds, sp) in extremes:
        top, bottom = extremes[(ds, sp)]
        q = primary(modality)
        blocks.append(Heading("Classes", 3))
        blocks.append(Para(f"Classes ranked by their mean {unit} relative to their setting's mean, averaged over the "
                           f"lossy settings; Δ{q} is the class mean minus the setting mean. All classes and "
                           "settings: `classes.csv`."))
        for title, frame in (("most bits", top), ("fewest bits", bottom)):
            rows = [[str(r["class"]), fmt(r["label"], 0), fmt(r["n"], thousands=True), fmt(r["rel_rate"], 3),
                     fmt(r["quality_delta"], 2)] for r in frame.to_dict(orient="records")]
            blocks.append(Para(f"Classes with the {title}:"))
            blocks.append(Table(["class", "label", "samples", f"relative {unit}", f"Δ{q} dB"], rows,
                                right={1, 2, 3, 4}))
    if errors:
        blocks.append(Heading("Errors", 3))
        blocks.append(Table(["error", "samples", "settings"],
                            [[e[:160], fmt(n, thousands=True), fmt(k, thousands=True)] for e, n, k in errors],
                            right={1, 2}))
    return blocks


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
                 breakdown_shards: int | None = 1) -> Path:
    """Write the report for the finished sets under ``out_root`` and return the report folder.

    ``report_dir`` defaults to ``OUT/_report``. ``anchor`` is the BD-rate anchor family (default: jpeg
    where present). ``breakdown_shards`` tar files per setting are read for the storage breakdown
    (None: all, 0: none); everything else comes from index.json and manifest.parquet.
    Plots (``rd-*.png``) of an earlier report in that folder are replaced. Raises ConfigError when
    there is nothing to report or the anchor is unknown.
    """
    out_root = Path(out_root)
    sets, incomplete = find_sets(out_root, dataset, split)
    summary = summarize(sets)
    order = {(r["dataset"], r["split"], r["tag"]): i for i, r in enumerate(summary.to_dict(orient="records"))}
    sets.sort(key=lambda s: order[(s.dataset, s.split, s.tag)])  # every table in the summary's order
    bd = bd_table(summary, anchor)
    classes = class_summary(sets)
    extremes = extreme_classes(classes, summary)
    storage = storage_breakdown(sets, None if breakdown_shards is None else max(0, breakdown_shards))
    target = Path(report_dir) if report_dir is not None else out_root / DEFAULT_REPORT_DIR
    target.mkdir(parents=True, exist_ok=True)
    for old in [*target.glob("rd-*.png"), *target.glob("eval-*.png")]:  # plots of a previous report
        old.unlink()

    blocks: list[Block] = [Heading("Rate-distortion report", 1),
                           Para(f"{len(sets)} finished codec settings under `{out_root}`"
                                + (f" ({dataset or 'all datasets'}, {split or 'all splits'})"
                                   if dataset or split else "")
                                + ". Machine-readable figures: `summary.csv`, `summary.json`, `bdrate.csv`, "
                                  "`classes.csv`, `storage.csv`.")]
    if incomplete:
        blocks.append(Para("Unfinished sets (no index.json yet; not summarised): "
                           + ", ".join(f"`{p.relative_to(out_root)}`" for p in incomplete)))
    warnings = _family_warnings(sets, summary)
    if warnings:
        blocks.append(Bullets(warnings))
    plot_files: list[str] = []
    for (ds, sp), part in summary.groupby(["dataset", "split"], sort=True):
        modality = part["modality"].iloc[0]
        unit = part["rate_unit"].iloc[0]
        b = bd[(bd["dataset"] == ds) & (bd["split"] == sp)] if len(bd) else bd
        group_anchor = b["anchor"].iloc[0] if len(b) else None
        plots = []
        candidates = modality_of(modality).REPORT.qualities
        for metric in candidates:
            path = target / f"rd-{ds}-{sp}-{metric}.png"
            if rd_plot(part, unit, metric, path, f"{ds} / {sp}: {metric} against {unit}", group_anchor):
                plots.append((path, f"{LABELS.get(metric, metric)} against {LABELS.get(unit, unit)}; "
                                    "one curve per codec family, lossless settings left out"))
                plot_files.append(path.name)
        group_sets = [s for s in sets if (s.dataset, s.split) == (ds, sp)]
        blocks += _group_blocks(ds, sp, part, bd, storage, classes, extremes, _errors(group_sets), plots)
    blocks += correlation_section(sets, target)  # correlation.csv, auc.csv: where sets have eval files
    ev = eval_table(find_results(out_root, dataset, split), summary)  # mpq eval results, when there are any
    ev_bd = eval_bd(ev, anchor)
    ev_blocks, ev_plots = eval_blocks(ev, ev_bd, target)
    blocks += ev_blocks
    plot_files += ev_plots
    blocks += [Heading("Method", 2), Bullets(METHOD_NOTES)]

    summary.to_csv(target / "summary.csv", index=False)
    bd.to_csv(target / "bdrate.csv", index=False)
    classes.to_csv(target / "classes.csv", index=False)
    storage.to_csv(target / "storage.csv", index=False)
    if len(ev):
        ev.to_csv(target / "eval.csv", index=False)
        ev_bd.to_csv(target / "eval_bdrate.csv", index=False)
    doc = {"out_root": str(out_root), "dataset": dataset, "split": split, "settings": _records(summary),
           "bd_rate": _records(bd), "storage": _records(storage), "warnings": warnings,
           "incomplete": [str(p) for p in incomplete], "plots": plot_files, "method": METHOD_NOTES,
           "eval": _records(ev), "eval_bd_rate": _records(ev_bd)}
    (target / "summary.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    (target / "report.md").write_text(to_markdown(blocks))
    (target / "report.html").write_text(to_html(blocks, f"Rate-distortion report: {out_root.name}"))
    return target

"""The report's section for one dataset/split: rate and quality, BD-rate, storage, classes, errors.

Each part is its own function over the summary rows of that group, so a new table is one more
function here and one line in :func:`group_blocks`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .bdrate import MIN_POINTS
from .render import Block, Heading, Image, Para, Table, fmt
from .tables import modality_of, primary

#: the quality columns a group can have, in table order, with their headers
METRIC_NAMES = {"psnr": "PSNR dB", "psnr_mse": "PSNR(mean MSE)", "ms_ssim": "MS-SSIM", "snr": "SNR dB",
                "si_sdr": "SI-SDR dB", "pesq": "PESQ", "stoi": "STOI"}
#: digits after the point where two would hide the differences
METRIC_DIGITS = {"ms_ssim": 4, "stoi": 4, "pesq": 3}


def group_blocks(ds: str, sp: str, part: Any, bd: Any, storage: Any, extremes: dict,
                 errors: list[tuple[str, int, int]], plots: list[tuple[Path, str]]) -> list[Block]:
    """Every section of one dataset/split, in report order (``part``: its rows of the summary)."""
    unit = part["rate_unit"].iloc[0]
    modality = part["modality"].iloc[0]
    blocks: list[Block] = [Heading(f"{ds} / {sp} ({modality}, {len(part)} settings)", 2)]
    blocks += _rate_quality(part, unit, modality)
    if plots:
        blocks.append(Heading("Rate-distortion curves", 3))
        blocks += [Image(p, alt) for p, alt in plots]
    if bd is not None and len(bd):
        blocks += _bd_rate(bd[(bd["dataset"] == ds) & (bd["split"] == sp)])
    blocks += _storage(part, unit)
    st = storage[(storage["dataset"] == ds) & (storage["split"] == sp)] if len(storage) else storage
    if len(st):
        blocks += _tar_layout(part, st)
    if (ds, sp) in extremes:
        blocks += _classes(extremes[(ds, sp)], unit, primary(modality))
    if errors:
        blocks.append(Heading("Errors", 3))
        blocks.append(Table(["error", "samples", "settings"],
                            [[e[:160], fmt(n, thousands=True), fmt(k, thousands=True)] for e, n, k in errors],
                            right={1, 2}))
    return blocks


def _rate_quality(part: Any, unit: str, modality: str) -> list[Block]:
    metrics = [m for m in METRIC_NAMES
               if f"{m}_mean" in part.columns and part[f"{m}_mean"].notna().any()
               or (m == "psnr_mse" and m in part.columns and part[m].notna().any())]
    headers = ["setting", "ok", "errors", f"{unit} mean", "median", "p05", "p95", "ratio"]
    headers += [METRIC_NAMES[m] for m in metrics]
    rows = []
    for r in part.to_dict(orient="records"):
        cells = [f"`{r['codec']}`", fmt(r["ok"], thousands=True), fmt(r["errors"], thousands=True)]
        cells += [fmt(r.get(f"{unit}_{s}"), 4 if unit == "bpp" else 2) for s in ("mean", "median", "p05", "p95")]
        cells.append(fmt(r["ratio"], 1))
        for m in metrics:
            v = r.get(m) if m == "psnr_mse" else r.get(f"{m}_mean")
            cells.append(fmt(v, METRIC_DIGITS.get(m, 2)))
        rows.append(cells)
    raw = modality_of(modality).REPORT.raw
    return [Heading("Rate and quality", 3), Table(headers, rows, right=set(range(1, len(headers)))),
            Para(f"{unit}: mean, median and 5th/95th percentiles over ok samples. Quality columns are means "
                 "of per-sample values"
                 + (" (PSNR(mean MSE): from the mean MSE)" if "psnr_mse" in metrics else "")
                 + f". Ratio: raw ({raw}) over payload bits, summed over samples.")]


def _bd_rate(b: Any) -> list[Block]:
    """BD-rate of each family against the anchor (``b``: the group's rows of the BD table)."""
    if not len(b):
        return []
    anchor = b["anchor"].iloc[0]
    q = b["quality"].iloc[0]
    qn = METRIC_NAMES.get(q, q).replace(" dB", "")
    rows = [[r["family"], f"{r['points']} / {r['anchor_points']}", fmt(r["bd_rate_cubic"], 2, pct=True),
             fmt(r["bd_rate_pchip"], 2, pct=True), fmt(r["bd_quality_cubic"], 3),
             fmt(r["bd_quality_pchip"], 3),
             (f"{fmt(r['quality_low'])} – {fmt(r['quality_high'])}"
              if math.isfinite(r["quality_low"]) else "–"), r["reason"] or ""]
            for r in b.to_dict(orient="records")]
    return [Heading(f"BD-rate against {anchor}", 3),
            Table(["family", "points / anchor", "BD-rate cubic", "BD-rate pchip", f"BD-{qn} cubic dB",
                   f"BD-{qn} pchip dB", f"{qn} interval dB", "note"], rows, right={1, 2, 3, 4, 5}),
            Para(f"Negative BD-rate: the family needs fewer bits than {anchor} for the same mean {qn}. "
                 f"Computed from the per-setting means in the table above; at least {MIN_POINTS} "
                 "points per family.")]


def _storage(part: Any, unit: str) -> list[Block]:
    rows = []
    for r in part.to_dict(orient="records"):
        disk_rate = r.get("disk_bpp") if unit == "bpp" else r.get("disk_kbps")
        rows.append([f"`{r['tag']}`", fmt(r["shards"], thousands=True), fmt(r["shard_bytes"] / 1e6, 2),
                     fmt(r["folder_bytes"] / 1e6, 2), fmt(r["disk_bytes_per_sample"], thousands=True),
                     fmt(r["stored_payload_bytes_mean"], thousands=True), fmt(r["tar_overhead_pct"], 1, pct=True),
                     fmt(disk_rate, 4 if unit == "bpp" else 2)])
    return [Heading("Storage", 3),
            Table(["set", "shards", "shards MB", "folder MB", "disk B/sample", "payload B/sample",
                   "tar overhead", f"{unit} on disk"], rows, right=set(range(1, 8)))]


def _tar_layout(part: Any, st: Any) -> list[Block]:
    """Where the bytes of the tars go, per sample (``st``: the group's rows of the storage breakdown)."""
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
    return [Para(f"Tar layout (bytes per sample, from the tar headers of {which} of each set; "
                 "`mpq report --breakdown-shards -1` reads them all):"),
            Table(["set", "samples", "members", "payload", "headers", "padding", "json", "labels etc.",
                   "end of archive", "overhead"], rows, right=set(range(1, 10)))]


def _classes(extremes: tuple[Any, Any], unit: str, q: str) -> list[Block]:
    """The classes with the most and the fewest bits (``extremes``: top and bottom frames)."""
    top, bottom = extremes
    blocks: list[Block] = [
        Heading("Classes", 3),
        Para(f"Classes ranked by their mean {unit} relative to their setting's mean, averaged over the "
             f"lossy settings; Δ{q} is the class mean minus the setting mean. All classes and "
             "settings: `classes.csv`.")]
    for title, frame in (("most bits", top), ("fewest bits", bottom)):
        rows = [[str(r["class"]), fmt(r["label"], 0), fmt(r["n"], thousands=True), fmt(r["rel_rate"], 3),
                 fmt(r["quality_delta"], 2)] for r in frame.to_dict(orient="records")]
        blocks.append(Para(f"Classes with the {title}:"))
        blocks.append(Table(["class", "label", "samples", f"relative {unit}", f"Δ{q} dB"], rows,
                            right={1, 2, 3, 4}))
    return blocks

"""Rate-distortion plots as PNG: one curve per codec family, mean rate against mean quality per setting.

matplotlib is imported here only and used through its object API (``Figure``, no pyplot), which
renders PNG with Agg without touching the global backend: it runs on a headless cluster node and
does not disturb a notebook that imports the report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LABELS = {"bpp": "bits per pixel (mean over images)", "kbps": "kbit/s (mean over clips)",
          "psnr": "PSNR (dB, mean over images)", "ms_ssim": "MS-SSIM (mean over images)",
          "snr": "SNR (dB, mean over clips)", "si_sdr": "SI-SDR (dB, mean over clips)",
          "pesq": "PESQ (mean over clips)", "stoi": "STOI (mean over clips)"}


def curve_points(rows: Any, rate_unit: str, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Per family: (mean rate, mean metric, tags) sorted by rate.

    Lossless settings (infinite mean PSNR/SNR) are left out of every curve, MS-SSIM's included,
    and so are settings without a value.
    """
    from .tables import primary

    out: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
    rcol, mcol = f"{rate_unit}_mean", f"{metric}_mean"
    if rcol not in rows.columns or mcol not in rows.columns:
        return out
    for family, part in rows.groupby("family", sort=True):
        r = part[rcol].to_numpy(dtype=np.float64)
        q = part[mcol].to_numpy(dtype=np.float64)
        keep = np.isfinite(r) & np.isfinite(q) & (r > 0)
        for modality in set(part["modality"]):
            pcol = f"{primary(modality)}_mean"
            if pcol in part.columns:
                lossless = ~np.isfinite(part[pcol].to_numpy(dtype=np.float64))
                keep &= ~(lossless & (part["modality"] == modality).to_numpy())
        if not keep.any():
            continue
        order = np.argsort(r[keep], kind="stable")
        tags = [t for t, k in zip(part["tag"], keep) if k]
        out[str(family)] = (r[keep][order], q[keep][order], [tags[i] for i in order])
    return out


def rd_plot(rows: Any, rate_unit: str, metric: str, path: Path, title: str, anchor: str | None = None) -> bool:
    """Write one RD plot; returns False (and writes nothing) when no family has a finite point.

    A family keeps its colour and marker across the plots of one dataset/split (by its place among
    all the families of ``rows``).
    """
    points = curve_points(rows, rate_unit, metric)
    slot = {f: i for i, f in enumerate(sorted(set(map(str, rows["family"]))))}
    if not points:
        return False
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.8), dpi=110)
    ax = fig.add_subplot()
    markers = "osD^v<>pXh*"
    for family, (r, q, _tags) in points.items():
        i = slot[family]
        label = f"{family} (anchor)" if family == anchor else family
        ax.plot(r, q, marker=markers[i % len(markers)], color=f"C{i % 10}", linewidth=2.2 if family == anchor else 1.4,
                markersize=5, label=f"{label}, {len(r)} pt" + ("s" if len(r) != 1 else ""))
    ax.set_xlabel(LABELS.get(rate_unit, rate_unit))
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.set_title(title)
    ax.grid(True, alpha=0.35)
    ax.legend(loc="lower right", fontsize=8)
    hi = max(float(r.max()) for r, _, _ in points.values())
    ax.set_xlim(0, hi * 1.05)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return True

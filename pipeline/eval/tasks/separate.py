"""Source separation (MUSDB): BSS Eval v4 per stem, median over 1 s frames, then median over tracks.

The references are the lossless stems stored in each shard; the model separates the coded
mixture. This is the SiSEC 2018 convention (museval's framewise metrics, ``win = hop = 1 s``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from . import register_task
from .base import Task, as_numpy, ok_rows

STEMS = ("drums", "bass", "other", "vocals")
METRICS = ("sdr", "sir", "sar", "isr")


def bss_medians(references: Mapping[str, Any], estimates: Mapping[str, Any], rate: int) -> dict[str, float]:
    """``{stem}_{metric}``: the median over 1 s frames of museval's v4 framewise figures (NaN frames skipped)."""
    import museval
    import numpy as np

    stems = [s for s in STEMS if s in references]
    n = min(min(as_numpy(references[s]).shape[-1] for s in stems), min(as_numpy(estimates[s]).shape[-1] for s in stems))
    ref = np.stack([as_numpy(references[s])[..., :n].T for s in stems]).astype(np.float64)  # (src, n, ch)
    est = np.stack([as_numpy(estimates[s])[..., :n].T for s in stems]).astype(np.float64)
    sdr, isr, sir, sar = museval.evaluate(ref, est, win=int(rate), hop=int(rate), mode="v4")
    out = {}
    for i, s in enumerate(stems):
        for name, values in (("sdr", sdr), ("sir", sir), ("sar", sar), ("isr", isr)):
            v = np.asarray(values[i], dtype=np.float64)
            out[f"{s}_{name}"] = float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")
    return out


@register_task
class Separate(Task):
    name = "separate"
    requires = ("mixture", "stems")
    default_model = "umxhq"
    primary = "sdr"
    definitions = {
        **{f"stems.<stem>.{m}": f"BSS Eval v4 {m.upper()} (museval, dB): per track the median over 1-second "
                                 "frames (win = hop = 1 s, NaN frames skipped), then the median over ok tracks"
           for m in METRICS},
        "sdr": "mean over the four stems of stems.<stem>.sdr (the report's single figure)",
    }

    @classmethod
    def columns(cls) -> list[tuple[str, Any]]:
        import pyarrow as pa

        return [(f"{s}_{m}", pa.float64()) for s in STEMS for m in METRICS]

    def prepare(self, sample: Mapping[str, Any]) -> tuple[Any, dict[str, Any], int]:
        stems = sample.get("stems") or {}
        missing = [s for s in STEMS if s not in stems]
        if missing:
            raise ValueError(f"no lossless reference for {', '.join(missing)}")
        return as_numpy(sample["mixture"]), {s: as_numpy(stems[s]) for s in STEMS}, int(sample["sample_rate"])

    def run(self, model: Any, items: Sequence[tuple[Any, dict[str, Any], int]]) -> list[dict[str, Any]]:
        return [bss_medians(refs, model.separate(mix, rate), rate) for mix, refs, rate in items]

    @classmethod
    def aggregate(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import numpy as np

        good = ok_rows(rows)
        stems: dict[str, dict[str, float | None]] = {}
        for s in STEMS:
            stems[s] = {}
            for m in METRICS:
                v = np.asarray([r[f"{s}_{m}"] for r in good if r.get(f"{s}_{m}") is not None], dtype=np.float64)
                v = v[np.isfinite(v)]
                stems[s][m] = float(np.median(v)) if len(v) else None
        sdrs = [v for v in (stems[s]["sdr"] for s in STEMS) if v is not None]
        return {"stems": stems, "sdr": float(np.mean(sdrs)) if sdrs else None}

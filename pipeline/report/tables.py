"""Per-setting and per-class summaries of finished codec sets, and where the bytes on disk go.

Every figure comes from the manifest (one row per sample, as measured when the payload was
written) and the index (shard sizes); nothing is re-measured from the payloads here, except the
tar layout breakdown, which reads tar headers.

Conventions (also stated in the report):
- statistics are over samples with status ``ok``; percentiles interpolate linearly (numpy's
  default); a lossless sample's PSNR is +inf, so a mean over it is +inf;
- ``psnr_mse`` is the PSNR of the mean MSE, the other common average (it weights bad images more);
- the compression ratio is raw bits over payload bits summed over samples (24 bits per pixel;
  16 bits per channel-sample for audio), so large samples weigh by their size;
- bytes on disk per sample = shard bytes (index.json) / ok samples, against the mean stored payload
  file (bits / 8 for images; ``container_bytes`` for audio, whose ``bits`` count the coded stream
  without its file container): the difference is the tar (headers, padding, label and JSON members).
"""
from __future__ import annotations

import contextlib
import math
import os
import tarfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..metrics import deep
from ..store.storage import OutputStore, open_store
from .load import CodecSet

#: distortion/quality columns, in display order; each is reported where the manifest has it
METRICS = ("psnr", "ms_ssim", *deep.columns("image"), "snr", "si_sdr", "pesq", "stoi", *deep.columns("audio"))
#: columns that name a sample's class, preferred in this order
CLASS_NAME_COLUMNS = ("wnid", "class_name")
PERCENTILES = (5, 95)


def modality_of(name: str) -> Any:
    """The modality module that says how its sets are measured (rate, quality axis, raw size)."""
    from ..modalities import get_modality

    return get_modality(name)


def primary(modality: str) -> str:
    """The quality axis of curves and BD-rate for a modality's sets (``psnr``, ``snr``)."""
    return str(modality_of(modality).REPORT.primary)


def percentile(values: np.ndarray, q: float) -> float:
    """Linear-interpolation percentile (numpy's default) that keeps +inf (lossless PSNR) as +inf."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if len(x) == 0:
        return math.nan
    pos = q / 100.0 * (len(x) - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    frac = pos - lo
    if frac == 0 or x[lo] == x[hi]:
        return float(x[lo])
    if math.isinf(x[hi]):
        return math.inf
    return float(x[lo] + (x[hi] - x[lo]) * frac)


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    v = values[~np.isnan(values)]
    out = {f"{prefix}_mean": float(v.mean()) if len(v) else math.nan,
           f"{prefix}_median": percentile(v, 50)}
    for q in PERCENTILES:
        out[f"{prefix}_p{q:02d}"] = percentile(v, q)
    return out


def _column(frame: Any, name: str) -> np.ndarray:
    return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)


def payload_bits(s: CodecSet, ok: Any) -> np.ndarray:
    """Exact payload bits per ok sample; audio manifests without ``bits`` give them from kbps and duration."""
    if "bits" in ok.columns:
        return _column(ok, "bits")
    if {"kbps", "num_samples", "sample_rate"} <= set(ok.columns):
        return _column(ok, "kbps") * 1000.0 * _column(ok, "num_samples") / _column(ok, "sample_rate")
    raise ValueError(f"{s.folder}: the manifest has neither bits nor kbps with num_samples and sample_rate")


def raw_bits(s: CodecSet, ok: Any) -> np.ndarray:
    """Uncompressed size, as the set's modality counts it (24 bits per RGB pixel, 16 per PCM channel-sample)."""
    return modality_of(s.modality).report_raw_bits(ok)


def metrics_of(frame: Any) -> list[str]:
    """Metric columns that hold at least one value."""
    return [m for m in METRICS if m in frame.columns and frame[m].notna().any()]


def summarize_set(s: CodecSet) -> dict[str, Any]:
    """One row of the summary table: rates, ratio, metrics, errors and storage of one setting."""
    frame = s.manifest
    ok = frame[frame["status"] == "ok"]
    measure = modality_of(s.modality)
    rate, quality = measure.REPORT.rate, measure.REPORT.primary
    shard_bytes = sum(sh.bytes for sh in s.index.shards)
    n_ok = len(ok)
    bits = payload_bits(s, ok) if n_ok else np.zeros(0)
    raw = raw_bits(s, ok) if n_ok else np.zeros(0)
    row: dict[str, Any] = {
        "dataset": s.dataset, "split": s.split, "family": s.family, "codec": s.codec, "tag": s.tag,
        "modality": s.modality, "rate_unit": rate, "listed": len(frame), "ok": n_ok,
        "errors": int((frame["status"] == "error").sum()),
    }
    row.update(_stats(rate, _column(ok, rate) if rate in ok.columns else np.full(n_ok, np.nan)))
    row["ratio"] = float(raw.sum() / bits.sum()) if n_ok and bits.sum() > 0 else math.nan
    for m in metrics_of(ok):
        row.update(_stats(m, _column(ok, m)))
    if quality in ok.columns:
        row["lossless_samples"] = int(np.isposinf(_column(ok, quality)).sum())
    row.update(measure.report_extras(ok))
    # storage: what a loader reads against what the codec produced
    row["shards"] = len(s.index.shards)
    row["shard_bytes"] = shard_bytes
    row["folder_bytes"] = sum(s.store.file_sizes(s.folder).values())
    row["payload_bytes_mean"] = float(bits.mean() / 8.0) if n_ok else math.nan
    stored = (float(_column(ok, "container_bytes").mean()) if n_ok and "container_bytes" in ok.columns
              and ok["container_bytes"].notna().all() else row["payload_bytes_mean"])
    row["stored_payload_bytes_mean"] = stored
    row["disk_bytes_per_sample"] = shard_bytes / n_ok if n_ok else math.nan
    row["tar_overhead_pct"] = (100.0 * (row["disk_bytes_per_sample"] / stored - 1.0)
                               if n_ok and stored > 0 else math.nan)
    if n_ok:
        row.update(measure.report_storage(shard_bytes, ok))
    return row


def summarize(sets: Iterable[CodecSet]):
    """The summary table (a DataFrame), one row per setting, sorted by dataset, split, family, rate."""
    import pandas as pd

    rows = [summarize_set(s) for s in sets]
    frame = pd.DataFrame(rows)
    rate_mean = [r.get(f"{r['rate_unit']}_mean", math.nan) for r in rows]
    frame["_rate"] = rate_mean
    frame = frame.sort_values(["dataset", "split", "family", "_rate", "codec"], kind="stable").drop(columns="_rate")
    return frame.reset_index(drop=True)


def class_column(frame: Any) -> str | None:
    for c in CLASS_NAME_COLUMNS:
        if c in frame.columns:
            return c
    return None


def class_summary(sets: Iterable[CodecSet]):
    """Per setting and class: sample count, mean rate and mean metrics (a DataFrame; empty without labels)."""
    import pandas as pd

    parts = []
    for s in sets:
        ok = s.manifest[s.manifest["status"] == "ok"]
        if "label" not in ok.columns or ok["label"].isna().all():
            continue
        ok = ok[ok["label"].notna()].astype({"label": "int64"})  # nullable ints arrive as floats
        rate = modality_of(s.modality).REPORT.rate
        name = class_column(ok)
        keys = ["label"] + ([name] if name else [])
        cols = [c for c in [rate, *metrics_of(ok)] if c in ok.columns]
        grouped = ok.groupby(keys, sort=True, dropna=False)
        part = grouped[cols].mean().add_suffix("_mean")
        part.insert(0, "n", grouped.size())
        part = part.reset_index().rename(columns={name: "class"} if name else {})
        if "class" not in part.columns:
            part["class"] = part["label"].astype(str)
        for k, v in (("dataset", s.dataset), ("split", s.split), ("family", s.family), ("codec", s.codec),
                     ("tag", s.tag))[::-1]:
            part.insert(0, k, v)
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["dataset", "split", "family", "codec", "tag", "label", "class", "n"])
    return pd.concat(parts, ignore_index=True)


def extreme_classes(classes: Any, summary: Any, count: int = 5):
    """Classes that cost the most and the least bits relative to their setting, averaged over lossy settings.

    relative rate = class mean rate / setting mean rate; quality delta = class mean quality minus the
    setting's mean quality. Lossless settings (infinite quality) are left out. Returns (top, bottom)
    DataFrames per dataset/split, keyed by (dataset, split).
    """

    out: dict[tuple[str, str], tuple[Any, Any]] = {}
    if classes is None or len(classes) == 0:
        return out
    for (ds, sp), part in classes.groupby(["dataset", "split"], sort=True):
        srows = summary[(summary["dataset"] == ds) & (summary["split"] == sp)].set_index("codec")
        unit = srows["rate_unit"].iloc[0]
        modality = srows["modality"].iloc[0]
        q = primary(modality)
        rate_col, q_col = f"{unit}_mean", f"{q}_mean"
        if q_col not in part.columns or q_col not in srows.columns:
            continue
        setting_q = part["codec"].map(srows[q_col])
        lossy = np.isfinite(setting_q.to_numpy(dtype=np.float64)) & np.isfinite(part[q_col].to_numpy(dtype=np.float64))
        p = part[lossy].copy()
        if p.empty or p["class"].nunique() < 2:
            continue
        p["rel_rate"] = p[rate_col] / p["codec"].map(srows[rate_col])
        p["quality_delta"] = p[q_col] - p["codec"].map(srows[q_col])
        agg = p.groupby(["label", "class"], sort=True).agg(
            n=("n", "max"), rel_rate=("rel_rate", "mean"), quality_delta=("quality_delta", "mean"),
            settings=("codec", "nunique")).reset_index()
        agg = agg.sort_values(["rel_rate", "label"], ascending=[False, True], kind="stable")
        k = min(count, len(agg) // 2) or 1
        out[(ds, sp)] = (agg.head(k).reset_index(drop=True),
                         agg.tail(k).iloc[::-1].reset_index(drop=True))
    return out


# --------------------------------------------------------------------------- tar layout


def tar_breakdown(path: str | Path, payload_ext: str | None = None, *,
                  store: OutputStore | None = None) -> dict[str, int]:
    """Where a shard's bytes go, from its tar headers: payload, other members, headers, padding, end.

    The first member of each key is the payload (the writer's order) unless ``payload_ext`` is given.
    All values are bytes; they sum to the file size. A ``.tar.gz`` shard is measured on its
    decompressed tar, and ``compression`` (on disk minus the tar, so negative when gzip saved
    bytes) closes the sum; it is 0 for a plain tar. ``store``: where ``path`` lives (a remote shard is
    read through it with ranged reads); default: a local file.
    """
    loc = os.fspath(path)
    store = store or open_store(os.path.dirname(loc) or ".")
    size = store.size(loc)
    out = {"samples": 0, "members": 0, "header": 0, "payload": 0, "payload_pad": 0, "json": 0, "json_pad": 0,
           "other": 0, "other_pad": 0, "end": 0, "compression": 0, "file": size}
    end = 0
    seen: set[str] = set()
    gz = None
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(store.open(loc))
        if loc.endswith(".tar.gz"):  # read as a stream: headers only, nothing held in memory
            import gzip

            gz = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        tar = stack.enter_context(tarfile.open(fileobj=raw, mode="r:") if gz is None else
                                  tarfile.open(fileobj=gz, mode="r|"))
        for m in tar:
            key, _, ext = m.name.partition(".")
            out["members"] += 1
            out["header"] += m.offset_data - m.offset  # 512, more with a pax extended header
            padded = -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            first = key not in seen
            seen.add(key)
            kind = ("payload" if (ext == payload_ext if payload_ext else first)
                    else "json" if ext == "json" else "other")
            out[kind] += m.size
            out[f"{kind}_pad"] += padded - m.size
            end = m.offset_data + padded
        if gz is not None:  # the decompressed tar's size: what tarfile read plus the rest of the stream
            while gz.read(1 << 20):
                pass
            out["compression"] = size - gz.tell()
            size = gz.tell()
    out["samples"] = len(seen)
    out["end"] = size - end  # end-of-archive zero blocks and padding to the 10 KiB record
    return out


STORAGE_COLUMNS = ["dataset", "split", "codec", "tag", "shards_read", "samples", "members_per_sample", "file_bytes",
                   *(f"{k}_per_sample" for k in ("payload", "payload_pad", "header", "json", "json_pad", "other",
                                                 "other_pad", "end", "compression", "container")),
                   "overhead_pct"]


def storage_breakdown(sets: Iterable[CodecSet], max_shards: int | None = 1):
    """Tar layout per setting, summed over its first ``max_shards`` shards (None: all), per sample."""
    import pandas as pd

    rows = []
    for s in sets if max_shards != 0 else ():
        shards = s.index.shards[: max_shards] if max_shards is not None else s.index.shards
        total: dict[str, int] = {}
        for sh in shards:
            path = s.store.child(s.folder, sh.name)
            if not s.store.is_file(path):
                continue
            for k, v in tar_breakdown(path, store=s.store).items():
                total[k] = total.get(k, 0) + v
        if not total.get("samples"):
            continue
        n = total["samples"]
        row = {"dataset": s.dataset, "split": s.split, "codec": s.codec, "tag": s.tag,
               "shards_read": len(shards), "samples": n, "members_per_sample": total["members"] / n,
               "file_bytes": total["file"]}
        for k in ("payload", "payload_pad", "header", "json", "json_pad", "other", "other_pad", "end", "compression"):
            row[f"{k}_per_sample"] = total[k] / n
        row["container_per_sample"] = (total["file"] - total["payload"]) / n
        row["overhead_pct"] = 100.0 * (total["file"] - total["payload"]) / total["payload"]
        rows.append(row)
    return pd.DataFrame(rows, columns=STORAGE_COLUMNS)

"""``write_report`` on shards the pipeline wrote: every figure recomputed here from the manifests,
index and tars, independently of the report code."""
from __future__ import annotations

import json
import math
import re
import shutil
import tarfile
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

import fixtures as fx
from pipeline.errors import ConfigError
from pipeline.report import write_report
from pipeline.report.tables import percentile

IMAGE_CODECS = ("jpeg:quality=10,30,50,70", "webp:quality=10,30,50,70", "none")


@pytest.fixture(scope="module")
def image_run(imagefolder_classes, tmp_path_factory):
    """Nine settings over the labelled image folder (6 ok images, 1 broken), 3 samples per shard."""
    out = tmp_path_factory.mktemp("report-images")
    result = fx.transcode("imagefolder", imagefolder_classes, out, codecs=IMAGE_CODECS, samples_per_shard=3)
    assert not result.failed and len(result.sets) == 9
    report = write_report(out, anchor="jpeg", report_dir=out / "rep", breakdown_shards=None)
    return out, report


def manifests(out: Path) -> dict[str, pd.DataFrame]:
    """Manifest per canonical spec, read straight from the parquet files."""
    got = {}
    for m in sorted(out.glob("*/*/*/manifest.parquet")):
        frame = pq.read_table(m).to_pandas()
        got[frame["codec"].iloc[0]] = frame
    return got


def md_table(md: str, first_header: str) -> list[list[str]]:
    """Rows of the first Markdown table whose header starts with ``| first_header |``."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split(" | ")])
    return rows


def vceg_cubic(r1, q1, r2, q2) -> float:
    """Bjontegaard's BD-rate written out once more, independently of pipeline.report."""
    p1, p2 = np.polyfit(q1, np.log(r1), 3), np.polyfit(q2, np.log(r2), 3)
    lo, hi = max(min(q1), min(q2)), min(max(q1), max(q2))
    i1, i2 = np.polyint(p1), np.polyint(p2)
    d = (np.polyval(i2, hi) - np.polyval(i2, lo)) - (np.polyval(i1, hi) - np.polyval(i1, lo))
    return (math.exp(d / (hi - lo)) - 1) * 100


def test_summary_figures_equal_a_recomputation_from_the_manifests(image_run):
    out, report = image_run
    summary = pd.read_csv(report / "summary.csv").set_index("codec")
    doc = json.loads((report / "summary.json").read_text())
    by_json = {r["codec"]: r for r in doc["settings"]}
    frames = manifests(out)
    assert set(summary.index) == set(frames) == set(by_json)
    for codec, frame in frames.items():
        row, js = summary.loc[codec], by_json[codec]
        ok = frame[frame["status"] == "ok"]
        bpp, bits = ok["bpp"].to_numpy(float), ok["bits"].to_numpy(float)
        psnr = ok["psnr"].to_numpy(float)
        folder = next(out.glob(f"*/*/{row['tag']}"))
        tar_bytes = sum(p.stat().st_size for p in folder.glob("*.tar"))
        expected = {
            "listed": len(frame), "ok": 6, "errors": 1,
            "bpp_mean": bpp.mean(), "bpp_median": np.median(bpp),
            "bpp_p05": np.percentile(bpp, 5), "bpp_p95": np.percentile(bpp, 95),
            "ratio": 24.0 * (ok["width"] * ok["height"]).sum() / bits.sum(),
            "shard_bytes": tar_bytes, "shards": 3,
            "payload_bytes_mean": bits.mean() / 8, "disk_bytes_per_sample": tar_bytes / 6,
            "tar_overhead_pct": 100 * (tar_bytes / 6 / (bits.mean() / 8) - 1),
            "disk_bpp": 8 * tar_bytes / (ok["width"] * ok["height"]).sum(),
        }
        for key, want in expected.items():
            assert row[key] == pytest.approx(want, rel=1e-9), (codec, key)
            assert js[key] == pytest.approx(want, rel=1e-9), (codec, key)
        if codec == "none":
            assert np.isposinf(row["psnr_mean"]) and row["lossless_samples"] == 6
            assert js["psnr_mean"] is None  # JSON holds no infinity
        else:
            assert row["psnr_mean"] == pytest.approx(psnr.mean(), rel=1e-12)
            assert row["psnr_p05"] == pytest.approx(np.percentile(psnr, 5), rel=1e-12)
            mse = ok["mse"].to_numpy(float).mean()
            assert row["psnr_mse"] == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-12)
            assert row["psnr_mse"] <= row["psnr_mean"]  # Jensen: the mean of PSNRs is never lower
            assert row["lossless_samples"] == 0
        assert row["family"] == codec.partition(":")[0]


def test_markdown_table_shows_the_same_figures(image_run):
    out, report = image_run
    md = (report / "report.md").read_text()
    rows = {r[0].strip("`"): r for r in md_table(md, "setting")}
    frames = manifests(out)
    assert set(rows) == set(frames)
    for codec, frame in frames.items():
        ok = frame[frame["status"] == "ok"]
        bpp = ok["bpp"].to_numpy(float)
        cells = rows[codec]
        assert cells[1:3] == ["6", "1"]
        assert cells[3:7] == [f"{v:.4f}" for v in (bpp.mean(), np.median(bpp), np.percentile(bpp, 5),
                                                   np.percentile(bpp, 95))]
        psnr = ok["psnr"].to_numpy(float).mean()
        assert cells[8] == ("inf" if math.isinf(psnr) else f"{psnr:.2f}")
    # the BD-rate table names the anchor and has a row per other family
    bd_rows = {r[0]: r for r in md_table(md, "family")}
    assert set(bd_rows) == {"webp", "none"} and "BD-rate against jpeg" in md


def test_bd_rate_equals_an_independent_computation(image_run):
    out, report = image_run
    points = {}
    for codec, frame in manifests(out).items():
        ok = frame[frame["status"] == "ok"]
        fam = codec.partition(":")[0]
        points.setdefault(fam, []).append((ok["bpp"].mean(), ok["psnr"].mean()))
    jr, jq = np.array(sorted(points["jpeg"])).T
    wr, wq = np.array(sorted(points["webp"])).T
    bd = pd.read_csv(report / "bdrate.csv").set_index("family")
    assert bd.loc["webp", "anchor"] == "jpeg"
    assert (bd.loc["webp", "points"], bd.loc["webp", "anchor_points"]) == (4, 4)
    assert bd.loc["webp", "bd_rate_cubic"] == pytest.approx(vceg_cubic(jr, jq, wr, wq), abs=1e-9)
    assert np.isfinite(bd.loc["webp", "bd_rate_pchip"])
    # the lossless family has no curve: NaN and a reason, not a number
    assert math.isnan(bd.loc["none", "bd_rate_cubic"]) and "lossless" in bd.loc["none", "reason"]


def test_class_summary_equals_groupby(image_run):
    out, report = image_run
    classes = pd.read_csv(report / "classes.csv")
    for codec, frame in manifests(out).items():
        ok = frame[frame["status"] == "ok"]
        want = ok.groupby("class_name")["bpp"].agg(["mean", "size"])
        got = classes[classes["codec"] == codec].set_index("class")
        assert sorted(got.index) == sorted(want.index) == ["cats", "things"]
        for cls in want.index:
            assert got.loc[cls, "bpp_mean"] == pytest.approx(want.loc[cls, "mean"], rel=1e-12)
            assert got.loc[cls, "n"] == want.loc[cls, "size"]
            assert got.loc[cls, "label"] == ok[ok["class_name"] == cls]["label"].iloc[0]
    md = (report / "report.md").read_text()
    assert "Classes with the most bits" in md and "| cats |" in md and "| things |" in md


def test_storage_breakdown_accounts_for_every_byte(image_run):
    out, report = image_run
    storage = pd.read_csv(report / "storage.csv").set_index("codec")
    for codec, frame in manifests(out).items():
        ok = frame[frame["status"] == "ok"]
        row = storage.loc[codec]
        folder = next(out.glob(f"*/*/{row['tag']}"))
        tars = sorted(folder.glob("*.tar"))
        members = []
        for t in tars:
            with tarfile.open(t) as tf:
                members += tf.getmembers()
        n = row["samples"]
        assert n == len(ok) == 6 and row["shards_read"] == 3
        assert row["file_bytes"] == sum(t.stat().st_size for t in tars)
        assert row["members_per_sample"] * n == len(members) == 3 * 6  # payload, .cls, .json
        assert row["header_per_sample"] * n == 512 * len(members)  # short names: no pax headers
        assert row["payload_per_sample"] * n == ok["bits"].sum() / 8
        parts = ["payload", "payload_pad", "header", "json", "json_pad", "other", "other_pad", "end"]
        assert sum(row[f"{p}_per_sample"] for p in parts) * n == pytest.approx(row["file_bytes"], abs=1e-6)
        labels = [m for m in members if m.name.endswith(".cls")]
        assert row["other_per_sample"] * n == sum(m.size for m in labels)
        assert row["overhead_pct"] == pytest.approx(100 * (row["file_bytes"] * 8 / ok["bits"].sum() - 1))


def test_html_is_self_contained_and_plots_are_drawn(image_run):
    out, report = image_run
    page = (report / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") >= 4
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no network assets"
    assert "<script" not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    doc = json.loads((report / "summary.json").read_text())
    assert len(images) == len(doc["plots"]) >= 1
    assert "rd-imagefolder-all-psnr.png" in doc["plots"]
    import base64

    for name, data in zip(doc["plots"], images):
        assert base64.b64decode(data) == (report / name).read_bytes()
        with Image.open(report / name) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"))
        assert im.format == "PNG" and rgb.shape[0] > 200 and rgb.shape[1] > 300
        colours = rgb.reshape(-1, 3)
        background = np.all(colours == 255, axis=1)
        assert 0.01 < 1 - background.mean() < 0.9, "drawn, but not a solid block"
        saturated = colours[(colours.max(axis=1).astype(int) - colours.min(axis=1)) > 80]
        assert len(np.unique(saturated, axis=0)) >= 2, "coloured curves"


def test_selection_unfinished_sets_and_bad_anchor(image_run, tmp_path):
    out, _ = image_run
    copy = tmp_path / "out"
    for tag in ("jpeg-q10", "jpeg-q30", "jpeg-q50", "jpeg-q70", "webp-q10"):
        shutil.copytree(out / "imagefolder" / "all" / tag, copy / "imagefolder" / "all" / tag)
    (copy / "imagefolder" / "all" / "webp-q10" / "index.json").unlink()  # a run still going
    report = write_report(copy, dataset="imagefolder", split="all")
    md = (report / "report.md").read_text()
    assert report == copy / "_report"
    assert "Unfinished sets" in md and "webp-q10" in md
    assert len(pd.read_csv(report / "summary.csv")) == 4
    bd = pd.read_csv(report / "bdrate.csv")  # only the anchor's family is finished: nothing to compare
    assert len(bd) == 0 and "bd_rate_cubic" in bd.columns
    assert "BD-rate against" not in md
    with pytest.raises(ConfigError, match="no finished codec set"):
        write_report(copy, dataset="imagenet")
    with pytest.raises(ConfigError, match="anchor family 'avif'.*jpeg"):
        write_report(copy, anchor="avif")


def test_percentile_keeps_infinity():
    rng = np.random.default_rng(3)
    x = rng.normal(30, 3, 37)
    for q in (0, 5, 50, 95, 100):
        assert percentile(x, q) == pytest.approx(np.percentile(x, q), rel=1e-15)
    with_inf = np.append(x, [math.inf, math.inf])
    assert percentile(with_inf, 100) == math.inf and percentile(with_inf, 99) == math.inf
    assert percentile(with_inf, 5) == pytest.approx(np.percentile(with_inf, 5))
    assert math.isnan(percentile(np.array([]), 50))


# --------------------------------------------------------------------------- audio


def _wav(path: Path, samples: np.ndarray, rate: int) -> None:
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def test_audio_report_uses_kbps_snr_and_16_bit_raw(tmp_path):
    from pipeline.codecs import codec_names, get_codec

    for name in ("opus", "mp3"):
        if name not in codec_names("audio") or get_codec(name).unavailable():
            pytest.skip(f"audio codec {name} not available")
    rng = np.random.default_rng(11)
    root = tmp_path / "clips"
    for i, (rate, channels) in enumerate([(16000, 1), (44100, 1), (48000, 2)]):
        t = np.arange(int(rate * 0.8)) / rate
        tone = 0.3 * np.sin(2 * np.pi * (220 + 90 * i) * t) + 0.05 * rng.standard_normal(t.size)
        _wav(root / ("a" if i < 2 else "b") / f"clip{i}.wav", np.repeat(tone[:, None], channels, axis=1), rate)
    out = tmp_path / "out"
    result = fx.transcode("audiofolder", fx.Built(root, {}), out, samples_per_shard=2,
                          codecs=("opus:kbps=8,16,32,64", "mp3:kbps=32,64,96,128", "none"))
    assert not result.failed
    report = write_report(out, anchor="mp3")
    summary = pd.read_csv(report / "summary.csv").set_index("codec")
    for codec, frame in manifests(out).items():
        ok = frame[frame["status"] == "ok"]
        row = summary.loc[codec]
        assert row["rate_unit"] == "kbps" and row["modality"] == "audio"
        assert row["kbps_mean"] == pytest.approx(ok["kbps"].mean(), rel=1e-12)
        assert row["kbps_p95"] == pytest.approx(np.percentile(ok["kbps"], 95), rel=1e-12)
        raw = 16.0 * (ok["channels"] * ok["num_samples"]).sum()
        assert row["ratio"] == pytest.approx(raw / ok["bits"].sum(), rel=1e-12)
        assert row["stored_payload_bytes_mean"] == pytest.approx(ok["container_bytes"].mean(), rel=1e-12)
        if codec != "none":
            assert row["snr_mean"] == pytest.approx(ok["snr"].mean(), rel=1e-12)
    doc = json.loads((report / "summary.json").read_text())
    assert "rd-audiofolder-all-snr.png" in doc["plots"] and not any("psnr" in p for p in doc["plots"])
    bd = pd.read_csv(report / "bdrate.csv").set_index("family")
    assert bd.loc["opus", "quality"] == "snr" and bd.loc["opus", "anchor"] == "mp3"
    md = (report / "report.md").read_text()
    assert "BD-SNR cubic dB" in md and "kbps mean" in md

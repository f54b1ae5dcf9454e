"""What `mpq transcode` and `mpq demo` print per setting: mean rate and mean quality beside the counts,
equal to the means recomputed from each set's manifest; the demo sweeps two families so its report
has curves and BD-rates."""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import audio_fixtures as af
from pipeline.cli import DEMO_CODECS, main
from pipeline.codecs.spec import parse_specs

LINE = re.compile(r"^\s+(?P<tag>\S+)\s+ok\s+(?P<ok>\d+)\s+error\s+(?P<err>\d+)\s+shards\s+\d+\s+"
                  r"(?P<rate>\S+) (?P<unit>bpp|kbps)\s+(?P<q>PSNR|SNR)\s+(?P<qv>lossless|-|\S+ dB)")


def summary_lines(text: str) -> dict[str, re.Match]:
    return {m["tag"]: m for m in map(LINE.match, text.splitlines()) if m}


def manifest_means(folder: Path, rate: str, quality: str) -> tuple[float, float]:
    """Means over ok rows, computed here from the parquet file (lossless rows hold +inf)."""
    table = pq.read_table(folder / "manifest.parquet").to_pandas()
    ok = table[table["status"] == "ok"]
    r = ok[rate].to_numpy(dtype=np.float64, na_value=np.nan)
    q = ok[quality].to_numpy(dtype=np.float64, na_value=np.nan)
    return float(np.nanmean(r)), float(np.mean(q[~np.isnan(q)]))


def check(lines: dict[str, re.Match], out: Path, dataset: str, split: str, rate: str, quality: str) -> None:
    for tag, m in lines.items():
        folder = out / dataset / split / tag
        r, q = manifest_means(folder, rate, quality)
        n_ok = int((pq.read_table(folder / "manifest.parquet").column("status").to_numpy() == "ok").sum())
        assert int(m["ok"]) == n_ok and m["unit"] == rate and m["q"] == quality.upper()
        assert float(m["rate"]) == pytest.approx(r, abs=5e-5), tag
        if math.isinf(q):
            assert m["qv"] == "lossless", tag
        else:
            assert float(m["qv"].removesuffix(" dB")) == pytest.approx(q, abs=5e-3), tag


def test_transcode_prints_mean_bpp_and_psnr(imagefolder_classes, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["transcode", "imagefolder", str(imagefolder_classes.root), "--codec", "jpeg:quality=10,50",
            "--codec", "none", "--out", str(out), "--workers", "0", "--samples-per-shard", "3", "--no-progress"]
    assert main(argv) == 0
    lines = summary_lines(capsys.readouterr().out)
    assert sorted(lines) == ["jpeg-q10", "jpeg-q50", "none"]
    assert int(lines["jpeg-q10"]["err"]) == 1  # the truncated JPEG: an error row, not in the means
    check(lines, out, "imagefolder", "all", "bpp", "psnr")
    assert float(lines["jpeg-q10"]["rate"]) < float(lines["jpeg-q50"]["rate"]) < float(lines["none"]["rate"])


def test_transcode_prints_mean_kbps_and_snr(tmp_path, capsys):
    built = af.build_librispeech(tmp_path / "src", seconds=0.5)
    out = tmp_path / "out"
    argv = ["transcode", "librispeech", str(built.root), "--split", "dev-clean", "--codec", "mp3:kbps=32",
            "--codec", "none", "--out", str(out), "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    lines = summary_lines(capsys.readouterr().out)
    assert sorted(lines) == ["mp3-k32", "none"]
    check(lines, out, "librispeech", "dev-clean", "kbps", "snr")


def test_demo_sweeps_two_families_and_reports(tmp_path, capsys, monkeypatch):
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    specs = [s for text in DEMO_CODECS for s in parse_specs(text)]
    families: dict[str, int] = {}
    for s in specs:
        families[s.name] = families.get(s.name, 0) + 1
    assert "none" in families and sum(n >= 4 for n in families.values()) >= 2
    out = tmp_path / "shards"
    assert main(["demo", "--out", str(out), "--workers", "0"]) == 0
    text = capsys.readouterr().out
    lines = summary_lines(text)
    assert sorted(lines) == sorted(s.tag for s in specs)
    check(lines, out, "imagenet", "val", "bpp", "psnr")
    report = out / "_report"
    assert f"report: {report / 'report.html'}" in text and f"mpq report {out} --dataset imagenet --split val" in text
    with open(report / "bdrate.csv", newline="") as fh:
        bd = {r["family"]: r for r in csv.DictReader(fh)}
    for family in set(families) - {"none", "jpeg"}:  # jpeg is the anchor
        assert int(bd[family]["points"]) >= 4 and math.isfinite(float(bd[family]["bd_rate_cubic"])), bd[family]
    assert (report / "rd-imagenet-val-psnr.png").stat().st_size > 1000
    # a rerun finds every shard complete and, with --no-report, only names the command
    (report / "report.html").unlink()
    assert main(["demo", "--out", str(out), "--workers", "0", "--no-report"]) == 0
    text = capsys.readouterr().out
    assert "shards written 0" in text and f"next: mpq report {out} --dataset imagenet --split val" in text
    assert not (report / "report.html").exists()
    check(summary_lines(text), out, "imagenet", "val", "bpp", "psnr")


def test_summary_columns_are_the_modalities_report_axes(monkeypatch):
    """The printed summary averages what each modality declares for its report, nothing kept beside it."""
    from pipeline.modalities import MODALITIES, ReportAxes, get_modality
    from pipeline.run import driver

    for name in MODALITIES:
        axes = get_modality(name).REPORT
        assert driver.summary_columns(name) == (axes.rate, axes.primary)
    image = get_modality("image")
    monkeypatch.setattr(image, "REPORT", ReportAxes(rate="bits", primary="ms_ssim", qualities=("ms_ssim",), raw="x"))
    assert driver.summary_columns("image") == ("bits", "ms_ssim")

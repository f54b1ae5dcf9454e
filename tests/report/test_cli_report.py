"""``mpq report``: a thin layer over write_report; configuration errors are one line and exit 2."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.cli import cli, main


@pytest.fixture()
def shards(tmp_path):
    if "report" not in cli.commands:
        pytest.skip("mpq report is not wired into pipeline/cli.py yet")
    rng = np.random.default_rng(5)
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            base = np.linspace(0, 255, 48 * 64 * 3).reshape(48, 64, 3)
            Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)).save(
                root / cls / f"{i}.png")
    out = tmp_path / "out"
    assert main(["transcode", "imagefolder", str(root), "--codec", "jpeg:quality=10,30,50,70",
                 "--codec", "webp:quality=10,30,50,70", "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    return out


def test_report_command_writes_the_report(shards, tmp_path, capsys):
    target = tmp_path / "rep"
    assert main(["report", str(shards), "--dataset", "imagefolder", "--split", "all", "--out", str(target),
                 "--anchor", "webp"]) == 0
    assert str(target / "report.html") in capsys.readouterr().out
    for name in ("report.md", "report.html", "summary.csv", "summary.json", "bdrate.csv", "classes.csv",
                 "storage.csv", "rd-imagefolder-all-psnr.png"):
        assert (target / name).stat().st_size > 0, name
    bd = pd.read_csv(target / "bdrate.csv")
    assert list(bd["anchor"]) == ["webp"] and list(bd["family"]) == ["jpeg"] and bd["bd_rate_cubic"].notna().all()


@pytest.mark.parametrize("args, message", [
    (["--anchor", "avif"], "anchor family 'avif'"),
    (["--dataset", "imagenet"], "no finished codec set"),
])
def test_report_command_config_errors(shards, args, message, capsys):
    assert main(["report", str(shards), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err

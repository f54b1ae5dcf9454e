"""The CLI: configuration errors stop before any work with one line and exit 2; a run writes shards."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            base = np.linspace(0, 255, 48 * 64 * 3).reshape(48, 64, 3)
            arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("argv, message", [
    (["transcode", "nosuch", ".", "--codec", "jpeg:quality=5"], "unknown dataset"),
    (["transcode", "imagefolder", "{root}", "--codec", "nosuch:quality=5"], "unknown codec"),
    (["transcode", "imagefolder", "{root}", "--codec", "jpeg:quality=500"], "above the maximum"),
    (["transcode", "imagefolder", "{root}", "--codec", "jpeg:qualty=5"], "unknown parameter"),
    (["transcode", "imagefolder", "{empty}", "--codec", "jpeg:quality=5"], "no images"),
    (["transcode", "imagenet", "{root}", "--split", "val", "--codec", "jpeg:quality=5"], "no val/ folder"),
    (["transcode", "imagenet", "{root}", "--split", "test", "--codec", "jpeg:quality=5"], "unknown split"),
])
def test_config_errors_stop_before_work(argv, message, folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    argv = [a.format(root=folder, empty=empty) for a in argv] + ["--out", str(out), "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_transcode_in_process_writes_shards(folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["transcode", "imagefolder", str(folder), "--codec", "jpeg:quality=10,50", "--out", str(out),
            "--workers", "0", "--samples-per-shard", "3", "--no-progress"]
    assert main(argv) == 0
    for tag in ("jpeg-q10", "jpeg-q50"):
        index = json.loads((out / "imagefolder" / "all" / tag / "index.json").read_text())
        assert index["counts"] == {"listed": 4, "ok": 4, "error": 0}
        assert [s["samples"] for s in index["shards"]] == [3, 1]
        with tarfile.open(out / "imagefolder" / "all" / tag / index["shards"][0]["name"]) as tar:
            names = tar.getnames()
        assert names[:3] == ["a_0.jpg", "a_0.cls", "a_0.json"]
    # a rerun does no work
    assert main(argv) == 0
    assert "shards written 0, already complete 4" in capsys.readouterr().out


def test_spec_and_listing_commands(capsys):
    assert main(["spec", "jpeg:quality=5,10"]) == 0
    assert capsys.readouterr().out.splitlines() == ["jpeg:quality=5,subsampling=420\tjpeg-q5",
                                                    "jpeg:quality=10,subsampling=420\tjpeg-q10"]
    assert main(["codecs"]) == 0 and "jpeg" in capsys.readouterr().out
    assert main(["datasets"]) == 0 and "imagenet" in capsys.readouterr().out

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


def test_audio_options_reach_the_shards(tmp_path):
    """--pesq, --stoi and --store-decoded on an audio folder: measured and stored, checked from the outputs."""
    import io

    import pyarrow.parquet as pq
    import soundfile as sf

    import audio_fixtures as afx

    src = tmp_path / "speech"
    src.mkdir()
    afx.write_audio(src / "utt.flac", afx.speech(2.0, seed=3), afx.SPEECH_RATE)
    out = tmp_path / "out"
    argv = ["transcode", "audiofolder", str(src), "--codec", "mp3:kbps=32", "--out", str(out), "--workers", "0",
            "--pesq", "--stoi", "--store-decoded", "--no-progress"]
    assert main(argv) == 0
    folder = out / "audiofolder" / "all" / "mp3-k32"
    row = pq.read_table(folder / "manifest.parquet").to_pylist()[0]
    assert row["status"] == "ok" and 1.0 <= row["pesq"] <= 4.7 and 0.0 <= row["stoi"] <= 1.0
    index = json.loads((folder / "index.json").read_text())
    with tarfile.open(folder / index["shards"][0]["name"]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert list(members) == ["utt.mp3", "utt.decoded.flac", "utt.json"]
    decoded, rate = sf.read(io.BytesIO(members["utt.decoded.flac"]), dtype="int16")
    assert rate == afx.SPEECH_RATE and len(decoded) == row["num_samples"] == 2 * afx.SPEECH_RATE
    record = json.loads(members["utt.json"])
    assert record["pesq"] == pytest.approx(row["pesq"]) and record["stoi"] == pytest.approx(row["stoi"])


def test_transcode_lists_the_source_once(folder, tmp_path, monkeypatch):
    """Validation before the cluster starts and the run share one listing (ImageNet-train is 1.28 M files)."""
    from pipeline.sources.folder import FolderSource

    calls = []
    original = FolderSource.list

    def counting(self):
        calls.append(self.root)
        return original(self)

    monkeypatch.setattr(FolderSource, "list", counting)
    argv = ["transcode", "imagefolder", str(folder), "--codec", "jpeg:quality=10", "--out", str(tmp_path / "o"),
            "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    assert calls == [str(folder)]

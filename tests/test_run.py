"""End to end through pipeline.run.driver.transcode: executors, determinism, resume after damage and after a
real kill, reruns that do no work, and configuration errors caught before any work."""
from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import fixtures as fx
from pipeline import TranscodeConfig
from pipeline.codecs import make_codec
from pipeline.errors import ConfigError
from pipeline.metrics.image import ms_ssim, psnr
from pipeline.run.driver import InlineExecutor, transcode
from pipeline.codecs.spec import parse_spec

TIMINGS = ("encode_s", "decode_s")
CODECS = ("none", "jpeg:quality=50", "webp:quality=40")


def manifest_rows(folder: Path) -> list[dict]:
    """Manifest rows without the timing columns (the only part allowed to differ between runs)."""
    rows = pq.read_table(folder / "manifest.parquet").to_pylist()
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def assert_same_output(a: Path, b: Path) -> None:
    """Two output folders hold byte-identical shards and the same manifest facts and index."""
    tars_a, tars_b = fx.tree_bytes(a), fx.tree_bytes(b)
    assert tars_a and list(tars_a) == list(tars_b)
    for name in tars_a:
        assert tars_a[name] == tars_b[name], f"{name} differs"
    for index in sorted(a.rglob("index.json")):
        twin = b / index.relative_to(a)
        assert json.loads(index.read_text()) == json.loads(twin.read_text())
        assert manifest_rows(index.parent) == manifest_rows(twin.parent)
    assert sorted(p.relative_to(a) for p in a.rglob("*")) == sorted(p.relative_to(b) for p in b.rglob("*"))


def hidden_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob(".*")]


# --------------------------------------------------------------------------- executors and content


def test_inline_and_process_pool_give_identical_output(imagefolder_classes, tmp_path):
    built = imagefolder_classes
    inline = fx.transcode("imagefolder", built, tmp_path / "inline", codecs=CODECS, executor=InlineExecutor())
    fx.verify_run(inline, built)
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pooled = fx.transcode("imagefolder", built, tmp_path / "pool", codecs=CODECS, executor=pool)
    fx.verify_run(pooled, built)
    assert pooled.shards_written == inline.shards_written == 4 * len(CODECS)
    assert_same_output(tmp_path / "inline", tmp_path / "pool")


def test_odd_images_arrive_upright_and_over_white(imagefolder_classes, imagenet_folders, tmp_path):
    """What the codecs saw, checked against pixels computed here: EXIF rotation, alpha, gray, CMYK."""
    def payloads(built, split=None) -> dict[str, np.ndarray]:
        res = fx.transcode("imagefolder" if split is None else "imagenet", built, tmp_path / built.root.name,
                           split=split, codecs=("none",))
        codec = make_codec(parse_spec("none"))
        rows = {r["key"]: r["source"] for r in manifest_rows(Path(res.sets[0].folder))}
        out = {}
        for tar in sorted(Path(res.sets[0].folder).glob("*.tar")):
            for key, members in fx.group_members(fx.read_tar(tar)).items():
                out[rows[key]] = codec.decode(members[0][1])
        return out

    folder = payloads(imagefolder_classes)
    exif8 = fx.pil_raw(imagefolder_classes.samples["things/exif8.jpg"].data)
    assert exif8.shape == (72, 120, 3) and folder["things/exif8.jpg"].shape == (120, 72, 3)
    assert np.array_equal(folder["things/exif8.jpg"], np.rot90(exif8, 1))  # orientation 8: 90 deg anticlockwise
    rgba = fx.pil_raw(imagefolder_classes.samples["cats/cutout_rgba.png"].data)
    assert np.abs(folder["cats/cutout_rgba.png"].astype(int) - fx.over_white(rgba)).max() <= 1
    gray = fx.pil_raw(imagefolder_classes.samples["things/coins.jpeg"].data)
    assert all(np.array_equal(folder["things/coins.jpeg"][..., c], gray) for c in range(3))

    train = imagenet_folders["train"]
    inet = payloads(train, "train")
    name = next(n for n in train.samples if n.endswith("_exif6.JPEG"))
    stored = fx.pil_raw(train.samples[name].data)
    assert np.array_equal(inet[name], np.rot90(stored, -1))  # orientation 6: 90 deg clockwise
    name = next(n for n in train.samples if n.endswith("_png.JPEG"))
    assert np.array_equal(inet[name], fx.photo("china", 80, 120))  # a PNG named .JPEG, losslessly kept
    name = next(n for n in train.samples if n.endswith("_cmyk.JPEG"))
    assert psnr(inet[name], fx.photo("coffee", 96, 128)) > 25  # CMYK not inverted


def test_always_reencode_a_high_quality_jpeg(tmp_path):
    """A JPEG source is decoded and re-encoded, never copied, even at the setting it was made with."""
    root = tmp_path / "src"
    source = fx.jpeg_bytes(fx.photo("astronaut", 160, 160), quality=98)
    (root / "hq.jpg").parent.mkdir()
    (root / "hq.jpg").write_bytes(source)
    built = fx.Built(root, {"hq.jpg": fx.Expected("hq.jpg", source)})
    result = fx.transcode("imagefolder", built, tmp_path / "out", codecs=("jpeg:quality=5", "jpeg:quality=98"))
    fx.verify_run(result, built)
    low, same = (fx.group_members(fx.read_tar(next(Path(s.folder).glob("*.tar"))))["hq"][0][1]
                 for s in result.sets)
    assert low != source and len(low) * 4 < len(source)
    assert same != source


def test_ms_ssim_is_recorded_when_asked(tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    for name in ("astronaut", "coffee"):
        (root / f"{name}.png").write_bytes(fx.png_bytes(fx.photo(name, 176, 200)))
    (root / "small.png").write_bytes(fx.png_bytes(fx.photo("chelsea", 64, 64)))
    built = fx.Built(root, {f"{n}.png": fx.Expected(f"{n}.png", (root / f"{n}.png").read_bytes())
                            for n in ("astronaut", "coffee", "small")})
    result = fx.transcode("imagefolder", built, tmp_path / "out", codecs=("jpeg:quality=20",), ms_ssim=True)
    records = fx.verify_run(result, built)["jpeg:quality=20,subsampling=420"]
    folder = Path(result.sets[0].folder)
    rows = {r["source"]: r for r in manifest_rows(folder)}
    codec = make_codec(parse_spec("jpeg:quality=20"))
    tars = {k: m for t in folder.glob("*.tar") for k, m in fx.group_members(fx.read_tar(t)).items()}
    for name in ("astronaut.png", "coffee.png"):
        decoded = codec.decode(tars[rows[name]["key"]][0][1])
        want = ms_ssim(fx.photo(name.split(".")[0], 176, 200), decoded)
        assert 0.5 < want < 1
        assert records[name]["ms_ssim"] == pytest.approx(want, rel=1e-12) == rows[name]["ms_ssim"]
    assert records["small.png"]["ms_ssim"] is None and rows["small.png"]["ms_ssim"] is None  # too small: undefined
    assert json.loads((folder / "index.json").read_text())["ms_ssim"] is True


# --------------------------------------------------------------------------- determinism


def test_several_codecs_in_one_run_equal_separate_runs(imagenet_kaggle, tmp_path):
    built = imagenet_kaggle["val"]
    together = fx.transcode("imagenet", built, tmp_path / "together", split="val", codecs=CODECS)
    assert together.shards_written == 3 * len(CODECS)
    for codec in CODECS:
        fx.transcode("imagenet", built, tmp_path / "apart", split="val", codecs=(codec,))
    assert_same_output(tmp_path / "together", tmp_path / "apart")


def test_two_runs_give_identical_bytes(ade20k, tmp_path):
    built = ade20k["train"]
    for out in ("one", "two"):
        res = fx.transcode("ade20k", built, tmp_path / out, split="train", codecs=CODECS[1:], samples_per_shard=2)
        fx.verify_run(res, built)
    assert_same_output(tmp_path / "one", tmp_path / "two")


# --------------------------------------------------------------------------- resume


def _stats_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*_stats.json"))


def test_resume_redoes_exactly_the_damaged_shards(imagenet_folders, tmp_path):
    built = imagenet_folders["train"]  # 6 samples, 3 shards, 2 settings
    fx.transcode("imagenet", built, tmp_path / "ref", split="train", codecs=CODECS[:2])
    out = tmp_path / "out"
    first = fx.transcode("imagenet", built, out, split="train", codecs=CODECS[:2])
    assert first.shards_written == 6
    none_dir, jpeg_dir = (Path(s.folder) for s in first.sets)
    # 1. a lost shard (tar and stats), with the temporary file a killed writer leaves behind
    lost = sorted(none_dir.glob("*.tar"))[0]
    lost.unlink()
    Path(str(lost).removesuffix(".tar") + "_stats.json").unlink()
    stale = none_dir / f".{lost.name}.tmp-99999-deadbeef"
    stale.write_bytes(b"half a tar")
    # 2. a tar whose bytes rotted (same size)
    rotten = sorted(jpeg_dir.glob("*.tar"))[1]
    data = bytearray(rotten.read_bytes())
    data[700] ^= 0xFF
    rotten.write_bytes(bytes(data))
    # 3. a stats file cut short
    cut = _stats_files(jpeg_dir)[2]
    cut.write_bytes(cut.read_bytes()[:50])

    again = fx.transcode("imagenet", built, out, split="train", codecs=CODECS[:2])
    assert (again.shards_written, again.shards_cached) == (3, 3)
    assert not stale.exists() and not hidden_files(out)
    fx.verify_run(again, built)
    assert_same_output(tmp_path / "ref", out)


def test_rerun_does_no_work(imagefolder_flat, tmp_path):
    first = fx.transcode("imagefolder", imagefolder_flat, tmp_path, codecs=CODECS[:2], samples_per_shard=3)
    assert (first.shards_written, first.shards_cached) == (6, 0)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.tar")} | {
        p: p.stat().st_mtime_ns for p in _stats_files(tmp_path)}
    before = fx.tree_bytes(tmp_path)
    again = fx.transcode("imagefolder", imagefolder_flat, tmp_path, codecs=CODECS[:2], samples_per_shard=3)
    assert (again.shards_written, again.shards_cached) == (0, 6)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert fx.tree_bytes(tmp_path) == before
    fx.verify_run(again, imagefolder_flat)


def test_changed_plan_redoes_and_smaller_limit_removes_stale_shards(imagefolder_flat, tmp_path):
    full = fx.transcode("imagefolder", imagefolder_flat, tmp_path, codecs=("jpeg:quality=50",))
    assert full.shards_written == 4
    small = fx.transcode("imagefolder", imagefolder_flat, tmp_path, codecs=("jpeg:quality=50",), limit=3)
    # shards 0 keeps its samples; shard 1 now holds one sample instead of two: redone
    assert (small.shards_written, small.shards_cached, small.listed) == (1, 1, 3)
    folder = Path(small.sets[0].folder)
    assert len(list(folder.glob("*.tar"))) == 2 and len(_stats_files(folder)) == 2
    index = json.loads((folder / "index.json").read_text())
    assert index["counts"]["listed"] == 3 and len(manifest_rows(folder)) == 3


KILL_CODEC = "avif:quality=60,speed=0"  # slow enough (about half a second a sample) to be killed mid-run

_KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pipeline import TranscodeConfig
    from pipeline.run.driver import transcode
    config = TranscodeConfig.create("imagefolder", sys.argv[1], [sys.argv[3]], out=sys.argv[2], samples_per_shard=1)
    transcode(config)
""")


def test_resume_after_sigkill(imagefolder_flat, tmp_path):
    """Kill a real run after its first shard; no partial tar ever stands under a final name, and
    rerunning completes it to the same bytes as an uninterrupted run."""
    built = imagefolder_flat
    ref = tmp_path / "ref"
    fx.transcode("imagefolder", built, ref, codecs=(KILL_CODEC,), samples_per_shard=1)
    ref_tars = {p.name: p.read_bytes() for p in ref.rglob("*.tar")}
    assert len(ref_tars) == len(built.samples)

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(built.root), str(out), KILL_CODEC],
                            cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    try:
        while True:
            for tar in out.rglob("*.tar"):  # every tar under a final name is complete, at any moment
                if tar.name not in seen:
                    assert tar.read_bytes() == ref_tars[tar.name], f"partial or wrong {tar.name}"
                    seen.add(tar.name)
            if _stats_files(out):
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the run wrote no shard in time"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    done = _stats_files(out)
    assert 0 < len(done) < len(ref_tars), "the kill must land mid-run"
    for tar in out.rglob("*.tar"):
        assert tar.read_bytes() == ref_tars[tar.name], f"partial or wrong {tar.name} after the kill"
    assert not list(out.rglob("index.json")), "an unfinished set must not look complete"

    again = fx.transcode("imagefolder", built, out, codecs=(KILL_CODEC,), samples_per_shard=1)
    assert again.shards_written == len(ref_tars) - len(done)
    assert again.shards_cached == len(done)
    assert not hidden_files(out)
    assert {p.name: p.read_bytes() for p in out.rglob("*.tar")} == ref_tars
    assert_same_output(ref, out)


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize("case", ["unknown dataset", "unknown codec", "bad value", "empty root", "wrong root",
                                  "missing root", "unknown split", "unknown option", "folder holds another spec"])
def test_config_errors_before_any_work(case, imagefolder_flat, imagenet_folders, tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    root, dataset, codecs, kwargs = imagefolder_flat.root, "imagefolder", ["jpeg:quality=5"], {}
    if case == "unknown dataset":
        dataset = "imagenet21k"
    elif case == "unknown codec":
        codecs = ["jpeg:quality=5", "bpg:quality=5"]
    elif case == "bad value":
        codecs = ["jpeg:quality=5,500"]
    elif case == "empty root":
        root = empty
    elif case == "wrong root":
        dataset = "imagenet"
        kwargs = {"split": "train"}
    elif case == "missing root":
        root = tmp_path / "nowhere"
    elif case == "unknown split":
        dataset, root, kwargs = "imagenet", imagenet_folders["train"].root, {"split": "test"}
    elif case == "unknown option":
        kwargs = {"source_options": {"label_column": "label"}}
    elif case == "folder holds another spec":
        index = out / "imagefolder" / "all" / "jpeg-q5" / "index.json"
        index.parent.mkdir(parents=True)
        index.write_text(json.dumps({"codec": "jpeg:quality=5,subsampling=444"}))
    before = sorted(out.rglob("*")) if out.exists() else None
    with pytest.raises(ConfigError) as err:
        config = TranscodeConfig.create(dataset, root, codecs, out=out, **kwargs)
        transcode(config)
    assert "\n" not in str(err.value)
    assert (sorted(out.rglob("*")) if out.exists() else None) == before, "nothing may be written"


def test_progress_callback(imagefolder_flat, tmp_path):
    calls = []
    fx.transcode("imagefolder", imagefolder_flat, tmp_path, codecs=("jpeg",), samples_per_shard=3,
                 progress=lambda done, total: calls.append((done, total)))
    n = len(imagefolder_flat.samples)
    assert calls[-1] == (n, n) and [c[0] for c in calls] == sorted(c[0] for c in calls)

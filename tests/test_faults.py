"""Faults, each on a real run: corrupt inputs, a codec that raises or crashes its process (in this
process, isolated, and on a Dask worker), a read-only or full output, Ctrl-C, a decompression bomb.

After each, the counts reconcile: every input is exactly one manifest row per setting (ok or
error), every ok row is exactly one sample in exactly one tar, and what was written is the same
bytes as an undisturbed run.
"""
from __future__ import annotations

import errno
import importlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import fixtures as fx
from pipeline import TranscodeConfig
from pipeline.cli import main
from pipeline.errors import ConfigError, OutputError
from pipeline.run.driver import transcode

REPO = Path(__file__).parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "china", "cat", "flower", "coins")


@pytest.fixture
def fault_codecs():
    with importlib.import_module("fault_codecs").registered() as module:
        yield module


def make_source(root: Path, n: int, *, poison: int | None = None, size: tuple[int, int] = (48, 64)) -> Path:
    """``n`` photographs as PNG (``p0.png`` ...); image ``poison`` gets the test codecs' poison shape."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = (17, 23) if i == poison else (size[0] + 8 * (i % 3), size[1])
        arr = fx.photo(PHOTOS[i % len(PHOTOS)], h, w)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        Image.fromarray(arr).save(root / f"p{i}.png")
    return root


def tars(folder: Path) -> dict[str, bytes]:
    return fx.tree_bytes(folder)


def hidden(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def assert_reconciled(result, inputs: int) -> dict[str, dict[str, dict]]:
    """inputs = ok + error rows in every set; each ok key in exactly one tar, once. Returns rows by tag."""
    assert not result.failed, result.failed
    by_tag = {}
    for s in result.sets:
        folder = Path(s.folder)
        index = json.loads((folder / "index.json").read_text())
        rows = pq.read_table(folder / "manifest.parquet").to_pylist()
        keys = [r["key"] for r in rows]
        assert len(keys) == len(set(keys)) == inputs == index["counts"]["listed"]
        ok = {r["key"] for r in rows if r["status"] == "ok"}
        assert index["counts"]["ok"] + index["counts"]["error"] == inputs == s.ok + s.errors
        assert index["counts"]["ok"] == len(ok) == sum(sh["samples"] for sh in index["shards"])
        stored: list[str] = []
        for tar in sorted(folder.glob("*.tar")):
            stored += list(fx.group_members(fx.read_tar(tar)))
        assert sorted(stored) == sorted(ok), "every ok sample exactly once in the shards, nothing else"
        by_tag[s.tag] = {r["key"]: r for r in rows}
    return by_tag


def run(src: Path, out: Path, codecs, **kwargs):
    return transcode(TranscodeConfig.create("imagefolder", src, list(codecs), out=out,
                                            samples_per_shard=kwargs.pop("samples_per_shard", 2)), **kwargs)


# --------------------------------------------------------------------------- inputs


def test_corrupt_input_files_are_error_rows(tmp_path):
    src = make_source(tmp_path / "src", 4)
    good = (src / "p0.png").read_bytes()
    (src / "q-truncated.png").write_bytes(good[: len(good) // 2])
    (src / "q-garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (src / "q-empty.webp").write_bytes(b"")
    res = run(src, tmp_path / "out", ["jpeg:quality=30", "webp:quality=30"])
    rows = assert_reconciled(res, 7)
    for tag in ("jpeg-q30", "webp-q30"):
        errors = {k: r["error"] for k, r in rows[tag].items() if r["status"] == "error"}
        assert sorted(errors) == ["q-empty", "q-garbage", "q-truncated"]
        assert all(e.startswith("cannot decode image") for e in errors.values()), errors


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height zero pixels: tens of kilobytes on disk, hundreds of
    megapixels decoded (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes((width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_and_recorded(tmp_path):
    from pipeline.media.image import MAX_PIXELS

    src = make_source(tmp_path / "src", 2)
    data = bomb_png(20_000, 20_000)
    assert len(data) < 100_000 and 20_000 * 20_000 > MAX_PIXELS
    (src / "bomb.png").write_bytes(data)
    start = time.perf_counter()
    res = run(src, tmp_path / "out", ["jpeg:quality=30"])
    assert time.perf_counter() - start < 20, "refused from the header, not after decoding 400 M pixels"
    rows = assert_reconciled(res, 3)["jpeg-q30"]
    assert rows["bomb"]["status"] == "error"
    # refused by our limit or, above twice Pillow's own (the same number by default), by Pillow's check
    assert "exceeds the pixel limit" in rows["bomb"]["error"] and "400000000 pixels" in rows["bomb"]["error"]
    assert rows["p0"]["status"] == rows["p1"]["status"] == "ok"


# --------------------------------------------------------------------------- codecs that fail


def test_codec_raising_on_one_sample(tmp_path, fault_codecs):
    src = make_source(tmp_path / "src", 5, poison=2)
    res = run(src, tmp_path / "out", ["test-raise-png", "jpeg:quality=30"])
    rows = assert_reconciled(res, 5)
    assert rows["test-raise-png"]["p2"]["error"] == "RuntimeError: test codec refuses the poison sample"
    assert [k for k, r in rows["test-raise-png"].items() if r["status"] == "error"] == ["p2"]
    assert all(r["status"] == "ok" for r in rows["jpeg-q30"].values()), "the other setting still gets it"


def _check_crash_output(src: Path, out: Path, res, codec: str, why: str, reference: Path) -> None:
    rows = assert_reconciled(res, 5)
    bad = {k: r["error"] for k, r in rows[codec].items() if r["status"] == "error"}
    assert list(bad) == ["p2"] and "crashed its process" in bad["p2"] and why in bad["p2"], bad
    assert all(r["status"] == "ok" for r in rows["jpeg-q30"].values())
    # same bytes as a run without the crash: the jpeg set, and the crash codec's set minus the poison
    assert {k: v for k, v in tars(out).items() if "jpeg" in k} == tars(reference)
    for tar in sorted((out / "imagefolder" / "all" / codec).glob("*.tar")):
        for key, members in fx.group_members(fx.read_tar(tar)).items():
            stored = np.asarray(Image.open(io.BytesIO(dict(members)["png"])).convert("RGB"))
            source = np.asarray(Image.open(src / f"{key}.png").convert("RGB"))
            assert np.array_equal(stored, source), key  # lossless test codec: decodes to the source
    assert not hidden(out), "no temporary file or attempt marker left"


@pytest.mark.parametrize("codec,why", [("test-crash-png", "exit code 86"), ("test-segv-png", "SIGSEGV")])
def test_codec_crashing_its_process_isolated(tmp_path, fault_codecs, codec, why):
    """--isolate: the shard is encoded in a child; the child's death costs one sample."""
    src = make_source(tmp_path / "src", 5, poison=2)
    reference = tmp_path / "ref"
    run(src, reference, ["jpeg:quality=30"])
    res = run(src, tmp_path / "out", [codec, "jpeg:quality=30"], isolate=True)
    _check_crash_output(src, tmp_path / "out", res, codec, why, reference)


_CRASH_SCRIPT = textwrap.dedent("""
    import sys
    import fault_codecs
    from pipeline import TranscodeConfig
    from pipeline.run.driver import transcode
    config = TranscodeConfig.create("imagefolder", sys.argv[1], ["test-crash-png", "jpeg:quality=30"],
                                    out=sys.argv[2], samples_per_shard=2)
    res = transcode(config)
    print("done", [(s.tag, s.ok, s.errors) for s in res.sets])
""")


def test_codec_crash_in_process_then_rerun_isolates_it(tmp_path):
    """Without --isolate, in this process: the crash ends the run (nothing partial is left); the
    rerun finds the crashed attempt's marker, isolates that shard, and completes."""
    src = make_source(tmp_path / "src", 5, poison=2)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    first = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(src), str(out)], env=env,
                           capture_output=True, timeout=120, check=False)
    assert first.returncode == 86, first.stderr.decode()
    assert not list(out.rglob("index.json"))
    markers = [p.name for p in out.rglob(".*")]
    assert any(m.endswith("-000001.attempt") for m in markers), markers  # the poison's shard (samples 2, 3)
    second = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(src), str(out)], env=env,
                            capture_output=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr.decode()
    assert "('test-crash-png', 4, 1)" in second.stdout.decode()
    with importlib.import_module("fault_codecs").registered():
        again = run(src, out, ["test-crash-png", "jpeg:quality=30"])  # all cached: the same published result
        reference = tmp_path / "ref"
        run(src, reference, ["jpeg:quality=30"])
        assert again.shards_written == 0
        _check_crash_output(src, out, again, "test-crash-png", "exit code 86", reference)


def test_codec_crash_on_a_dask_worker(tmp_path, fault_codecs):
    """The segfault kills the worker; Dask retries the task, which encodes isolated and records
    the poison sample as an error row; no shard fails and nothing is lost or duplicated."""
    from pipeline.run.cluster import dask_executor

    src = make_source(tmp_path / "src", 5, poison=2)
    reference = tmp_path / "ref"
    run(src, reference, ["jpeg:quality=30"])
    with dask_executor(2, dashboard=":0", log=None) as ex:
        res = run(src, tmp_path / "out", ["test-segv-png", "jpeg:quality=30"], executor=ex)
    _check_crash_output(src, tmp_path / "out", res, "test-segv-png", "SIGSEGV", reference)


# --------------------------------------------------------------------------- output that cannot be written


def test_output_path_is_a_file(tmp_path, capsys):
    src = make_source(tmp_path / "src", 2)
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write .*out/imagefolder/all/jpeg-q30: Not a directory"):
        run(src, blocker, ["jpeg:quality=30"])
    rc = main(["transcode", "imagefolder", str(src), "--codec", "jpeg:quality=30", "--out", str(blocker),
               "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "Not a directory" in err[0] and err[0].startswith("error: ")
    assert blocker.read_text() == "not a folder"


def test_disk_full_mid_run_injected(tmp_path, monkeypatch):
    """ENOSPC from the fifth tar member on (2 samples of 2 members each fit; injected where the tar
    writer writes): the run stops with OutputError, the complete shard stays, nothing partial or
    temporary is left, and a rerun completes."""
    import tarfile

    src = make_source(tmp_path / "src", 6)
    reference = tmp_path / "ref"
    run(src, reference, ["jpeg:quality=30"])
    real_addfile, calls = tarfile.TarFile.addfile, []

    def addfile(self, tarinfo, fileobj=None):
        calls.append(tarinfo.name)
        if len(calls) >= 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_addfile(self, tarinfo, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="cannot write .*jpeg-q30: No space left on device"):
        run(src, out, ["jpeg:quality=30"])
    assert len(calls) == 5, "an in-process run stops submitting after the first unwritable shard"
    assert list(tars(out)) == ["imagefolder/all/jpeg-q30/imagefolder-all-jpeg-q30-000000.tar"]
    assert tars(out)["imagefolder/all/jpeg-q30/imagefolder-all-jpeg-q30-000000.tar"] == \
        tars(reference)["imagefolder/all/jpeg-q30/imagefolder-all-jpeg-q30-000000.tar"]
    assert not hidden(out) and not list(out.rglob("index.json"))
    monkeypatch.setattr(tarfile.TarFile, "addfile", real_addfile)
    again = run(src, out, ["jpeg:quality=30"])
    assert (again.shards_written, again.shards_cached) == (2, 1)
    assert tars(out) == tars(reference)


def _mount_namespaces() -> bool:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /mnt"],
                           capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


_FS_SCRIPT = textwrap.dedent("""
    set -u
    MPQ="$1"; SRC="$2"; W="$3"
    run() { $MPQ transcode imagefolder "$SRC" --codec jpeg:quality=95 --samples-per-shard 1 --workers 0 \\
            --no-progress --out "$1"; }
    mount -t tmpfs -o ro,size=1m tmpfs "$W/ro"
    run "$W/ro" > "$W/ro.out" 2> "$W/ro.err"; echo $? > "$W/ro.rc"
    mount -t tmpfs -o size=48k tmpfs "$W/full"
    run "$W/full" > "$W/full.out" 2> "$W/full.err"; echo $? > "$W/full.rc"
    cp -a "$W/full/." "$W/after-full/"
    mount -o remount,size=16m "$W/full"
    run "$W/full" > "$W/rerun.out" 2> "$W/rerun.err"; echo $? > "$W/rerun.rc"
    cp -a "$W/full/." "$W/after-rerun/"
""")


@pytest.mark.skipif(not _mount_namespaces(), reason="needs root and mount namespaces (unshare -m) for a real tmpfs")
def test_read_only_and_full_file_systems(tmp_path):
    """Real file systems, not simulated: a read-only tmpfs, and a 48 KiB tmpfs that fills up after
    two shards, each mounted in a private mount namespace (unshare -m) for `mpq transcode`."""
    src = make_source(tmp_path / "src", 6, size=(56, 72))
    reference = tmp_path / "ref"
    transcode(TranscodeConfig.create("imagefolder", src, ["jpeg:quality=95"], out=reference, samples_per_shard=1))
    w = tmp_path / "w"
    for d in ("ro", "full", "after-full", "after-rerun"):
        (w / d).mkdir(parents=True)
    mpq = f"{sys.executable} -m pipeline"
    subprocess.run(["unshare", "-m", "sh", "-c", _FS_SCRIPT, "sh", mpq, str(src), str(w)], check=True, timeout=300,
                   cwd=REPO)
    def read(name: str) -> str:
        return (w / name).read_text().strip()

    assert read("ro.rc") == "1" and read("ro.out") == ""
    assert len(read("ro.err").splitlines()) == 1
    assert read("ro.err").startswith(f"error: cannot write {w}/ro/imagefolder/all/jpeg-q95: Read-only file system")

    assert read("full.rc") == "1", read("full.err")
    assert len(read("full.err").splitlines()) == 1 and "No space left on device" in read("full.err")
    left = tars(w / "after-full")
    ref = tars(reference)
    assert 0 < len(left) < len(ref), "the file system fills up mid-run"
    assert all(left[name] == ref[name] for name in left), "a tar under a final name is complete"
    assert not hidden(w / "after-full") and not list((w / "after-full").rglob("index.json"))

    assert read("rerun.rc") == "0", read("rerun.err")
    assert tars(w / "after-rerun") == ref
    assert not hidden(w / "after-rerun")


# --------------------------------------------------------------------------- Ctrl-C

SLOW = "avif:quality=60,speed=0"  # a few tenths of a second per sample here


@pytest.mark.parametrize("workers", [0, pytest.param(2, id="dask")])
def test_ctrl_c_stops_cleanly_and_resumes(tmp_path, workers):
    src = make_source(tmp_path / "src", 8, size=(96, 128))
    reference = tmp_path / "ref"
    transcode(TranscodeConfig.create("imagefolder", src, [SLOW], out=reference, samples_per_shard=1))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "transcode", "imagefolder", str(src), "--codec", SLOW, "--out", str(out),
           "--samples-per-shard", "1", "--workers", str(workers), "--no-progress"]
    if workers:
        cmd += ["--cluster", str(_local_yaml(tmp_path, workers))]
    # a terminal's Ctrl-C goes to the whole foreground process group: so do we
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while not list(out.rglob("*_stats.json")):
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "no shard was published in time"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert "interrupted; rerun the same command to resume" in err.decode()
    done, ref = tars(out), tars(reference)
    assert 0 < len(done) < len(ref), "the interrupt must land mid-run"
    assert all(done[name] == ref[name] for name in done), "no partial tar under a final name"
    assert not list(out.rglob("index.json"))

    published = len(list(out.rglob("*_stats.json")))
    again = transcode(TranscodeConfig.create("imagefolder", src, [SLOW], out=out, samples_per_shard=1))
    assert (again.shards_cached, again.shards_written) == (published, len(ref) - published)
    assert tars(out) == ref
    assert not hidden(out)
    assert_reconciled(again, 8)


def _local_yaml(tmp_path: Path, workers: int) -> Path:
    path = tmp_path / "local.yaml"
    path.write_text(f"kind: local\nworkers: {workers}\ndashboard: ':0'\n")
    return path


def test_attempt_marker_next_to_a_complete_shard_is_cleared(tmp_path):
    """A worker killed after publishing its shards (before removing its marker): the rerun finds
    every shard complete, does no work, and removes the marker."""
    src = make_source(tmp_path / "src", 4)
    out = tmp_path / "out"
    first = run(src, out, ["jpeg:quality=30", "webp:quality=30"])
    marker = out / "imagefolder" / "all" / "webp-q30" / ".imagefolder-all-webp-q30-000001.attempt"
    marker.write_text("{}\n")
    again = run(src, out, ["jpeg:quality=30", "webp:quality=30"])
    assert (again.shards_written, again.shards_cached) == (0, first.shards_written)
    assert not hidden(out)


def test_temporaries_of_an_attempt_killed_mid_write_are_cleared_by_the_next(tmp_path):
    """A worker SIGKILLed while writing its attempt marker, its shard or its stats leaves their temporary
    files (the run-level sweep ran before it started); the task's next attempt removes them."""
    from pipeline.run.driver import plan
    from pipeline.run.task import run_shard

    src = make_source(tmp_path / "src", 4)
    out = tmp_path / "out"
    config = TranscodeConfig.create("imagefolder", src, ["jpeg:quality=30"], out=out, samples_per_shard=2)
    _, tasks = plan(config)
    folder = out / "imagefolder" / "all" / "jpeg-q30"
    folder.mkdir(parents=True)
    name = "imagefolder-all-jpeg-q30-000001"
    left = [folder / f"..{name}.attempt.tmp-4242-d9c2310a", folder / f".{name}.tar.tmp-4242-0000aaaa",
            folder / f".{name}_stats.json.tmp-4242-0000bbbb"]
    other = folder / "..imagefolder-all-jpeg-q30-000000.attempt.tmp-4242-d9c2310a"  # another task's: its own
    for p in [*left, other]:
        p.write_bytes(b"partial")
    run_shard(tasks[1])
    assert [p.exists() for p in left] == [False, False, False]
    assert other.exists() and (folder / f"{name}.tar").is_file()


@pytest.mark.parametrize("codecs, unit, per_sample", [(["test-where-png", "jpeg:quality=30"], "sample", 1),
                                                      (["test-gpu-png", "jpeg:quality=30,50"], "encode", 3)])
def test_progress_counts_each_sample_once(tmp_path, fault_codecs, monkeypatch, codecs, unit, per_sample):
    """Learned (GPU) and other codecs run as separate tasks over the same samples: progress counts encodes."""
    from pipeline.run.driver import plan, progress_units

    monkeypatch.setenv(fault_codecs.SLOW_ENV, "0")
    src = make_source(tmp_path / "src", 5)
    config = TranscodeConfig.create("imagefolder", src, codecs, out=tmp_path / "out", samples_per_shard=2)
    _, tasks = plan(config)
    assert progress_units(tasks, len(config.codecs))[0] == unit
    calls: list[tuple[int, int]] = []
    transcode(config, progress=lambda done, total: calls.append((done, total)))
    assert {total for _, total in calls} == {5 * per_sample}
    assert [done for done, _ in calls] == sorted(done for done, _ in calls) and calls[-1][0] == 5 * per_sample


def test_max_pixels_sets_the_source_limit(tmp_path):
    """``--max-pixels``: larger sources become error rows, the limit is recorded, smaller ones are coded."""
    import json

    src = make_source(tmp_path / "src", 3)  # 48x64, 56x64 and 64x64 pixels
    out = tmp_path / "out"
    args = ["transcode", "imagefolder", str(src), "--codec", "jpeg:quality=30", "--out", str(out),
            "--workers", "0", "--no-progress", "--max-pixels"]
    assert main([*args, str(56 * 64)]) == 0  # error rows are results, not a failed run
    rows = {r["key"]: r for r in pq.read_table(out / "imagefolder" / "all" / "jpeg-q30" / "manifest.parquet")
            .to_pylist()}
    assert rows["p0"]["status"] == rows["p1"]["status"] == "ok"
    assert rows["p2"]["status"] == "error" and "64x64 = 4096 pixels exceeds the pixel limit 3584" in rows["p2"]["error"]
    index = json.loads((out / "imagefolder" / "all" / "jpeg-q30" / "index.json").read_text())
    assert index["max_pixels"] == 56 * 64
    with pytest.raises(ConfigError, match="--max-pixels"):
        TranscodeConfig.create("imagefolder", src, ["jpeg:quality=30"], max_pixels=0)
    assert main([*args, "0"]) == 2

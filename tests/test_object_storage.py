"""Output to object storage through fsspec, against a real S3-compatible server (moto in server
mode) that this module starts on 127.0.0.1 and stops at the end.

What is checked: the same bytes and names as a local run (also from Dask workers, which get the
credentials from their environment); nothing partial, temporary or internal ever stands in the
bucket, also while a run is in flight and after it is killed; reruns verify and skip what is
there and redo what was damaged; an unwritable location is one clear error.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import fixtures as fx
from pipeline import TranscodeConfig
from pipeline.cli import main
from pipeline.errors import OutputError
from pipeline.run.driver import transcode

pytest.importorskip("s3fs")
pytest.importorskip("moto")

CODECS = ("jpeg:quality=40", "webp:quality=30")
BUCKET = "mpq-test"
REPO = Path(__file__).parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback, the environment pointing at it (inherited by workers), one bucket."""
    import s3fs

    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start (exit {proc.poll()})")
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "MPQ_STAGING": str(tmp_path_factory.mktemp("staging"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()


def bucket_files(fs, prefix: str) -> dict[str, bytes]:
    """Key relative to ``prefix`` -> bytes, for every object under it."""
    fs.invalidate_cache()
    root = f"{BUCKET}/{prefix}"
    out = {}
    try:
        keys = sorted(fs.find(root))
    except FileNotFoundError:
        return out
    for key in keys:
        try:
            out[key[len(root) + 1:]] = fs.cat_file(key)
        except FileNotFoundError:  # deleted between listing and reading (the write probe)
            pass
    return out


def local_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def without_timings(manifest: bytes) -> list[dict]:
    import io

    import pyarrow.parquet as pq

    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in pq.read_table(io.BytesIO(manifest)).to_pylist()]


def assert_same_as_local(remote: dict[str, bytes], local: dict[str, bytes]) -> None:
    assert sorted(remote) == sorted(local), "same object names as the local files, nothing else"
    for name, data in local.items():
        if name.endswith("manifest.parquet"):
            assert without_timings(remote[name]) == without_timings(data)
        elif name.endswith("_stats.json"):
            a, b = json.loads(remote[name]), json.loads(data)
            for s in (a, b):
                for r in s["rows"]:
                    r.pop("encode_s", None), r.pop("decode_s", None)
            assert a == b, name
        else:  # tars and index.json: byte for byte
            assert remote[name] == data, name


def test_s3_output_same_as_local_and_rerun_skips(s3, imagefolder_flat, tmp_path):
    built = imagefolder_flat
    local = fx.transcode("imagefolder", built, tmp_path / "local", codecs=CODECS)
    url = f"s3://{BUCKET}/run1"
    first = fx.transcode("imagefolder", built, url, codecs=CODECS)
    assert [s.folder for s in first.sets] == [f"{url}/imagefolder/all/{t}" for t in ("jpeg-q40", "webp-q30")]
    assert [(s.ok, s.errors) for s in first.sets] == [(s.ok, s.errors) for s in local.sets]
    assert sum(s.ok + s.errors for s in first.sets) == 2 * len(built.samples)
    assert_same_as_local(bucket_files(s3, "run1"), local_files(tmp_path / "local"))
    assert not os.listdir(os.environ["MPQ_STAGING"]), "staging files are removed after upload"

    again = fx.transcode("imagefolder", built, url, codecs=CODECS)
    assert (again.shards_written, again.shards_cached) == (0, first.shards_written)

    # a damaged object (same size, other bytes) is found by its SHA-256 and redone
    name = "imagefolder/all/jpeg-q40/imagefolder-all-jpeg-q40-000001.tar"
    good = s3.cat_file(f"{BUCKET}/run1/{name}")
    s3.pipe_file(f"{BUCKET}/run1/{name}", bytes(len(good)))
    fixed = fx.transcode("imagefolder", built, url, codecs=CODECS)
    assert (fixed.shards_written, fixed.shards_cached) == (1, first.shards_written - 1)
    assert_same_as_local(bucket_files(s3, "run1"), local_files(tmp_path / "local"))


def test_s3_from_dask_workers(s3, imagefolder_classes, tmp_path):
    """Workers in other processes write to the bucket with the credentials of their environment."""
    from pipeline.run.cluster import dask_executor

    built = imagefolder_classes
    local = fx.transcode("imagefolder", built, tmp_path / "local", codecs=CODECS)
    with dask_executor(2, dashboard=":0", log=None) as ex:
        res = fx.transcode("imagefolder", built, f"s3://{BUCKET}/dask", codecs=CODECS, executor=ex)
    assert not res.failed and res.shards_written == local.shards_written
    assert_same_as_local(bucket_files(s3, "dask"), local_files(tmp_path / "local"))


def test_nothing_partial_in_the_bucket_while_running(s3, tmp_path):
    """Watch the bucket during a run: a tar stands under its final key only complete, its stats come
    after it, and index.json comes after every shard and the manifest."""
    src = _slow_source(tmp_path / "src", 8)
    url = f"s3://{BUCKET}/watched"
    seen: dict[str, bytes] = {}
    first_poll: dict[str, int] = {}  # a name -> the poll that first saw it (one poll may see several)
    with registered_fault_codecs() as fc:
        config = TranscodeConfig.create("imagefolder", src, ["test-slow-png"], out=url, samples_per_shard=2)
        os.environ[fc.SLOW_ENV] = "0.15"
        try:
            runner = threading.Thread(target=transcode, args=(config,))
            runner.start()
            poll = 0
            while runner.is_alive():
                for name, data in bucket_files(s3, "watched").items():
                    if name not in seen:
                        seen[name] = data
                        first_poll[name.rsplit("/", 1)[-1]] = poll
                poll += 1
                time.sleep(0.05)
            runner.join()
        finally:
            os.environ.pop(fc.SLOW_ENV, None)
    final = bucket_files(s3, "watched")
    assert len([n for n in final if n.endswith(".tar")]) == 4
    for name, data in seen.items():
        if name.endswith(".tar"):
            assert data == final[name], f"{name} was visible before it was complete"
    # a poll lists the bucket at one moment, so "came after" can only mean "seen no earlier": two
    # objects written between two polls are seen by the same one
    for n, at in first_poll.items():
        if n.endswith("_stats.json"):
            tar = n.replace("_stats.json", ".tar")
            assert first_poll.get(tar, at + 1) <= at, "stats before their tar"
    if "index.json" in first_poll:
        at = first_poll["index.json"]
        assert first_poll.get("manifest.parquet", at + 1) <= at, "index before the manifest"
        assert sum(n.endswith("_stats.json") and p <= at for n, p in first_poll.items()) == 4, \
            "index before every shard's stats"
    assert not [n for n in final if n.rsplit("/", 1)[-1].startswith(".")], "no temporary or marker objects"


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    import fault_codecs
    from pipeline import TranscodeConfig
    from pipeline.run.driver import transcode
    transcode(TranscodeConfig.create("imagefolder", sys.argv[1], ["test-slow-png"], out=sys.argv[2],
                                     samples_per_shard=1))
""")


def test_killed_run_leaves_no_partial_object_and_resumes(s3, tmp_path):
    src = _slow_source(tmp_path / "src", 6)
    ref = tmp_path / "ref"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]), "MPQ_TEST_SLOW_S": "0.3"}
    subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(src), str(ref)], env=env, check=True, timeout=120)
    url = f"s3://{BUCKET}/killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(src), url], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    try:
        while not any(n.endswith("_stats.json") for n in bucket_files(s3, "killed")):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no shard was published in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stdout.close()
    after_kill = bucket_files(s3, "killed")
    ref_files = local_files(ref)
    tars = [n for n in after_kill if n.endswith(".tar")]
    assert 0 < len(tars) < len([n for n in ref_files if n.endswith(".tar")]), "the kill must land mid-run"
    for n in tars:
        assert after_kill[n] == ref_files[n], f"{n} is partial"
    assert not [n for n in after_kill if n.endswith("index.json")]

    subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(src), url], env=env, check=True, timeout=120)
    assert_same_as_local(bucket_files(s3, "killed"), ref_files)


def test_unwritable_bucket_is_one_clear_error(s3, imagefolder_flat, tmp_path, capsys):
    config = TranscodeConfig.create("imagefolder", imagefolder_flat.root, ["jpeg:quality=5"],
                                    out="s3://no-such-bucket-mpq/x")
    with pytest.raises(OutputError, match="cannot write s3://no-such-bucket-mpq/x/imagefolder/all/jpeg-q5"):
        transcode(config)
    rc = main(["transcode", "imagefolder", str(imagefolder_flat.root), "--codec", "jpeg:quality=5",
               "--out", "s3://no-such-bucket-mpq/x", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: cannot write s3://no-such-bucket-mpq/x/")


# --------------------------------------------------------------------------- helpers


def _slow_source(root: Path, n: int) -> Path:
    """``n`` small photographs as PNG files."""
    from PIL import Image

    root.mkdir(parents=True)
    for i, name in enumerate(["astronaut", "coffee", "chelsea", "rocket", "china", "cat", "flower", "coins"][:n]):
        arr = fx.photo(name, 48 + 8 * i, 64)
        Image.fromarray(arr if arr.ndim == 3 else arr[..., None].repeat(3, 2)).save(root / f"p{i}.png")
    return root


def registered_fault_codecs():
    import importlib

    return importlib.import_module("fault_codecs").registered()

"""Evaluate, report and verify an ``s3://`` output, against a real S3-compatible server on loopback
(moto in server mode, the fixture of tests/test_object_storage.py).

What is checked: transcode, eval (classify with a random-weight resnet18, asr with pocketsphinx),
report and verify on an s3:// output give the same rows, figures and report tables as on a local
folder; results stand beside each set in the bucket, nothing under a temporary name and nothing
left in the staging folder; a rerun reads what is there and does nothing; an eval whose unit
crashes after some parts were uploaded, then whose store fails while publishing, resumes and ends
with the same result; a damaged object is reported by ``mpq verify``; a missing bucket, missing
credentials or a prefix without sets is one line with exit code 2.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

import fixtures as fx
from eval_fixtures import build_spoken_librispeech, run_transcode
from pipeline.cli import main

pytest.importorskip("s3fs")
pytest.importorskip("moto")

import test_object_storage as object_storage  # noqa: E402

BUCKET = object_storage.BUCKET
s3 = object_storage.s3  # the moto server fixture, one per module

CLASSIFY = ["--dataset", "imagenet", "--split", "val", "--task", "classify", "--model", "torchvision:resnet18"]
ASR = ["--dataset", "librispeech", "--split", "dev-clean", "--task", "asr", "--model", "pocketsphinx"]
RESULT = "eval/classify-torchvision_resnet18"


@pytest.fixture(scope="module")
def outputs(s3, tmp_path_factory) -> tuple[Path, str]:
    """The same sources transcoded into a local folder and into the bucket: imagenet/val (none,
    jpeg:quality=10; 3 ok samples in 2 shards, one broken source) and librispeech/dev-clean (none, opus)."""
    base = tmp_path_factory.mktemp("remote-eval")
    url = f"s3://{BUCKET}/evalout"
    built = fx.build_imagenet(base / "src", "folders")
    build_spoken_librispeech(base / "speech")
    for out in (base / "out", url):
        run_transcode("imagenet", built["val"].root, out, "val", ("none", "jpeg:quality=10"))
        run_transcode("librispeech", base / "speech", out, "dev-clean", ("none", "opus:kbps=12"))
    return base / "out", url


def _eval(out: str | Path, args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["eval", str(out), *args, "--workers", "0", "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _objects(fs, url: str) -> dict[str, bytes]:
    """Key under ``url`` -> bytes of every object there."""
    fs.invalidate_cache()
    root = url.split("://", 1)[1]
    return {k[len(root) + 1:]: fs.cat_file(k) for k in sorted(fs.find(root))}


def _rows(data: bytes) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pylist()


@pytest.fixture(scope="module")
def evaluated(outputs, s3, resnet_weights):
    """classify and asr run by the CLI on both outputs (in this process, so a failure shows its cause)."""
    local, url = outputs
    for out in (local, url):
        for args in (CLASSIFY + ["--weights", str(resnet_weights)], ASR):
            assert main(["eval", str(out), *args, "--workers", "0", "--no-progress"]) == 0, (out, args)
    return local, url


def test_results_stand_beside_each_set_in_the_bucket_same_as_local(evaluated, s3, resnet_weights, capsys):
    local, url = evaluated
    remote = _objects(s3, url)
    results = sorted(k for k in remote if "/eval/" in k and "/.parts/" not in k)
    assert results == sorted(str(p.relative_to(local)) for p in local.glob("*/*/*/eval/*") if p.is_file())
    assert len(results) == 8  # 2 tasks x 2 sets x (rows, figures)
    for name in results:
        if name.endswith(".json"):  # figures, coverage, model, stamp: the very same document
            assert json.loads(remote[name]) == json.loads((local / name).read_text()), name
        else:  # rows: the same values, in the same order
            assert _rows(remote[name]) == _rows((local / name).read_bytes()), name
    asr = json.loads(remote["librispeech/dev-clean/none/eval/asr-pocketsphinx.json"])
    assert asr["samples"] == 4 and asr["figures"]["wer"] < 0.5  # pocketsphinx did recognise the speech
    assert not [k for k in remote if ".tmp-" in k], "nothing under a temporary name"
    staging = Path(os.environ["MPQ_STAGING"])
    assert not list(staging.iterdir()), "staged parts and fetched shards are removed"

    before = {k: s3.info(f"{url.split('://', 1)[1]}/{k}")["LastModified"] for k in results}
    code, out, _ = _eval(url, CLASSIFY + ["--weights", str(resnet_weights)], capsys)
    assert code == 0 and "2 sets, 0 to evaluate; shard units run 0" in out
    s3.invalidate_cache()
    assert {k: s3.info(f"{url.split('://', 1)[1]}/{k}")["LastModified"] for k in results} == before


def test_report_of_the_bucket_equals_the_local_report(evaluated, s3, tmp_path, capsys, monkeypatch):
    import pandas as pd

    local, url = evaluated
    assert main(["report", str(local), "--out", str(tmp_path / "local")]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["report", url]) == 0  # a remote output: the report goes to ./_report by default
    assert f"report: {Path('_report') / 'report.html'}" in capsys.readouterr().out
    mine, theirs = tmp_path / "_report", tmp_path / "local"
    assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for name in ("bdrate.csv", "classes.csv", "storage.csv", "eval.csv", "eval_bdrate.csv", "correlation.csv"):
        assert (mine / name).read_bytes() == (theirs / name).read_bytes(), name
    a, b = pd.read_csv(mine / "summary.csv"), pd.read_csv(theirs / "summary.csv")
    pd.testing.assert_frame_equal(a.drop(columns=["folder_bytes"]), b.drop(columns=["folder_bytes"]))
    root = url.split("://", 1)[1]
    for r in a.itertuples():  # the folder's own objects, listed in the bucket (index.json names its output)
        folder = f"{root}/{r.dataset}/{r.split}/{r.tag}"
        assert r.folder_bytes == sum(d["size"] for d in s3.ls(folder, detail=True) if d["type"] == "file")
    text = (mine / "report.md").read_text().replace(url, str(local))
    assert text == (theirs / "report.md").read_text()

    where = f"s3://{BUCKET}/reports/first"  # or into the store, when asked
    assert main(["report", url, "--out", where]) == 0
    stored = _objects(s3, where)
    assert sorted(stored) == sorted(p.name for p in mine.iterdir())
    assert stored["summary.csv"] == (mine / "summary.csv").read_bytes()


def test_verify_reports_a_damaged_object(evaluated, s3, capsys):
    _, url = evaluated
    assert main(["verify", url]) == 0
    assert "clean: 4 sets, 8 shards" in capsys.readouterr().out
    key = f"{url.split('://', 1)[1]}/imagenet/val/jpeg-q10/imagenet-val-jpeg-q10-000001.tar"
    good = s3.cat_file(key)
    try:
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0xFF  # same size, other bytes: only the hash can tell
        s3.pipe_file(key, bytes(flipped))
        assert main(["verify", url]) == 1
        out = capsys.readouterr().out
        assert f"s3://{key}: damaged: size or SHA-256 differs" in out
        s3.pipe_file(key, good[:-512])  # truncated: the size alone tells
        assert main(["verify", url, "--dataset", "imagenet"]) == 1
        out = capsys.readouterr().out
        assert f"s3://{key}: damaged: {len(good) - 512} bytes, index.json records {len(good)}" in out
    finally:
        s3.pipe_file(key, good)
    assert main(["verify", url]) == 0


def test_an_interrupted_eval_resumes_to_the_same_result(evaluated, s3, resnet_weights, capsys, monkeypatch):
    """A unit crashes after the other parts were uploaded; then the store fails while publishing;
    each time nothing stands under a final name, and the third run ends as an uninterrupted one."""
    import botocore.exceptions

    import pipeline.eval.run as run
    from pipeline.store.storage import OutputStore

    local, url = evaluated
    src, dst = url.split("://", 1)[1], f"{BUCKET}/resume"
    s3.copy(f"{src}/imagenet", f"{dst}/imagenet", recursive=True)
    s3.rm([k for k in s3.find(f"{dst}/imagenet") if "/eval/" in k])
    target = f"s3://{dst}"
    args = CLASSIFY + ["--weights", str(resnet_weights)]
    crashing = "imagenet-val-jpeg-q10-000001.tar"
    unit = run.run_eval_shard

    def crash(t):
        if t.shard == crashing:
            raise RuntimeError("worker lost")
        return unit(t)

    monkeypatch.setattr(run, "run_eval_shard", crash)
    code, _, err = _eval(target, args, capsys)
    assert code == 1 and f"{crashing}: RuntimeError: worker lost" in err
    names = _objects(s3, target)
    assert f"imagenet/val/none/{RESULT}.json" in names  # the set without a failure is published
    assert not [k for k in names if k.startswith("imagenet/val/jpeg-q10/eval/") and "/.parts/" not in k]
    assert sorted(k.rsplit("/", 1)[1] for k in names if "jpeg-q10/eval/.parts/" in k) == [
        "imagenet-val-jpeg-q10-000000.parquet", "stamp"]

    monkeypatch.setattr(run, "run_eval_shard", unit)
    upload = OutputStore.upload

    def network_down(self, local_file, loc):
        if loc.endswith(f"jpeg-q10/{RESULT}.parquet"):
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        return upload(self, local_file, loc)

    monkeypatch.setattr(OutputStore, "upload", network_down)
    code, _, err = _eval(target, args, capsys)
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("error: cannot read or write")
    assert "Could not connect to the endpoint URL" in err
    names = _objects(s3, target)
    assert not [k for k in names if k.startswith("imagenet/val/jpeg-q10/eval/") and "/.parts/" not in k]

    monkeypatch.setattr(OutputStore, "upload", upload)
    code, out, _ = _eval(target, args, capsys)
    assert code == 0 and "2 sets, 1 to evaluate; shard units run 0, already done 2" in out
    names = _objects(s3, target)
    for tag in ("none", "jpeg-q10"):
        name = f"imagenet/val/{tag}/{RESULT}"
        assert json.loads(names[f"{name}.json"]) == json.loads((local / f"{name}.json").read_text())
        assert _rows(names[f"{name}.parquet"]) == _rows((local / f"{name}.parquet").read_bytes())


def test_a_missing_bucket_credentials_or_sets_is_one_line(outputs, s3, resnet_weights, capsys, monkeypatch):
    import s3fs

    from pipeline.store.storage import open_store

    _, url = outputs
    args = CLASSIFY + ["--weights", str(resnet_weights)]
    cases = [(["eval", "s3://no-such-bucket/out", *args], "cannot read s3://no-such-bucket/out: bucket no-such-bucket "
                                                          "does not exist"),
             (["report", "s3://no-such-bucket/out"], "bucket no-such-bucket does not exist"),
             (["verify", "s3://no-such-bucket/out"], "bucket no-such-bucket does not exist"),
             (["eval", f"s3://{BUCKET}/nothing", *args], f"cannot read s3://{BUCKET}/nothing: nothing stored"),
             (["eval", url, *args[:3], "train", *args[4:]], f"no finished sets under {url}/imagenet/train")]
    for argv, words in cases:
        assert main([*argv, "--no-progress"] if argv[0] == "eval" else argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, err

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(Path(__file__).parent / "no-such-file"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    open_store.cache_clear()
    try:
        assert main(["eval", url, *args, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and f"error: cannot read {url}: no credentials" in err, err
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        open_store.cache_clear()


@pytest.mark.slow
def test_dask_workers_read_the_shards_from_the_store(evaluated, s3, resnet_weights):
    """Workers in other processes read the shards from the bucket (no shared disk) and publish there."""
    from pipeline.eval import EvalConfig, evaluate
    from pipeline.run.cluster import dask_executor

    local, url = evaluated
    src, dst = url.split("://", 1)[1], f"{BUCKET}/dask-eval"
    s3.copy(f"{src}/imagenet", f"{dst}/imagenet", recursive=True)
    s3.rm([k for k in s3.find(f"{dst}/imagenet") if "/eval/" in k])
    config = EvalConfig.create(f"s3://{dst}", "imagenet", "val", "classify", "torchvision:resnet18",
                               weights=str(resnet_weights))
    with dask_executor(1, dashboard=":0", log=None) as ex:
        result = evaluate(config, ex)
    assert not result.failed and result.shards_run == 4
    names = _objects(s3, f"s3://{dst}")
    for tag in ("none", "jpeg-q10"):
        name = f"imagenet/val/{tag}/{RESULT}"
        assert json.loads(names[f"{name}.json"]) == json.loads((local / f"{name}.json").read_text())
        assert _rows(names[f"{name}.parquet"]) == _rows((local / f"{name}.parquet").read_bytes())

"""Coverage against the reference set ``none`` (issue 18 §1): figures over every reference key, a failed or
missing sample counted as the task's failure value; figures over the paired keys; --limit takes the same
keys in every set; a fully covered set keeps the figures of the code before coverage."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import fixtures as fx
from eval_fixtures import corrupt_member, fresh_copy, rows_of, run_transcode
from pipeline.eval import EvalConfig, evaluate
from pipeline.eval.coverage import FailureValues, KeyPlan, SetKeys, cover
from pipeline.eval.tasks import get_task
from pipeline.eval.tasks.asr import word_errors
from pipeline.eval.tasks.base import has_failure_value

NAME = "classify-torchvision_resnet18"
KEYS = [f"ILSVRC2012_val_{i:08d}" for i in range(1, 6)]
POISON = KEYS[2]  # the test codec refuses it: an error row in its manifest, absent from its shards
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "china")


@pytest.fixture(scope="module")
def faulty_out(tmp_path_factory):
    """imagenet/val with 5 images in 3 shards: none, jpeg:quality=10, and test-raise-png (which fails on the third)."""
    with importlib.import_module("fault_codecs").registered() as codecs:
        base = tmp_path_factory.mktemp("eval-coverage")
        for i, key in enumerate(KEYS):
            h, w = codecs.POISON_SHAPE if key == POISON else (48 + 8 * i, 64)
            path = base / "src" / "val" / fx.WNIDS[i % 3] / f"{key}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(fx.jpeg_bytes(fx.photo(PHOTOS[i], h, w)))
        run_transcode("imagenet", base / "src", base / "out", "val", ("none", "jpeg:quality=10", "test-raise-png"))
        yield base / "out"


@pytest.fixture
def out(faulty_out, tmp_path) -> Path:
    return fresh_copy(faulty_out, tmp_path / "out")


def _evaluate(out: Path, weights: Path, **kw):
    result = evaluate(EvalConfig.create(str(out), "imagenet", "val", "classify", "torchvision:resnet18",
                                        weights=str(weights), batch_size=2, **kw))
    assert not result.failed, result.failed
    return {d["tag"]: d for d in result.published}


def _rows(out: Path, tag: str) -> dict[str, dict]:
    return {r["key"]: r for r in rows_of(out / "imagenet" / "val" / tag / "eval" / f"{NAME}.parquet")}


def _old_classify(rows) -> dict:
    """The figures as the code before coverage computed them: over the rows with status ok only."""
    good = [r for r in rows if r["status"] == "ok"]
    n = len(good)
    return {"top1": sum(bool(r["correct1"]) for r in good) / n, "top5": sum(bool(r["correct5"]) for r in good) / n,
            "loss": sum(float(r["loss"]) for r in good) / n}


def test_failed_samples_count_as_wrong_over_all_reference_keys(out, resnet_weights):
    # one more failure, at eval: a payload of the faulty set that does not decode
    shard = out / "imagenet" / "val" / "test-raise-png" / "imagenet-val-test-raise-png-000000.tar"
    corrupt_member(shard, KEYS[0], "png")
    with importlib.import_module("fault_codecs").registered():
        docs = _evaluate(out, resnet_weights)
    manifest = pq.read_table(out / "imagenet" / "val" / "test-raise-png" / "manifest.parquet").to_pylist()
    assert [r["status"] for r in manifest if r["key"] == POISON] == ["error"]
    ref = _rows(out, "none")
    assert list(ref) == KEYS and all(r["status"] == "ok" for r in ref.values())
    rows = _rows(out, "test-raise-png")
    assert list(rows) == [KEYS[0], KEYS[1], KEYS[3], KEYS[4], POISON]  # evaluated in shard order, then missing
    assert rows[KEYS[0]]["status"] == "error" and ".png" in rows[KEYS[0]]["error"]
    assert rows[POISON]["status"] == "missing"
    assert rows[POISON]["error"] == "failed at transcode: RuntimeError: test codec refuses the poison sample"
    for key in (KEYS[0], POISON):  # the failure value: the reference label, wrong for top-1 and top-5
        assert rows[key]["label"] == ref[key]["label"]
        assert (rows[key]["correct1"], rows[key]["correct5"], rows[key]["pred"], rows[key]["loss"]) == \
            (False, False, None, None)
    doc = docs["test-raise-png"]
    ok = [rows[k] for k in (KEYS[1], KEYS[3], KEYS[4])]
    assert doc["format"] == "mpq-eval/2"
    assert doc["figures"] == {"top1": sum(r["correct1"] for r in ok) / 5, "top5": 3 / 5,  # 3 classes: top-5 = ok
                              "loss": pytest.approx(sum(r["loss"] for r in ok) / 3)}
    assert doc["figures_paired"] == {"top1": sum(r["correct1"] for r in ok) / 3, "top5": 1.0,
                                     "loss": pytest.approx(sum(r["loss"] for r in ok) / 3)}
    assert doc["coverage"] == {"reference": "none", "reference_keys": 5, "evaluated": 3, "failed_transcode": 1,
                               "failed_eval": 1, "excluded": 0, "extra": 0, "fraction": 0.6}
    assert doc["samples"] == 3 and doc["errors"] == 1
    assert set(doc["figure_sets"]) == {"figures", "figures_paired"}
    assert doc["figure_sets"]["figures"].startswith("over every reference key (the keys ok in the set none)")
    # the figures follow from the rows file alone, through the task's aggregate
    task = get_task("classify")
    assert task.aggregate(list(rows.values())) == doc["figures"]
    # the JSON on disk is what was returned
    path = out / "imagenet" / "val" / "test-raise-png" / "eval" / f"{NAME}.json"
    assert json.loads(path.read_text())["coverage"] == doc["coverage"]


def test_a_fully_covered_set_keeps_the_figures_of_before(out, resnet_weights):
    with importlib.import_module("fault_codecs").registered():
        docs = _evaluate(out, resnet_weights)
    for tag in ("none", "jpeg-q10"):
        rows = list(_rows(out, tag).values())
        assert [r["status"] for r in rows] == ["ok"] * 5
        assert docs[tag]["figures"] == _old_classify(rows)  # exactly: the same sums over the same rows
        assert docs[tag]["figures_paired"] == docs[tag]["figures"]
        assert docs[tag]["coverage"]["fraction"] == 1.0 and docs[tag]["coverage"]["evaluated"] == 5


def test_limit_takes_the_first_reference_keys_in_every_set(out, resnet_weights):
    with importlib.import_module("fault_codecs").registered():
        docs = _evaluate(out, resnet_weights, limit=3)
    for tag in ("none", "jpeg-q10", "test-raise-png"):
        assert sorted(_rows(out, tag)) == KEYS[:3], tag  # before: the first 3 ok samples of each set
        assert docs[tag]["coverage"]["reference_keys"] == 3
    faulty = _rows(out, "test-raise-png")
    assert faulty[POISON]["status"] == "missing" and KEYS[3] not in faulty
    assert docs["test-raise-png"]["coverage"]["evaluated"] == 2
    assert docs["test-raise-png"]["coverage"]["failed_transcode"] == 1
    assert "the first 3 in shard order" in docs["none"]["figure_sets"]["figures"]


# ---------------------------------------------------------------- failure values and coverage by hand


def test_asr_failure_deletes_every_reference_word():
    asr = get_task("asr")
    row = asr.failure_row({"transcript": "Well, hello THERE  friend"})
    assert row == {"reference": "Well, hello THERE  friend", "hypothesis": None, "substitutions": 0, "deletions": 4,
                   "insertions": 0, "ref_words": 4}
    ok = {"status": "ok", **word_errors("the cat sat", "the bat sat down")}  # 1 substitution, 1 insertion
    got = asr.aggregate([ok, {"status": "missing", **row}, {"status": "error", "ref_words": None}])
    assert got == {"wer": (2 + 4) / (3 + 4), "ref_words": 7, "edits": 6}
    with pytest.raises(ValueError):
        asr.failure_row({"transcript": ""})


def test_segment_failure_predicts_nothing():
    seg = get_task("segment")
    annotation = np.array([[0, 1, 1], [2, 2, 151]], dtype=np.uint8)  # 0 and 151 are not scored
    row = seg.failure_row({"segmentation": annotation[..., None]})  # a one-channel label map
    assert row["intersection"] == [0] * 150
    assert row["union"][:2] == [2, 2] and sum(row["union"]) == 4
    assert (row["correct"], row["labelled"]) == (0, 4)
    ok = {"status": "ok", "intersection": [2] + [0] * 149, "union": [3] + [0] * 149, "correct": 2, "labelled": 3}
    got = seg.aggregate([ok, {"status": "missing", **row}])
    # class 1: 2 / (3 + 2); class 2: 0 / 2
    assert got == {"miou": pytest.approx((2 / 5 + 0.0) / 2), "pixel_accuracy": 2 / 7, "classes_scored": 2}


def test_classify_failure_and_old_rows():
    classify = get_task("classify")
    assert classify.failure_row({"label": 7}) == {"label": 7, "pred": None, "top5": None, "correct1": False,
                                                  "correct5": False, "loss": None}
    rows = [{"status": "ok", "correct1": True, "correct5": True, "loss": 1.0},
            {"status": "error", "correct1": None, "correct5": None, "loss": None},  # no failure columns: not counted
            {"status": "missing", **classify.failure_row({"label": 0})}]
    assert classify.aggregate(rows) == {"top1": 0.5, "top5": 0.5, "loss": 1.0}


def _plan(tag_keys: dict[str, str], ok: dict[str, str], failed: dict[str, str]) -> KeyPlan:
    return KeyPlan("none", "none", tag_keys, SetKeys(ok, failed))


@pytest.mark.parametrize("task", ["separate", "similarity"])
def test_tasks_without_failure_value_exclude_and_count(task, tmp_path):
    cls = get_task(task) if task == "separate" else get_task(task).bind(
        EvalConfig.create(str(tmp_path), "d", "s", task, "lpips:alex"))
    assert not has_failure_value(cls)
    keys = {"a": "s0.tar", "b": "s0.tar", "c": "s1.tar", "d": "s1.tar"}
    plan = _plan(keys, {"a": "s0.tar", "b": "s0.tar", "d": "s1.tar", "x": "s1.tar"}, {"c": "RuntimeError: no"})
    rows = [{"key": "a", "status": "ok", "error": None}, {"key": "b", "status": "error", "error": "ValueError: v"},
            {"key": "x", "status": "ok", "error": None}]  # d: ok in the manifest, not read; x: not a reference key
    values = FailureValues(cls, str(tmp_path / "nowhere"), "d", "s")  # would fail if it read any sample
    covered = cover(rows, plan, values.get)
    assert covered.coverage == {"reference": "none", "reference_keys": 4, "evaluated": 1, "failed_transcode": 1,
                                "failed_eval": 2, "excluded": 3, "extra": 1, "fraction": 0.25}
    assert [r["key"] for r in covered.figure_rows] == ["a", "b", "c", "d"]
    assert [r["key"] for r in covered.paired_rows] == ["a"]
    missing = {r["key"]: r for r in covered.rows if r["status"] == "missing"}
    assert missing["c"]["error"].startswith("failed at transcode: RuntimeError: no; task ")
    assert missing["d"]["error"].startswith("not evaluated: ok in the set's manifest")


def test_failure_values_are_read_from_the_reference_set_only_for_needed_keys(out, monkeypatch):
    """The lossless fields of the wanted keys, without decoding any payload."""
    from pipeline.loaders import decode

    def no_payload(self, members):
        raise AssertionError("the payload was decoded")

    monkeypatch.setattr(decode.ViewDecoder, "__call__", no_payload)
    values = FailureValues(get_task("classify"), str(out), "imagenet", "val")
    shards = {KEYS[2]: "imagenet-val-none-000001.tar", KEYS[4]: "imagenet-val-none-000002.tar"}
    got = values.get("none", shards)
    labels = {r["key"]: r["label"] for r in pq.read_table(out / "imagenet" / "val" / "none" / "manifest.parquet")
              .to_pylist()}
    assert got == {k: {"label": labels[k], "pred": None, "top5": None, "correct1": False, "correct5": False,
                       "loss": None} for k in shards}
    bad = values.get("none", {KEYS[0]: "imagenet-val-none-000001.tar"})  # not in that shard
    assert "reference sample unreadable" in bad[KEYS[0]] and "holds no sample" in bad[KEYS[0]]


def test_without_a_none_set_each_set_is_its_own_reference(out, resnet_weights):
    import shutil

    shutil.rmtree(out / "imagenet" / "val" / "none")
    with importlib.import_module("fault_codecs").registered():
        docs = _evaluate(out, resnet_weights)
    assert sorted(docs) == ["jpeg-q10", "test-raise-png"]
    faulty = docs["test-raise-png"]
    assert faulty["coverage"] == {"reference": None, "reference_keys": 4, "evaluated": 4, "failed_transcode": 0,
                                  "failed_eval": 0, "excluded": 0, "extra": 0, "fraction": 1.0}
    assert "no set none" in faulty["figure_sets"]["figures"] and faulty["figures"] == faulty["figures_paired"]
    assert POISON not in _rows(out, "test-raise-png")

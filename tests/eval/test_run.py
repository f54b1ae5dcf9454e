"""The run: error rows, reruns that do no finished work, resume after an interruption, bad input, Dask."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eval_fixtures import corrupt_member, fresh_copy, part_mtimes, rows_of
from pipeline.cli import main
from pipeline.eval import EvalConfig, evaluate

NAME = "classify-torchvision_resnet18"


@pytest.fixture
def out(imagenet_out, tmp_path) -> Path:
    """A private copy of the finished imagenet sets (tests here modify them)."""
    return fresh_copy(imagenet_out, tmp_path / "out")


def _config(out: Path, weights: Path, **kw) -> EvalConfig:
    return EvalConfig.create(str(out), "imagenet", "val", "classify", "torchvision:resnet18", weights=str(weights),
                             batch_size=kw.pop("batch_size", 2), **kw)


def test_errors_become_rows_and_the_run_goes_on(out, tmp_path):
    import torch
    import torchvision

    # a model with 2 classes cannot score the sample labelled 2 (a run error); one payload does not decode
    torch.manual_seed(1)
    weights = tmp_path / "two.pt"
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=2).state_dict(), weights)
    shard = out / "imagenet" / "val" / "jpeg-q10" / "imagenet-val-jpeg-q10-000000.tar"
    corrupt_member(shard, "ILSVRC2012_val_00000001", "jpg")
    result = evaluate(_config(out, weights))
    assert not result.failed
    docs = {d["tag"]: d for d in result.published}
    rows = {r["key"]: r for r in rows_of(out / "imagenet" / "val" / "jpeg-q10" / "eval" / f"{NAME}.parquet")}
    assert list(rows) == ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002", "ILSVRC2012_val_00000003"]
    assert rows["ILSVRC2012_val_00000001"]["status"] == "error" and ".jpg" in rows["ILSVRC2012_val_00000001"]["error"]
    assert rows["ILSVRC2012_val_00000003"]["status"] == "error"
    assert "outside the model's 2 classes" in rows["ILSVRC2012_val_00000003"]["error"]
    assert rows["ILSVRC2012_val_00000002"]["status"] == "ok" and rows["ILSVRC2012_val_00000002"]["pred"] in (0, 1)
    assert docs["jpeg-q10"]["samples"] == 1 and docs["jpeg-q10"]["errors"] == 2
    # the two error rows count as wrong over the 3 reference keys; the paired figures are over the ok one
    assert docs["jpeg-q10"]["figures"]["top1"] == float(rows["ILSVRC2012_val_00000002"]["correct1"]) / 3
    assert docs["jpeg-q10"]["figures"]["top5"] == 1 / 3
    assert docs["jpeg-q10"]["figures_paired"]["top1"] == float(rows["ILSVRC2012_val_00000002"]["correct1"])
    assert docs["jpeg-q10"]["coverage"]["failed_eval"] == 2 and docs["jpeg-q10"]["coverage"]["fraction"] == 1 / 3
    assert docs["none"]["samples"] == 2 and docs["none"]["errors"] == 1


def test_rerun_does_no_finished_work_and_an_interrupted_run_resumes(out, resnet_weights):
    config = _config(out, resnet_weights)
    first = evaluate(config)
    assert first.shards_run == 4 and len(first.published) == 2
    before = part_mtimes(out / "imagenet" / "val")
    again = evaluate(config)
    assert again.shards_run == 0 and again.published == [] and again.plan.tasks == []
    assert part_mtimes(out / "imagenet" / "val") == before
    # an interruption: one part, the concatenated rows and the JSON of a set are missing
    ev = out / "imagenet" / "val" / "jpeg-q10" / "eval"
    rows_before = rows_of(ev / f"{NAME}.parquet")
    (ev / ".parts" / NAME / "imagenet-val-jpeg-q10-000001.parquet").unlink()
    (ev / f"{NAME}.json").unlink()
    resumed = evaluate(config)
    assert resumed.shards_run == 1 and resumed.shards_cached == 1 and [d["tag"] for d in resumed.published] == ["jpeg-q10"]
    after = part_mtimes(out / "imagenet" / "val")
    kept = f"jpeg-q10/eval/.parts/{NAME}/imagenet-val-jpeg-q10-000000.parquet"
    assert after[kept] == before[kept]
    assert {k: v for k, v in after.items() if k.startswith("none/")} == \
        {k: v for k, v in before.items() if k.startswith("none/")}
    assert rows_of(ev / f"{NAME}.parquet") == rows_before
    # another limit is another result: the old parts are not reused
    limited = evaluate(_config(out, resnet_weights, limit=1))
    assert limited.shards_run == 2 and all(d["samples"] + d["errors"] == 1 for d in limited.published)


def test_batch_size_does_not_change_rows(out, resnet_weights, tmp_path):
    evaluate(_config(out, resnet_weights, batch_size=1))
    one = rows_of(out / "imagenet" / "val" / "none" / "eval" / f"{NAME}.parquet")
    other = tmp_path / "other"
    shutil.copytree(out, other, ignore=shutil.ignore_patterns("eval"))
    evaluate(_config(other, resnet_weights, batch_size=3))
    three = rows_of(other / "imagenet" / "val" / "none" / "eval" / f"{NAME}.parquet")
    assert [r["pred"] for r in one] == [r["pred"] for r in three]
    assert [r["loss"] for r in one] == pytest.approx([r["loss"] for r in three], abs=1e-4)


@pytest.mark.parametrize("args, words", [
    (["--task", "classify", "--model", "nope:x"], "unknown model 'nope'"),
    (["--task", "segment", "--model", "hf:/nonexistent"], "does not fit"),
    (["--task", "asr"], "does not fit"),
    (["--task", "classify", "--model", "torchvision:resnet18", "--offline"], "resnet18-f37072fd.pth is expected in"),
    (["--task", "classify", "--model", "torchvision:resnet18", "--weights", "/no/such.pt"], "/no/such.pt"),
    (["--task", "classify", "--model", "pocketsphinx"], "cannot do task classify"),
    (["--task", "classify", "--model", "torchvision:resnet18", "--codec", "webp:quality=5"], "no complete set"),
    (["--task", "classify"], "no default model"),
])
def test_bad_input_exits_2_with_one_line(out, args, words, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    code = main(["eval", str(out), "--dataset", "imagenet", "--split", "val", "--workers", "0", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, err
    assert not list(out.rglob("eval"))  # no work was done


def test_no_finished_sets_exits_2(tmp_path, capsys):
    code = main(["eval", str(tmp_path), "--dataset", "imagenet", "--split", "val", "--task", "classify",
                 "--model", "torchvision:resnet18", "--workers", "0"])
    assert code == 2 and "no finished sets" in capsys.readouterr().err


def test_cli_run_prints_figures(out, resnet_weights, capsys):
    code = main(["eval", str(out), "--dataset", "imagenet", "--split", "val", "--task", "classify", "--model",
                 "torchvision:resnet18", "--weights", str(resnet_weights), "--workers", "0", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "jpeg-q10" in text and "top1" in text
    assert text.count("coverage 100.0%") == 2  # each set's coverage against none
    assert (out / "imagenet" / "val" / "none" / "eval" / f"{NAME}.json").is_file()


def test_codec_selection_adds_the_reference_and_expands_sweeps(out, resnet_weights):
    from pipeline.eval import plan_eval

    plan = plan_eval(_config(out, resnet_weights, codecs=["jpeg:quality=10"]))
    assert [s.tag for s in plan.sets] == ["none", "jpeg-q10"]
    with pytest.raises(Exception, match="no complete set for jpeg:quality=20"):
        plan_eval(_config(out, resnet_weights, codecs=["jpeg:quality=10,20"]))


def test_a_failed_download_is_one_line(out, capsys, monkeypatch, tmp_path):
    """No network here: fetching default weights fails before any work, naming the URL and the folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    code = main(["eval", str(out), "--dataset", "imagenet", "--split", "val", "--task", "classify",
                 "--model", "torchvision:resnet18", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot download the weights" in err
    assert str(tmp_path / "torch-home") in err and not list(out.rglob("eval"))

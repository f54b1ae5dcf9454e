"""examples/finetune.py under a real 2-process torchrun (gloo, CPU), for classification and
segmentation: stopped mid-epoch after a checkpoint and resumed, it trains on every sample of the
epoch exactly once across both runs and ranks, and its output is a plain state dict for the
architecture that ``mpq eval --weights`` evaluates on every lossy set."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import fixtures as fx  # noqa: E402
from pipeline.loaders import load  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "finetune.py"
MIXTURE = '{"jpeg:quality=5": 0.5, "none": 0.5}'
CLASSIFY = ("--codec", MIXTURE, "--arch", "resnet18", "--num-classes", "1000", "--size", "64")
SEG_MIXTURE = '{"jpeg:quality=10": 0.5, "none": 0.5}'
SEG_MODEL = "lraspp_mobilenet_v3_large"  # the smallest torchvision segmentation model


@pytest.fixture(scope="module")
def shards(tmp_path_factory, imagenet_folders) -> Path:
    out = tmp_path_factory.mktemp("finetune-shards")
    result = fx.transcode("imagenet", imagenet_folders["train"], out, split="train",
                          codecs=("jpeg:quality=5", "none"), samples_per_shard=2)
    assert not result.failed
    return out


def torchrun(shards: Path, work: Path, *extra: str, ranks: int = 2, script: Path = SCRIPT,
             base: tuple[str, ...] = CLASSIFY) -> str:
    """The script under torchrun with ``ranks`` processes (1: plain python, no process group)."""
    launcher = (["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", str(ranks)]
                if ranks > 1 else [])
    cmd = [sys.executable, *launcher, str(script), str(shards), *base, "--batch-size", "1", "--workers", "2",
           "--buffer", "4", "--seed", "7", "--checkpoint", str(work / "ck.pt"), "--log-keys", str(work / "keys"),
           "--output", str(work / "final.pt"),
           "--device", "cpu", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def logged(work: Path) -> list[str]:
    return [k for f in sorted((work / "keys").glob("keys-rank*.txt")) for k in f.read_text().split()]


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory, imagenet_folders) -> Path:
    """The lossy and lossless validation sets the fine-tuned model is evaluated on."""
    out = tmp_path_factory.mktemp("finetune-val")
    result = fx.transcode("imagenet", imagenet_folders["val"], out, split="val", codecs=("jpeg:quality=5", "none"),
                          samples_per_shard=2)
    assert not result.failed
    return out


def test_killed_and_resumed_run_sees_each_sample_once(shards, val_shards, tmp_path):
    out1 = torchrun(shards, tmp_path, "--stop-after-steps", "2")
    assert "stopped after 2 steps" in out1 and not (tmp_path / "final.pt").exists()
    assert len(logged(tmp_path)) == 4  # 2 steps x 2 ranks x batch 1
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)  # the checkpoint is plain data too
    assert ck["step"] == 2 and set(ck["optimizer"]["state"]) and '"consumed"' in ck["loader"]
    # the same checkpoint resumed by one process: the rest of the epoch is split anew
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(tmp_path / "ck.pt", single / "ck.pt")
    first = logged(tmp_path)
    assert "resumed at step 2" in torchrun(shards, single, "--resume", ranks=1)
    assert sorted(first + logged(single)) == sorted(s["__key__"] for s in load(shards, "imagenet", "train", "none"))

    out2 = torchrun(shards, tmp_path, "--resume")
    assert "resumed at step 2, epoch 0" in out2 and "epoch 0 done" in out2
    keys = logged(tmp_path)
    everything = sorted(s["__key__"] for s in load(shards, "imagenet", "train", "none"))
    assert len(everything) == 6 and sorted(keys) == everything  # each sample exactly once

    from torchvision.models import get_model

    state = torch.load(tmp_path / "final.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model = get_model("resnet18", weights=None, num_classes=1000)
    model.load_state_dict(state)  # strict: every key and shape of the architecture
    assert model.fc.out_features == 1000
    final_ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in final_ck["model"].items())
    torch.manual_seed(7)
    initial = get_model("resnet18", weights=None, num_classes=1000).state_dict()
    assert not torch.equal(initial["conv1.weight"], state["conv1.weight"])  # it trained
    evaluated_by_mpq_eval(tmp_path / "final.pt", val_shards)


def mpq_eval(out: Path, dataset: str, split: str, task: str, model: str, *extra: str) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    res = CliRunner().invoke(cli, ["eval", str(out), "--dataset", dataset, "--split", split, "--task", task,
                                   "--model", model, *extra, "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output


def evaluated_by_mpq_eval(weights: Path, out: Path) -> None:
    """The fine-tuned state dict goes into ``mpq eval --weights`` unchanged: every set, every sample."""
    import json

    mpq_eval(out, "imagenet", "val", "classify", "torchvision:resnet18", "--weights", str(weights))
    tags = sorted(p.name for p in (out / "imagenet" / "val").iterdir() if (p / "index.json").is_file())
    assert tags == ["jpeg-q5", "none"]
    for tag in tags:
        doc = json.loads((out / "imagenet" / "val" / tag / "eval" / "classify-torchvision_resnet18.json").read_text())
        total = sum(1 for _ in load(out, "imagenet", "val", doc["codec"]))
        assert doc["samples"] == total > 0 and doc["errors"] == 0
        assert 0 <= doc["figures"]["top1"] <= doc["figures"]["top5"] <= 1
        assert doc["model"]["weights"] == str(weights) and len(doc["model"]["weights_sha256"]) == 64


@pytest.mark.slow
def test_resumed_run_ends_with_the_uninterrupted_weights(shards, tmp_path):
    """Model, optimizer and loader position together: stopping and resuming changes nothing
    (deterministic crops, one thread per rank, gloo on CPU: the same sums in the same order)."""
    fixed = ("--no-augment",)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for d in (whole, parts):
        d.mkdir()
    torchrun(shards, whole, *fixed)
    torchrun(shards, parts, *fixed, "--stop-after-steps", "1")
    torchrun(shards, parts, *fixed, "--resume")
    assert logged(whole) != [] and sorted(logged(whole)) == sorted(logged(parts))
    a = torch.load(whole / "final.pt", weights_only=True)
    b = torch.load(parts / "final.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_codec_option_forms():
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.mixture(None) == {"jpeg:quality=5": 0.5, "none": 0.5}
    assert mod.mixture([MIXTURE]) == {"jpeg:quality=5": 0.5, "none": 0.5}
    assert mod.mixture(["jpeg:quality=5@0.7", "none@0.3"]) == {"jpeg:quality=5": 0.7, "none": 0.3}
    assert mod.mixture(["webp:quality=10", "none"]) == {"webp:quality=10": 1.0, "none": 1.0}
    with pytest.raises(SystemExit):
        mod.mixture(["{}"])


# ---------------------------------------------------------------------------------------- segmentation


@pytest.fixture(scope="module")
def ade_shards(tmp_path_factory, ade20k) -> Path:
    """ADE20K train (3 samples) and val (2: the third image has no annotation) at jpeg:quality=10 and none."""
    out = tmp_path_factory.mktemp("finetune-ade")
    for split in ("train", "val"):
        fx.transcode("ade20k", ade20k[split], out, split=split, codecs=("jpeg:quality=10", "none"),
                     samples_per_shard=2)
    return out


def segment_args(model: str) -> tuple[str, ...]:
    return ("--task", "segment", "--model", model, "--codec", SEG_MIXTURE, "--size", "64")


def killed_and_resumed(shards: Path, work: Path, base: tuple[str, ...], dataset: str, split: str) -> str:
    """Stopped after one step on 2 ranks, then resumed to the epoch's end: every key exactly once."""
    out1 = torchrun(shards, work, "--stop-after-steps", "1", base=base)
    assert "stopped after 1 steps" in out1 and not (work / "final.pt").exists()
    assert len(logged(work)) == 2  # 1 step x 2 ranks x batch 1
    out2 = torchrun(shards, work, "--resume", base=base)
    assert "resumed at step 1, epoch 0" in out2 and "epoch 0 done" in out2
    everything = sorted(s["__key__"] for s in load(shards, dataset, split, "none"))
    assert len(everything) >= 3 and sorted(logged(work)) == everything  # each sample exactly once
    return out2


def segment_results(out: Path, name: str) -> dict[str, dict]:
    """The published results of every set of ade20k/val: each set, each sample (the val image without
    its annotation is no sample: transcode reports it)."""
    import json

    tags = sorted(p.name for p in (out / "ade20k" / "val").iterdir() if (p / "index.json").is_file())
    assert tags == ["jpeg-q10", "none"]
    docs = {}
    for tag in tags:
        doc = json.loads((out / "ade20k" / "val" / tag / "eval" / f"{name}.json").read_text())
        total = sum(1 for _ in load(out, "ade20k", "val", doc["codec"]))
        assert doc["samples"] == total == 2 and doc["errors"] == 0
        assert 0 <= doc["figures"]["miou"] <= 1
        docs[tag] = doc
    return docs


def test_segmentation_torchvision_killed_resumed_and_evaluated(ade_shards, tmp_path):
    from torchvision.models import get_model

    from pipeline.eval.tasks.segment import confusion_counts

    out = killed_and_resumed(ade_shards, tmp_path, segment_args(f"torchvision:{SEG_MODEL}"), "ade20k", "train")
    final = tmp_path / "final.pt"
    assert f"--task segment --model torchvision:{SEG_MODEL} --weights {final}" in out  # the printed command
    state = torch.load(final, weights_only=True)
    model = get_model(SEG_MODEL, weights=None, weights_backbone=None, num_classes=150)
    model.load_state_dict(state)  # strict: 150 classes, the architecture's every key
    torch.manual_seed(7)
    initial = get_model(SEG_MODEL, weights=None, weights_backbone=None, num_classes=150).state_dict()
    assert not torch.equal(initial["classifier.low_classifier.weight"], state["classifier.low_classifier.weight"])

    mpq_eval(ade_shards, "ade20k", "val", "segment", f"torchvision:{SEG_MODEL}", "--weights", str(final))
    docs = segment_results(ade_shards, f"segment-torchvision_{SEG_MODEL}")
    assert docs["none"]["model"]["weights"] == str(final)
    # the rows are the bare model's: resize to 520 and normalize as torchvision's weights say, upsample, argmax
    import pyarrow.parquet as pq
    import torch.nn.functional as F
    from torchvision.models import get_model_weights

    rows = {r["key"]: r for r in pq.read_table(ade_shards / "ade20k" / "val" / "none" / "eval" /
                                               f"segment-torchvision_{SEG_MODEL}.parquet").to_pylist()}
    transform = get_model_weights(SEG_MODEL).DEFAULT.transforms()
    model.eval()
    checked = 0
    for s in load(ade_shards, "ade20k", "val", "none"):
        if s.get("segmentation") is None:
            continue
        with torch.inference_mode():
            logits = model(transform(s["image"])[None])["out"]
        pred = F.interpolate(logits, size=s["image"].shape[-2:], mode="bilinear", align_corners=False)[0].argmax(0)
        want = confusion_counts(pred.numpy() + 1, s["segmentation"].numpy())
        assert rows[s["__key__"]]["intersection"] == want["intersection"]
        assert rows[s["__key__"]]["union"] == want["union"]
        checked += 1
    assert checked == 2


def test_segmentation_eval_refuses_torchvision_voc_weights(ade_shards):
    from click.testing import CliRunner

    from pipeline.cli import cli

    res = CliRunner().invoke(cli, ["eval", str(ade_shards), "--dataset", "ade20k", "--split", "val", "--task",
                                   "segment", "--model", f"torchvision:{SEG_MODEL}", "--workers", "0"])
    assert res.exit_code == 2 and "21 Pascal VOC classes" in res.output
    res = CliRunner().invoke(cli, ["eval", str(ade_shards), "--dataset", "ade20k", "--split", "val", "--task",
                                   "segment", "--model", "torchvision:resnet18", "--weights", __file__,
                                   "--workers", "0"])
    assert res.exit_code == 2 and "not a segmentation model" in res.output


@pytest.mark.slow
def test_segformer_fine_tuned_evaluated_beside_its_start_with_recovered(ade_shards, tmp_path):
    """A tiny random SegFormer (hf: folder): killed and resumed; the fine-tuned state dict evaluated
    with --weights and --variant beside the model's own results; the report's recovered column is
    (tuned - start) / (start at none - start) of those results."""
    import math

    import pandas as pd
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    from pipeline.report import write_report

    folder = tmp_path / "tiny-segformer"
    torch.manual_seed(0)
    cfg = SegformerConfig(num_labels=150, hidden_sizes=[8, 16, 24, 32], decoder_hidden_size=32, depths=[1, 1, 1, 1],
                          num_attention_heads=[1, 1, 1, 1])
    SegformerForSemanticSegmentation(cfg).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    work = tmp_path / "run"
    work.mkdir()
    out = shutil.copytree(ade_shards, tmp_path / "shards")
    killed_and_resumed(out, work, segment_args(f"hf:{folder}"), "ade20k", "train")
    final = work / "final.pt"
    net = SegformerForSemanticSegmentation.from_pretrained(folder)
    net.load_state_dict(torch.load(final, weights_only=True))  # strict

    mpq_eval(out, "ade20k", "val", "segment", f"hf:{folder}")
    mpq_eval(out, "ade20k", "val", "segment", f"hf:{folder}", "--weights", str(final), "--variant", "ft")
    tag = f"hf_{str(folder).strip('/').replace('/', '_')}"
    start, tuned = segment_results(out, f"segment-{tag}"), segment_results(out, f"segment-{tag}-ft")
    assert tuned["none"]["model"]["variant"] == "ft" and "variant" not in start["none"]["model"]
    assert tuned["none"]["model"]["weights_sha256"] != start["none"]["model"]["weights_sha256"]
    target = write_report(out)
    table = pd.read_csv(target / "eval.csv").set_index(["model", "tag"])
    s0, s, t = (start["none"]["figures"]["miou"], start["jpeg-q10"]["figures"]["miou"],
                tuned["jpeg-q10"]["figures"]["miou"])
    got = table.loc[(f"hf:{folder} [ft]", "jpeg-q10"), "recovered"]
    if s0 != s:
        assert got == pytest.approx((t - s) / (s0 - s))
        assert "| recovered |" in (target / "report.md").read_text()
    else:
        assert math.isnan(got)


# ------------------------------------------------------------------------------------------- detection

DET_MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the smallest torchvision detector


@pytest.fixture(scope="module")
def coco_shards(tmp_path_factory, coco) -> Path:
    """COCO val2017 (5 images: polygons, a crowd RLE, one without annotations, grayscale, CMYK) at
    jpeg:quality=10 and none; the test trains and evaluates on it (the fixture's train2017 has one image)."""
    out = tmp_path_factory.mktemp("finetune-coco")
    result = fx.transcode("coco", coco["val2017"], out, split="val2017", codecs=("jpeg:quality=10", "none"),
                          samples_per_shard=2)
    assert not result.failed
    return out


@pytest.mark.slow  # a detector's steps on CPU: about a minute alone, three on a loaded machine
def test_detection_killed_resumed_and_evaluated(coco_shards, tmp_path):
    import json

    from torchvision.models import get_model

    base = ("--task", "detect", "--split", "val2017", "--model", f"torchvision:{DET_MODEL}", "--codec", SEG_MIXTURE)
    killed_and_resumed(coco_shards, tmp_path, base, "coco", "val2017")
    final = tmp_path / "final.pt"
    state = torch.load(final, weights_only=True)
    get_model(DET_MODEL, weights=None, weights_backbone=None, num_classes=91).load_state_dict(state)  # strict
    torch.manual_seed(7)
    initial = get_model(DET_MODEL, weights=None, weights_backbone=None, num_classes=91).state_dict()
    assert any(not torch.equal(initial[k], state[k]) for k in initial if k.startswith("roi_heads."))

    mpq_eval(coco_shards, "coco", "val2017", "detect", f"torchvision:{DET_MODEL}", "--weights", str(final),
             "--variant", "ft")
    for tag in ("jpeg-q10", "none"):
        doc = json.loads((coco_shards / "coco" / "val2017" / tag / "eval" /
                          f"detect-torchvision_{DET_MODEL}-ft.json").read_text())
        assert doc["samples"] == sum(1 for _ in load(coco_shards, "coco", "val2017", doc["codec"])) == 5
        assert doc["model"]["weights"] == str(final) and doc["model"]["variant"] == "ft"
        assert doc["errors"] == 0 and "figures" in doc

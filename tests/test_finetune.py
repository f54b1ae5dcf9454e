"""examples/finetune.py under a real 2-process torchrun (gloo, CPU): stopped mid-epoch after a
checkpoint and resumed, it trains on every sample of the epoch exactly once across both runs and
ranks, and its output is a plain state dict for the torchvision architecture that ``mpq eval
--weights`` evaluates on every lossy set."""
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


@pytest.fixture(scope="module")
def shards(tmp_path_factory, imagenet_folders) -> Path:
    out = tmp_path_factory.mktemp("finetune-shards")
    result = fx.transcode("imagenet", imagenet_folders["train"], out, split="train",
                          codecs=("jpeg:quality=5", "none"), samples_per_shard=2)
    assert not result.failed
    return out


def torchrun(shards: Path, work: Path, *extra: str, ranks: int = 2) -> str:
    """The script under torchrun with ``ranks`` processes (1: plain python, no process group)."""
    launcher = (["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", str(ranks)]
                if ranks > 1 else [])
    cmd = [sys.executable, *launcher, str(SCRIPT), str(shards), "--codec", MIXTURE, "--arch", "resnet18", "--num-classes", "1000",
           "--size", "64", "--batch-size", "1", "--workers", "2", "--buffer", "4", "--seed", "7",
           "--checkpoint", str(work / "ck.pt"), "--log-keys", str(work / "keys"), "--output", str(work / "final.pt"),
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


def evaluated_by_mpq_eval(weights: Path, out: Path) -> None:
    """The fine-tuned state dict goes into ``mpq eval --weights`` unchanged: every set, every sample."""
    import json

    from click.testing import CliRunner

    from pipeline.cli import cli

    res = CliRunner().invoke(cli, ["eval", str(out), "--dataset", "imagenet", "--split", "val", "--task", "classify",
                                   "--model", "torchvision:resnet18", "--weights", str(weights), "--workers", "0",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
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

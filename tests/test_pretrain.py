"""examples/pretrain.py: the ImageNet recipe (warmup + cosine, label smoothing, no weight decay on
norms and biases, EMA) from scratch on the loop it shares with finetune.py, under a real 2-process
torchrun (gloo, CPU): killed mid-epoch and resumed it sees every sample once, and both outputs
(the weights and their EMA) are evaluated by ``mpq eval --weights``."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from pipeline.loaders import load  # noqa: E402
from test_finetune import REPO, logged, mpq_eval, shards, torchrun, val_shards  # noqa: E402,F401 (fixtures)

SCRIPT = REPO / "examples" / "pretrain.py"
RECIPE = ("--codec", "jpeg:quality=5", "--arch", "resnet18", "--num-classes", "1000", "--size", "64", "--epochs", "1",
          "--warmup-epochs", "0.5", "--ema-decay", "0.9", "--lr", "0.05")


def common():
    spec = importlib.util.spec_from_file_location("pretrain_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # puts examples/ on the path
    import train_common

    return mod, train_common


def test_schedule_and_weight_decay_groups_by_hand():
    mod, tc = common()
    args = mod.parse_args(["shards", "--codec", "none", "--epochs", "10", "--warmup-epochs", "2"])
    assert (args.schedule, args.label_smoothing, args.weight_decay, args.amp, args.lr) == ("cosine", 0.1, 1e-4,
                                                                                           True, None)
    assert tc.lr_factor(args, 0.0) == pytest.approx(0.01)
    assert tc.lr_factor(args, 1.0) == pytest.approx(0.01 + 0.99 / 2)
    assert tc.lr_factor(args, 2.0) == pytest.approx(1.0)
    assert tc.lr_factor(args, 6.0) == pytest.approx(0.5)  # half way through the cosine
    assert tc.lr_factor(args, 10.0) == pytest.approx(0.0, abs=1e-12)
    args.schedule = "constant"
    assert tc.lr_factor(args, 7.0) == 1.0
    with pytest.raises(SystemExit):
        mod.parse_args(["shards"])  # pre-training needs its setting

    from torchvision.models import get_model

    net = get_model("resnet18", weights=None, num_classes=3)
    decay, plain = tc.param_groups(net, 1e-4, decay_norm_bias=False)
    names = {id(p): n for n, p in net.named_parameters()}
    assert decay["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0
    no_decay = sorted(names[id(p)] for p in plain["params"])
    bn = sorted(n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert no_decay == sorted([f"{b}.weight" for b in bn] + [f"{b}.bias" for b in bn] + ["fc.bias"])
    assert len(decay["params"]) + len(plain["params"]) == len(list(net.parameters()))
    (everything,) = tc.param_groups(net, 1e-4, decay_norm_bias=True)
    assert len(everything["params"]) == len(list(net.parameters()))


def test_pretrain_killed_resumed_and_evaluated(shards, val_shards, tmp_path):  # noqa: F811 (fixtures)
    out1 = torchrun(shards, tmp_path, "--stop-after-steps", "2", script=SCRIPT, base=RECIPE)
    assert "stopped after 2 steps" in out1
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert ck["format"] == "mpq-pretrain/1" and ck["ema"]["n_averaged"].item() == 2
    out2 = torchrun(shards, tmp_path, "--resume", script=SCRIPT, base=RECIPE)
    assert "resumed at step 2, epoch 0" in out2 and "epoch 0 done" in out2
    everything = sorted(s["__key__"] for s in load(shards, "imagenet", "train", "none"))
    assert sorted(logged(tmp_path)) == everything  # each sample exactly once

    from torchvision.models import get_model

    final, ema = tmp_path / "final.pt", tmp_path / "final.ema.pt"
    weights = {p: torch.load(p, weights_only=True) for p in (final, ema)}
    for state in weights.values():
        get_model("resnet18", weights=None, num_classes=1000).load_state_dict(state)  # strict
    assert not torch.equal(weights[final]["conv1.weight"], weights[ema]["conv1.weight"])
    assert f"--weights {final} --variant final" in out2
    for path, variant in ((final, "final"), (ema, "final.ema")):
        mpq_eval(val_shards, "imagenet", "val", "classify", "torchvision:resnet18", "--weights", str(path),
                 "--variant", variant)
        for tag in ("jpeg-q5", "none"):
            doc = json.loads((val_shards / "imagenet" / "val" / tag / "eval" /
                              f"classify-torchvision_resnet18-{variant}.json").read_text())
            assert doc["samples"] == sum(1 for _ in load(val_shards, "imagenet", "val", doc["codec"])) > 0
            assert doc["model"]["weights"] == str(path) and doc["model"]["variant"] == variant
            assert 0 <= doc["figures"]["top1"] <= 1 and math.isfinite(doc["figures"]["top1"])


@pytest.mark.slow
def test_resumed_pretraining_ends_with_the_uninterrupted_weights_and_ema(shards, tmp_path):  # noqa: F811
    """Warmup and cosine rates are a function of the position, the EMA is in the checkpoint: stopping
    and resuming changes neither the weights nor their average."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for d in (whole, parts):
        d.mkdir()
    torchrun(shards, whole, "--no-augment", script=SCRIPT, base=RECIPE)
    torchrun(shards, parts, "--no-augment", "--stop-after-steps", "1", script=SCRIPT, base=RECIPE)
    torchrun(shards, parts, "--no-augment", "--resume", script=SCRIPT, base=RECIPE)
    for name in ("final.pt", "final.ema.pt"):
        a, b = (torch.load(Path(d) / name, weights_only=True) for d in (whole, parts))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

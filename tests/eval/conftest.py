"""Evaluation fixtures: finished sets written by the real pipeline from small generated datasets,
and random-weight models saved where ``--weights`` or a ``save_pretrained`` folder can read them."""
from __future__ import annotations

from pathlib import Path

import pytest

import audio_fixtures as afx
import fixtures as fx
from eval_fixtures import build_spoken_librispeech, run_transcode


@pytest.fixture(scope="session")
def imagenet_out(tmp_path_factory) -> Path:
    """imagenet/val: none and jpeg:quality=10, 3 ok samples in 2 shards (one source image is broken)."""
    base = tmp_path_factory.mktemp("eval-imagenet")
    built = fx.build_imagenet(base / "src", "folders")
    run_transcode("imagenet", built["val"].root, base / "out", "val", ("none", "jpeg:quality=10"))
    return base / "out"


@pytest.fixture(scope="session")
def resnet_weights(tmp_path_factory) -> Path:
    """A random-weight resnet18 with the 1,000 ImageNet classes, saved as a state dict.

    The fixture's three classes (labels 0, 1, 217) get a large bias, so they are always the top three
    (every ok sample correct at top-5, top-1 right for about a third): figures that differ between
    counting and not counting a failed sample, instead of a random 1,000-way head's all-zero figures.
    """
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-1000.pt"
    net = torchvision.models.get_model("resnet18", weights=None, num_classes=1000)
    with torch.no_grad():
        net.fc.bias[[0, 1, 217]] += 20.0
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def ade_out(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("eval-ade")
    built = fx.build_ade20k(base / "src")
    run_transcode("ade20k", built["train"].root, base / "out", "train", ("none", "jpeg:quality=10"))
    return base / "out"


@pytest.fixture(scope="session")
def segformer_dir(tmp_path_factory) -> Path:
    """A tiny SegFormer (150 classes, random weights) and its processor, written by save_pretrained."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    cfg = SegformerConfig(num_labels=150, hidden_sizes=[8, 16, 24, 32], decoder_hidden_size=32, depths=[1, 1, 1, 1],
                          num_attention_heads=[1, 1, 1, 1])
    folder = tmp_path_factory.mktemp("segformer") / "tiny-segformer"
    SegformerForSemanticSegmentation(cfg).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def speech_out(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    base = tmp_path_factory.mktemp("eval-speech")
    texts = build_spoken_librispeech(base / "src")
    run_transcode("librispeech", base / "src", base / "out", "dev-clean", ("none", "opus:kbps=12"))
    return base / "out", texts


@pytest.fixture(scope="session")
def musdb_out(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("eval-musdb")
    afx.build_musdb_hq(base / "src", "test", seconds=1.0)
    run_transcode("musdb", base / "src", base / "out", "test", ("none", "opus:kbps=32"))
    return base / "out"


@pytest.fixture(scope="session")
def umx_weights(tmp_path_factory) -> Path:
    """Random open-unmix (umxhq architecture) weights as a state dict."""
    import openunmix
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("umx") / "umx-random.pt"
    torch.save(openunmix.umxhq(targets=["drums", "bass", "other", "vocals"], pretrained=False).state_dict(), path)
    return path

"""Learned codecs (.bin payloads): the loader returns the stored reconstruction (.png), the pixels
the metrics were computed on, without weights; ``decode_payload=True`` decodes the .bin with the
codec instead. Weights: a randomly initialised bmshj2018-factorized written here (no download)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("compressai")

import fixtures as fx  # noqa: E402
from pipeline import TranscodeConfig, transcode  # noqa: E402
from pipeline.errors import SampleError  # noqa: E402
from pipeline.loaders import load  # noqa: E402

ARCH, QUALITY = "bmshj2018-factorized", 1
SPEC = f"{ARCH}:quality={QUALITY}"


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    from compressai.zoo.image import cfgs, model_architectures, model_urls

    root = tmp_path_factory.mktemp("learned")
    hub = root / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.manual_seed(0)
    model = model_architectures[ARCH](*cfgs[ARCH][QUALITY])
    model.update(force=True)
    tmp = hub / "w.tmp"
    torch.save(model.state_dict(), tmp)
    name = f"{ARCH}-test-{QUALITY}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth.tar"
    tmp.rename(hub / name)
    src = root / "src"
    src.mkdir()
    for key, (photo, h, w) in {"a": ("astronaut", 48, 64), "b": ("chelsea", 45, 70)}.items():
        (src / f"{key}.png").write_bytes(fx.png_bytes(fx.photo(photo, h, w)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch"))
        mp.setenv("MPQ_OFFLINE", "1")
        mp.delenv("MPQ_WEIGHTS_DIR", raising=False)
        mp.delenv("MPQ_DEVICE", raising=False)
        mp.setitem(model_urls[ARCH]["mse"], QUALITY, "https://models.invalid/v1/" + name)
        outs = {}
        for variant, opts in {"both": {}, "no-bin": {"store_bitstream": False}}.items():
            config = TranscodeConfig.create("imagefolder", src, [SPEC], out=root / variant, **opts)
            assert not transcode(config).failed
            outs[variant] = root / variant
        yield outs, mp


def stored(out: Path) -> dict[str, dict[str, bytes]]:
    folder = next((out / "imagefolder" / "all").iterdir())
    members: dict[str, dict[str, bytes]] = {}
    for tar in folder.glob("*.tar"):
        for key, items in fx.group_members(fx.read_tar(tar)).items():
            members[key] = dict(items)
    return members


def test_learned_sets_load_the_stored_reconstruction(learned):
    outs, _ = learned
    for variant, out in outs.items():
        members = stored(out)
        samples = list(load(out, "imagefolder", "all", SPEC, image_format="numpy"))
        assert len(samples) == 2
        for s in samples:
            m = members[s["__key__"]]
            assert np.array_equal(s["image"], fx.pil_raw(m["png"]))
            assert s["bits"] == json.loads(m["json"])["bits"]
            assert ("bin" in m) == (variant == "both")


def test_decode_payload_runs_the_codec_on_the_bin(learned):
    outs, _ = learned
    members = stored(outs["both"])
    for s in load(outs["both"], "imagefolder", "all", SPEC, image_format="numpy", decode_payload=True):
        assert np.array_equal(s["image"], fx.pil_raw(members[s["__key__"]]["png"]))  # same device: same pixels
    with pytest.raises(SampleError, match="no .bin payload"):
        list(load(outs["no-bin"], "imagefolder", "all", SPEC, decode_payload=True))

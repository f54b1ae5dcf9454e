"""MS-ILLM and No-GAN (NeuralCompression's HiFiC checkpoints) through the same pipeline as CompressAI's zoo.

No real weights can be downloaded here: the tests write RANDOMLY INITIALISED checkpoints of the real
architecture (181 million parameters, the published hyper-parameters) under the published file names
(``msillm_target_0.035bpp.ckpt``, ...) with the published parameter names, which are CompressAI 1.2.4's
(``hyper_bottleneck._matrix0``, ...: NeuralCompression trained with it; CompressAI 1.2.7 renamed them).
As in the published recipe (GAN fine-tuning with a frozen encoder and bottleneck), the two test
checkpoints share the encoder and entropy model and differ in the decoder; the msillm file carries
its entropy coder's CDF tables, the noganms file does not (they are computed on load).

The name and shape table below was written from NeuralCompression's source (``HiFiCEncoder``,
``HiFiCGenerator``, ``HiFiCAutoencoder``) and CompressAI 1.2.4's entropy models; it was checked once
against ``neuralcompression`` 0.3.1's own ``HiFiCAutoencoder`` (same names in the same order, same
shapes, identical bitstreams and decoded pixels for shared random weights), which cannot be installed here.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import checkpoints as ck
import fixtures as fx
import numpy as np
import pytest
from PIL import Image

from pipeline import TranscodeConfig, transcode
from pipeline.codecs import bitstream, get_codec, make_codec, msillm
from pipeline.codecs.spec import parse_spec
from pipeline.errors import ConfigError, MissingWeightsError

IMAGES = {"photo": ("astronaut", 48, 64), "odd": ("chelsea", 37, 50)}  # padded to the stride 64: 64 x 64
SPECS = ["msillm:quality=1", "noganms:quality=1"]
FILES = {"msillm": "msillm_target_0.035bpp.ckpt", "noganms": "noganms_target_0.035bpp.ckpt"}


# --------------------------------------------------------------------------- the published names


def _conv(name: str, cin: int, cout: int, k: int, transposed: bool = False) -> dict[str, tuple[int, ...]]:
    weight = (cin, cout, k, k) if transposed else (cout, cin, k, k)
    return {f"{name}.weight": weight, f"{name}.bias": (cout,)}


def _norm(name: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.gamma": (1, c, 1, 1), f"{name}.beta": (1, c, 1, 1)}


def published_shapes() -> dict[str, tuple[int, ...] | None]:
    """Every state-dict entry of ``HiFiCAutoencoder()`` as published; None: a CDF table, sized by ``update()``."""
    out: dict[str, tuple[int, ...] | None] = {}
    widths = [3, 60, 120, 240, 480, 960]
    for i in range(5):  # encoder.blocks.i = Sequential(conv, ChannelNorm2D, ReLU)
        out |= _conv(f"encoder.blocks.{i}.0", widths[i], widths[i + 1], 7 if i == 0 else 3)
        out |= _norm(f"encoder.blocks.{i}.1", widths[i + 1])
    out |= _conv("encoder.blocks.5", 960, 220, 3)
    out |= _norm("decoder.block_0.0", 220) | _conv("decoder.block_0.1", 220, 960, 3) | _norm("decoder.block_0.2", 960)
    for i in range(9):  # Sequential(conv, norm, ReLU, conv, norm)
        for j in (0, 3):
            out |= _conv(f"decoder.resid_blocks.{i}.sequence.{j}", 960, 960, 3)
            out |= _norm(f"decoder.resid_blocks.{i}.sequence.{j + 1}", 960)
    up = widths[::-1]
    for i in range(4):  # Sequential(transposed conv, norm, ReLU)
        out |= _conv(f"decoder.blocks.{i}.0", up[i], up[i + 1], 3, transposed=True) | _norm(f"decoder.blocks.{i}.1",
                                                                                             up[i + 1])
    out |= _conv("decoder.blocks.4", 60, 3, 7)
    out |= _conv("hyper_analysis.0", 220, 320, 3) | _conv("hyper_analysis.2", 320, 320, 5)
    out |= _conv("hyper_analysis.4", 320, 320, 5)
    for branch in ("mean", "scale"):
        name = f"hyper_synthesis_{branch}"
        out |= _conv(f"{name}.0", 320, 320, 5, True) | _conv(f"{name}.2", 320, 320, 5, True)
        out |= _conv(f"{name}.4", 320, 220, 3)
    filters = (1, 3, 3, 3, 3, 1)  # EntropyBottleneck(320): filters (3, 3, 3, 3)
    for i in range(5):
        out[f"hyper_bottleneck._matrix{i}"] = (320, filters[i + 1], filters[i])
        out[f"hyper_bottleneck._bias{i}"] = (320, filters[i + 1], 1)
        if i < 4:
            out[f"hyper_bottleneck._factor{i}"] = (320, filters[i + 1], 1)
    out |= {"hyper_bottleneck.quantiles": (320, 1, 3), "hyper_bottleneck.target": (3,),
            "hyper_bottleneck.likelihood_lower_bound.bound": (1,), "latent_bottleneck.scale_bound": (1,),
            "latent_bottleneck.lower_bound_scale.bound": (1,), "latent_bottleneck.likelihood_lower_bound.bound": (1,),
            "latent_bottleneck.scale_table": None}
    for module in ("hyper_bottleneck", "latent_bottleneck"):
        out |= {f"{module}.{b}": None for b in ("_offset", "_quantized_cdf", "_cdf_length")}
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, Path]:
    """Random-init checkpoints (seeded) under the published names; see the module docstring."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressai")
    from pipeline.codecs.msillm_net import HiFiCAutoencoder

    folder = tmp_path_factory.mktemp("nc-store")
    torch.manual_seed(0)
    model = HiFiCAutoencoder()
    bare = ck.published_names({k: v.clone() for k, v in model.state_dict().items()})  # no CDF tables yet
    model.update(force=True)
    torch.save(ck.published_names(model.state_dict()), folder / FILES["msillm"])
    gen = torch.Generator().manual_seed(1)
    for key, value in bare.items():  # another decoder, the same encoder and entropy model
        if key.startswith("decoder.") and key.endswith(".weight"):
            value.add_(torch.randn(value.shape, generator=gen) * value.std() * 0.5)
    torch.save(bare, folder / FILES["noganms"])
    del model, bare
    return {name: folder / f for name, f in FILES.items()}


def _hub(mp: pytest.MonkeyPatch, root: Path) -> Path:
    """An empty torch hub cache under ``root``, downloads off."""
    mp.setenv("TORCH_HOME", str(root / "torch"))
    mp.setenv("MPQ_OFFLINE", "1")
    mp.delenv("MPQ_WEIGHTS_DIR", raising=False)
    mp.setenv("MPQ_DEVICE", "cpu")
    hub = root / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    return hub


def _place(folder: Path, src: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    return _hub(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("photos")
    pixels = {}
    for key, (name, h, w) in IMAGES.items():
        pixels[key] = fx.photo(name, h, w)
        Image.fromarray(pixels[key]).save(root / f"{key}.png")
    return root, pixels


_members = fx.set_members


@pytest.fixture(scope="module")
def run(tmp_path_factory, store, photos):
    """One pipeline run of both codecs over both photos; returns (root, result, members by codec)."""
    root = tmp_path_factory.mktemp("nc-run")
    with pytest.MonkeyPatch.context() as mp:
        hub = _hub(mp, root)
        for path in store.values():
            _place(hub, path)
        result = transcode(TranscodeConfig.create("imagefolder", photos[0], SPECS, out=root / "out"))
        yield root, result, {parse_spec(s.spec).name: (Path(s.folder), _members(Path(s.folder))) for s in result.sets}


# --------------------------------------------------------------------------- names, specs, licence


def test_state_dict_names_and_shapes_are_the_published_ones():
    """What the codec loads strictly: its architecture's state dict, in the checkpoints' naming."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressai")
    from pipeline.codecs.msillm_net import HiFiCAutoencoder

    with torch.device("meta"):  # names and shapes only, nothing allocated
        state = ck.published_names(HiFiCAutoencoder().state_dict())
    expected = published_shapes()
    assert set(state) == set(expected)
    assert {k: tuple(v.shape) for k, v in state.items() if expected[k] is not None} == \
        {k: v for k, v in expected.items() if v is not None}
    # 181,481,103 parameters and 7 constants (the tail targets and lower bounds)
    assert sum(v.numel() for k, v in state.items() if expected[k] is not None) == 181_481_103 + 7
    state.pop("decoder.blocks.4.bias")
    with pytest.raises(RuntimeError, match="decoder.blocks.4.bias"):
        HiFiCAutoencoder.from_state_dict(state)


def test_specs_urls_and_licence(capsys):
    from pipeline.cli import main

    assert parse_spec("msillm").canonical == "msillm:quality=3"
    assert parse_spec("msillm:quality=vlo1").tag == "msillm-qvlo1"
    assert parse_spec("noganms:quality=6").tag == "noganms-q6"
    with pytest.raises(ConfigError, match="not one of 1, 2, 3, 4, 5, 6"):
        parse_spec("noganms:quality=vlo2")  # the very low rates exist only with the GAN
    with pytest.raises(ConfigError, match="not one of vlo1"):
        parse_spec("msillm:quality=7")
    with pytest.raises(ConfigError, match="unknown parameter 'bpp'"):
        parse_spec("msillm:bpp=0.1")
    prefix = "https://dl.fbaipublicfiles.com/NeuralCompression/2023-muckley-msillm/"
    assert get_codec("msillm").checkpoint_url(parse_spec("msillm:quality=vlo2")) == \
        prefix + "msillm_target_0.00438bpp.ckpt"
    assert get_codec("noganms").checkpoint_url(parse_spec("noganms:quality=4")) == \
        prefix + "noganms_target_0.3bpp.ckpt"
    assert main(["codecs", "--modality", "image"]) == 0
    listing = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(("msillm ", "noganms "))]
    assert len(listing) == 2 and all("CC-BY-NC 4.0" in ln for ln in listing)


# --------------------------------------------------------------------------- the pipeline run


@pytest.mark.parametrize("spec", SPECS)
def test_shard_stores_bin_png_json_and_exact_bits(run, store, photos, spec):
    import torch

    _, result, shards = run
    assert not result.failed, result.failed
    spec = parse_spec(spec)
    folder, members = shards[spec.name]
    assert folder.name == spec.tag and sorted(members) == sorted(IMAGES)
    for key, items in members.items():
        assert list(items) == ["bin", "png", "json"]
        data, record, rgb = items["bin"], json.loads(items["json"]), photos[1][key]
        assert record["bits"] == 8 * len(data)
        stream = bitstream.unpack(data)
        assert (stream.spec, stream.height, stream.width) == (spec.canonical, *rgb.shape[:2])
        assert len(stream.groups) == 2 and all(len(g) == 1 and g[0] for g in stream.groups)  # latent, hyper-latent
        with Image.open(io.BytesIO(items["png"])) as img:
            rec = np.asarray(img.convert("RGB"))
        assert rec.shape == rgb.shape
        assert (record["device"], record["torch"]) == ("cpu", torch.__version__)
        assert record["weights_sha256"] == hashlib.sha256(store[spec.name].read_bytes()).hexdigest()
        assert items["png"] == bitstream.png_bytes(rec)
    with warnings.catch_warnings():  # the stored stream decodes to the stored pixels (`mpq decode`: below)
        warnings.simplefilter("error", bitstream.CrossDeviceWarning)
        items = members["photo"]
        assert bitstream.png_bytes(bitstream.decode_bytes(items["bin"], record=json.loads(items["json"]))) == \
            items["png"]


def test_tables_computed_on_load_code_as_the_stored_ones(run):
    """The noganms file has no CDF tables, the msillm file has them, for the same encoder and entropy model:
    the strings agree, and the decoders (different weights) give different pictures."""
    _, _, shards = run
    for key in IMAGES:
        a, b = (bitstream.unpack(shards[name][1][key]["bin"]) for name in ("msillm", "noganms"))
        assert a.groups == b.groups
        assert shards["msillm"][1][key]["png"] != shards["noganms"][1][key]["png"]


@pytest.mark.parametrize("name", ["msillm", "noganms"])
def test_mpq_decode_gives_the_stored_png(run, tmp_path, monkeypatch, name):
    """`mpq decode key.bin -o key.png` gives the PNG the shard stores, byte for byte."""
    from pipeline.cli import main

    root, _, shards = run
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    monkeypatch.setenv("MPQ_OFFLINE", "1")
    monkeypatch.setenv("MPQ_DEVICE", "cpu")
    items = shards[name][1]["odd"]
    src = tmp_path / "odd.bin"
    src.write_bytes(items["bin"])
    src.with_suffix(".json").write_bytes(items["json"])
    assert main(["decode", str(src), "-o", str(tmp_path / "out.png")]) == 0
    assert (tmp_path / "out.png").read_bytes() == items["png"]
    record = json.loads(items["json"])
    with pytest.warns(bitstream.CrossDeviceWarning, match="weights_sha256: encoded with 'f00d'"):  # other weights
        bitstream.decode_bytes(items["bin"], record={**record, "weights_sha256": "f00d"})
    src.write_bytes(items["bin"][:-3])  # a truncated stream: a one-line error, exit 2
    assert main(["decode", str(src), "-o", str(tmp_path / "bad.png")]) == 2


@pytest.mark.slow  # about 30 s: a fresh interpreter imports torch and loads the 726 MB model
def test_mpq_decode_in_a_fresh_process_gives_the_stored_png(run, tmp_path):
    """`mpq decode key.bin -o key.png` elsewhere: the model loaded again, its CDF tables computed again."""
    root, _, shards = run
    items = shards["noganms"][1]["odd"]
    src = tmp_path / "odd.bin"
    src.write_bytes(items["bin"])
    src.with_suffix(".json").write_bytes(items["json"])
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, TORCH_HOME=str(root / "torch"), MPQ_OFFLINE="1", MPQ_DEVICE="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    env.pop("MPQ_WEIGHTS_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "decode", str(src), "-o", str(tmp_path / "out.png")],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out.png").read_bytes() == items["png"]


def test_padding_does_not_leak_into_the_output(run, monkeypatch):
    root, _, _ = run
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    monkeypatch.setenv("MPQ_OFFLINE", "1")
    monkeypatch.setenv("MPQ_DEVICE", "cpu")
    codec = make_codec(parse_spec("msillm:quality=1"))
    for h, w in [(1, 1), (65, 3)]:
        enc = codec.encode(fx.photo("coffee", h, w))
        stream = bitstream.unpack(enc.payload)
        assert (stream.height, stream.width) == (h, w)
        assert codec.decode(enc.payload).shape == (h, w, 3)


# --------------------------------------------------------------------------- weights


def test_missing_checkpoint_offline_is_named_before_any_work(hub, photos, tmp_path):
    out = tmp_path / "out"
    config = TranscodeConfig.create("imagefolder", photos[0], ["jpeg:quality=50", "msillm:quality=vlo1"], out=out)
    with pytest.raises(MissingWeightsError) as err:
        transcode(config)
    message = str(err.value)
    name = "msillm_target_0.00218bpp.ckpt"
    assert name in message and str(hub / name) in message and "--offline" in message
    assert not out.exists()  # nothing written, not even for the jpeg setting


def _dummy(folder: Path, name: str) -> Path:
    """A small stand-in file under a published name (fetching and lookup never read it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"checkpoint bytes " + name.encode())
    return folder / name


def test_checkpoint_is_downloaded_once_into_the_hub_cache(hub, monkeypatch, tmp_path):
    src = _dummy(tmp_path / "server", FILES["msillm"])
    monkeypatch.delenv("MPQ_OFFLINE")
    monkeypatch.setattr(msillm, "URL_PREFIX", src.parent.as_uri() + "/")
    spec = parse_spec("msillm:quality=1")
    path = get_codec("msillm").checkpoint(spec)
    assert path == hub / FILES["msillm"] and path.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in hub.iterdir()) == [FILES["msillm"]]  # no temporary file left
    monkeypatch.setattr(msillm, "URL_PREFIX", (hub.parent / "gone").as_uri() + "/")  # a dead link now
    assert get_codec("msillm").checkpoint(spec) == path  # found, not fetched again


def test_weights_dir_overrides_the_hub_cache(hub, monkeypatch, tmp_path):
    spec = parse_spec("noganms:quality=1")
    _dummy(hub, FILES["noganms"])
    own = tmp_path / "my-weights"
    monkeypatch.setenv("MPQ_WEIGHTS_DIR", str(own))
    with pytest.raises(MissingWeightsError, match=str(own / FILES["noganms"])):  # the hub copy is not used
        get_codec("noganms").preflight(spec)
    _dummy(own, FILES["noganms"])
    assert get_codec("noganms").checkpoint(spec) == own / FILES["noganms"]


def test_a_checkpoint_of_another_model_is_refused(hub):
    import torch

    torch.save({"encoder.blocks.0.0.weight": torch.zeros(60, 3, 7, 7)}, hub / FILES["noganms"])
    with pytest.raises(ConfigError, match="does not fit noganms"):
        make_codec(parse_spec("noganms:quality=1")).encode(fx.photo("coffee", 8, 8))

"""Learned codecs (CompressAI zoo, HiFiC) through the same pipeline as the classical ones.

No real weights can be downloaded here, so every architecture runs on a checkpoint this test
writes itself: a RANDOMLY INITIALISED model in the zoo's configuration for quality 1, saved as a
plain state dict under a zoo-style name whose hash prefix is computed from the written file, in a
temporary torch hub cache; the zoo's URL table is pointed at that name. Random weights give poor
pictures, but they exercise all the plumbing: lookup, hash check, safe loading, padding, entropy
coding, the .bin format, storing, and decoding in a fresh process.
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

import fixtures as fx
import numpy as np
import pytest
from PIL import Image

from pipeline import TranscodeConfig, transcode
from pipeline.codecs import bitstream
from pipeline.codecs import codec_names, get_codec, make_codec
from pipeline.codecs.compressai_zoo import ZooCodec
from pipeline.codecs.hific import HiFiC
from pipeline.errors import ConfigError, MissingWeightsError
from pipeline.metrics.image import psnr
from pipeline.codecs.spec import parse_spec
from pipeline.codecs.weights import WeightsHashError

# CompressAI's own zoo (NeuralCompression's MS-ILLM shares ZooCodec's coding: tests/codecs/test_msillm.py)
ZOO = [n for n in codec_names("image") if issubclass(get_codec(n), ZooCodec)
       and get_codec(n).__module__ == "pipeline.codecs.compressai_zoo"]
QUALITY = 1
IMAGES = {"photo": ("astronaut", 64, 96), "odd": ("chelsea", 45, 70)}  # odd: not a multiple of any stride


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def zoo_store(tmp_path_factory) -> dict[str, Path]:
    """Random-init checkpoints (seeded), one per architecture, named ``<arch>-test-1-<sha256[:8]>.pth.tar``."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressai")
    from compressai.zoo.image import cfgs, model_architectures

    store = tmp_path_factory.mktemp("zoo-store")
    out = {}
    for arch in ZOO:
        torch.manual_seed(0)
        model = model_architectures[arch](*cfgs[arch][QUALITY])
        model.update(force=True)  # fills the CDF tables, as the zoo's checkpoints carry them
        tmp = store / f"{arch}.tmp"
        torch.save(model.state_dict(), tmp)
        final = store / f"{arch}-test-{QUALITY}-{_sha256(tmp)[:8]}.pth.tar"
        tmp.rename(final)
        out[arch] = final
    return out


def _point_zoo_at(mp: pytest.MonkeyPatch, store: dict[str, Path], prefix: str = "https://models.invalid/v1/") -> None:
    from compressai.zoo.image import model_urls

    for arch, path in store.items():
        mp.setitem(model_urls[arch]["mse"], QUALITY, prefix + path.name)


def _hub_env(mp: pytest.MonkeyPatch, root: Path, store: dict[str, Path]) -> Path:
    """An empty torch hub cache under ``root``, downloads off, zoo URLs naming the test files."""
    mp.setenv("TORCH_HOME", str(root / "torch"))
    mp.setenv("MPQ_OFFLINE", "1")
    mp.delenv("MPQ_WEIGHTS_DIR", raising=False)
    mp.setenv("MPQ_DEVICE", "cpu")  # CPU-encode/CPU-decode, also where a GPU is present (see the GPU test)
    _point_zoo_at(mp, store)
    hub = root / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    return hub


def _place(folder: Path, src: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / (name or src.name)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


@pytest.fixture
def hub(tmp_path, monkeypatch, zoo_store) -> Path:
    return _hub_env(monkeypatch, tmp_path, zoo_store)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("photos")
    pixels = {}
    for key, (name, h, w) in IMAGES.items():
        pixels[key] = fx.photo(name, h, w)
        Image.fromarray(pixels[key]).save(root / f"{key}.png")
    return root, pixels


def _members(folder: Path) -> dict[str, list[tuple[str, bytes]]]:
    """key -> [(extension, bytes), ...] in stored order."""
    return {key: list(members.items()) for key, members in fx.set_members(folder).items()}


def _png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "RGB"
        return np.asarray(img).copy()


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory, zoo_store, photos):
    """One pipeline run encoding both photos with every architecture; returns (root, result, shards by arch)."""
    root = tmp_path_factory.mktemp("zoo-run")
    with pytest.MonkeyPatch.context() as mp:
        hub = _hub_env(mp, root, zoo_store)
        for path in zoo_store.values():
            _place(hub, path)
        config = TranscodeConfig.create("imagefolder", photos[0], [f"{a}:quality={QUALITY}" for a in ZOO],
                                        out=root / "out", samples_per_shard=10)
        result = transcode(config)
        shards = {parse_spec(s.spec).name: (Path(s.folder), _members(Path(s.folder))) for s in result.sets}
        yield root, result, shards


# --------------------------------------------------------------------------- specs


def test_params_follow_the_zoo_tables():
    pytest.importorskip("compressai")
    from compressai.zoo.image import model_urls

    assert ZOO == sorted(["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018",
                          "cheng2020-anchor", "cheng2020-attn"])
    for arch in ZOO:
        params = {p.name: p for p in get_codec(arch).params}
        assert set(params["metric"].choices) == set(model_urls[arch])
        for metric in model_urls[arch]:
            qualities = sorted(model_urls[arch][metric])
            assert (params["quality"].minimum, params["quality"].maximum) == (qualities[0], qualities[-1])
            assert qualities == list(range(qualities[0], qualities[-1] + 1))


def test_spec_forms():
    spec = parse_spec("mbt2018:quality=5,metric=ms-ssim")
    assert spec.canonical == "mbt2018:quality=5,metric=ms-ssim"
    assert spec.tag == "mbt2018-q5-mmsmssim"
    assert parse_spec("cheng2020-attn").canonical == "cheng2020-attn:quality=3,metric=mse"
    assert parse_spec("cheng2020-attn:quality=2").tag == "cheng2020-attn-q2"
    assert [s.canonical for s in fx_specs("bmshj2018-factorized:quality=1,8")] == [
        "bmshj2018-factorized:quality=1,metric=mse", "bmshj2018-factorized:quality=8,metric=mse"]
    with pytest.raises(ConfigError, match="above the maximum 6"):
        parse_spec("cheng2020-anchor:quality=7")
    with pytest.raises(ConfigError, match="above the maximum 8"):
        parse_spec("mbt2018:quality=9")
    with pytest.raises(ConfigError, match="not one of mse, ms-ssim"):
        parse_spec("mbt2018-mean:metric=psnr")
    with pytest.raises(ConfigError, match="unknown parameter 'weights_dir'"):
        parse_spec("mbt2018:weights_dir=/tmp")  # a path is no codec setting: MPQ_WEIGHTS_DIR instead


def fx_specs(text: str):
    from pipeline.codecs.spec import parse_specs

    return parse_specs(text)


# --------------------------------------------------------------------------- the pipeline run


@pytest.mark.parametrize("arch", ZOO)
def test_shard_stores_bin_png_json_and_exact_bits(zoo_run, photos, arch):
    import compressai
    import torch

    _, result, shards = zoo_run
    assert not result.failed, result.failed
    folder, members = shards[arch]
    spec = parse_spec(f"{arch}:quality={QUALITY}")
    assert folder.name == spec.tag
    assert sorted(members) == sorted(IMAGES)
    for key, items in members.items():
        assert [ext for ext, _ in items] == ["bin", "png", "json"]
        data, png, record = items[0][1], items[1][1], json.loads(items[2][1])
        rgb = photos[1][key]
        # bits: the whole stream, which is the entropy-coded strings plus the minimal header
        stream = bitstream.unpack(data)
        assert record["bits"] == 8 * len(data)
        assert record["bpp"] == record["bits"] / (rgb.shape[0] * rgb.shape[1])
        header = (4 + 1 + _varint_len(len(spec.canonical)) + len(spec.canonical) + _varint_len(rgb.shape[0])
                  + _varint_len(rgb.shape[1]) + _varint_len(len(stream.groups))
                  + sum(_varint_len(len(g)) + sum(_varint_len(len(s)) for s in g) for g in stream.groups))
        assert len(data) == header + sum(len(s) for g in stream.groups for s in g)
        assert len(stream.groups) == get_codec(arch).groups and all(len(g) == 1 and g[0] for g in stream.groups)
        assert (stream.spec, stream.height, stream.width) == (spec.canonical, *rgb.shape[:2])
        # the reconstruction: an RGB PNG of the image's size whose pixels gave the recorded PSNR
        rec = _png_pixels(png)
        assert rec.shape == rgb.shape
        assert record["psnr"] == pytest.approx(psnr(rgb, rec), abs=1e-9)
        assert png == bitstream.png_bytes(rec)
        # the environment that encoded it, for the check on decode
        assert record["codec"] == spec.canonical
        assert (record["device"], record["torch"], record["compressai"]) == (
            "cpu", torch.__version__, compressai.__version__)
        # decoding the stored stream again in this process gives the stored pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", bitstream.CrossDeviceWarning)
            assert np.array_equal(bitstream.decode_bytes(data, record=record), rec)
    index = json.loads((folder / "index.json").read_text())
    assert index["versions"]["compressai"] == compressai.__version__
    # float kernels picked by CPU: the machine and torch's kernel level that wrote these bytes
    (machine,) = index["versions"]["machines"]
    assert machine["torch_cpu_capability"] == str(torch.backends.cpu.get_cpu_capability())


def test_manifest_records_bits_and_device(zoo_run):
    import pyarrow.parquet as pq

    _, _, shards = zoo_run
    for folder, members in shards.values():
        table = pq.read_table(folder / "manifest.parquet").to_pylist()
        for row in table:
            assert row["status"] == "ok" and row["payload_ext"] == "bin"
            assert row["bits"] == 8 * len(dict(members[row["key"]])["bin"])
            assert row["device"] == "cpu"


def test_decoding_in_a_fresh_process_reproduces_the_stored_png(zoo_run, zoo_store, tmp_path):
    """What a user does later: take key.bin (and key.json) out of a shard and decode it elsewhere."""
    root, _, shards = zoo_run
    jobs = []
    for arch, (_, members) in shards.items():
        for key, items in members.items():
            d = dict(items)
            stem = tmp_path / f"{arch}-{key}"
            stem.with_suffix(".bin").write_bytes(d["bin"])
            stem.with_suffix(".json").write_bytes(d["json"])
            jobs.append((str(stem.with_suffix(".bin")), str(stem.with_suffix(".out.png")), d["png"]))
    script = (
        "import json, sys, warnings\n"
        "from compressai.zoo.image import model_urls\n"
        "from pipeline.codecs import bitstream\n"
        "urls, jobs = json.loads(sys.argv[1])\n"
        "for arch, url in urls.items(): model_urls[arch]['mse'][1] = url\n"
        "warnings.simplefilter('error', bitstream.CrossDeviceWarning)\n"
        "for src, dst in jobs: bitstream.decode_to_png(src, dst)\n"
    )
    urls = {a: f"https://models.invalid/v1/{p.name}" for a, p in zoo_store.items()}
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, TORCH_HOME=str(root / "torch"), MPQ_OFFLINE="1", MPQ_DEVICE="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    env.pop("MPQ_WEIGHTS_DIR", None)
    proc = subprocess.run([sys.executable, "-c", script, json.dumps([urls, [j[:2] for j in jobs]])],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for _, dst, stored_png in jobs:
        out = Path(dst).read_bytes()
        assert np.array_equal(_png_pixels(out), _png_pixels(stored_png))
        assert out == stored_png  # the same PNG settings: byte-identical files


def test_mpq_decode_command_reproduces_the_stored_png(zoo_run, zoo_store, tmp_path, monkeypatch):
    """`mpq decode key.bin -o key.png` gives the PNG the shard stores, byte for byte."""
    from pipeline.cli import main

    root, _, shards = zoo_run
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    monkeypatch.setenv("MPQ_OFFLINE", "1")
    monkeypatch.setenv("MPQ_DEVICE", "cpu")
    _point_zoo_at(monkeypatch, zoo_store)
    arch = ZOO[0]
    key, items = next(iter(shards[arch][1].items()))
    d = dict(items)
    src = tmp_path / f"{key}.bin"
    src.write_bytes(d["bin"])
    src.with_suffix(".json").write_bytes(d["json"])
    assert main(["decode", str(src), "-o", str(tmp_path / "out.png")]) == 0
    assert (tmp_path / "out.png").read_bytes() == d["png"]
    src.write_bytes(d["bin"][:-3])  # a truncated stream: a one-line error, exit 2
    assert main(["decode", str(src), "-o", str(tmp_path / "bad.png")]) == 2


def test_a_stream_from_another_device_warns_on_decode(zoo_run):
    _, _, shards = zoo_run
    _, members = shards["bmshj2018-factorized"]
    d = dict(members["photo"])
    record = json.loads(d["json"])
    with pytest.warns(bitstream.CrossDeviceWarning, match="device: encoded with 'cuda'"):
        bitstream.decode_bytes(d["bin"], record={**record, "device": "cuda"})
    with pytest.warns(bitstream.CrossDeviceWarning, match="compressai"):
        bitstream.decode_bytes(d["bin"], record={**record, "compressai": "0.0.1"})


def test_a_stream_is_decoded_only_by_its_own_setting(zoo_run):
    _, _, shards = zoo_run
    data = dict(shards["bmshj2018-hyperprior"][1]["photo"])["bin"]
    other = make_codec(parse_spec("mbt2018-mean:quality=1"))
    with pytest.raises(bitstream.BitstreamError, match="encoded with bmshj2018-hyperprior"):
        other.decode(data)


# --------------------------------------------------------------------------- members and options


def test_bin_and_png_members_can_each_be_turned_off(hub, zoo_store, photos, tmp_path):
    _place(hub, zoo_store["bmshj2018-factorized"])
    spec = f"bmshj2018-factorized:quality={QUALITY}"
    kept = {}
    for name, opts in {"both": {}, "no-bin": {"store_bitstream": False},
                       "no-png": {"store_reconstruction": False}}.items():
        result = transcode(TranscodeConfig.create("imagefolder", photos[0], [spec], out=tmp_path / name, **opts))
        assert not result.failed
        kept[name] = _members(Path(result.sets[0].folder))
    for key in IMAGES:
        both = dict(kept["both"][key])
        assert [e for e, _ in kept["no-bin"][key]] == ["png", "json"]
        assert [e for e, _ in kept["no-png"][key]] == ["bin", "json"]
        assert dict(kept["no-bin"][key])["png"] == both["png"]
        assert dict(kept["no-png"][key])["bin"] == both["bin"]  # deterministic encoding
        # bits is the stream's size even when the stream is not stored
        assert json.loads(dict(kept["no-bin"][key])["json"])["bits"] == 8 * len(both["bin"])
    with pytest.raises(ConfigError, match="do not turn both off"):
        TranscodeConfig.create("imagefolder", photos[0], [spec], store_bitstream=False, store_reconstruction=False)


def test_padding_does_not_leak_into_the_output(hub, zoo_store):
    """Sizes around the stride: the decoded image has the input's size, its edges are real content."""
    _place(hub, zoo_store["bmshj2018-hyperprior"])
    codec = make_codec(parse_spec(f"bmshj2018-hyperprior:quality={QUALITY}"))
    for h, w in [(1, 1), (63, 65), (64, 64), (17, 130)]:
        rgb = fx.photo("coffee", h, w)
        enc = codec.encode(rgb)
        stream = bitstream.unpack(enc.payload)
        assert (stream.height, stream.width) == (h, w)
        assert codec.decode(enc.payload).shape == (h, w, 3)


# --------------------------------------------------------------------------- weights


def test_missing_checkpoint_fails_before_any_work(hub, photos, tmp_path):
    from compressai.zoo.image import model_urls

    name = Path(model_urls["mbt2018"]["mse"][QUALITY]).name
    out = tmp_path / "out"
    config = TranscodeConfig.create("imagefolder", photos[0], ["jpeg:quality=50", f"mbt2018:quality={QUALITY}"],
                                    out=out)
    with pytest.raises(MissingWeightsError) as err:
        transcode(config)
    message = str(err.value)
    assert name in message and str(hub / name) in message and "--weights-dir" in message
    assert not out.exists()  # nothing was written, not even for the jpeg setting


def test_missing_checkpoint_when_the_download_fails(hub, photos, monkeypatch, tmp_path):
    from compressai.zoo.image import model_urls

    monkeypatch.delenv("MPQ_OFFLINE")
    url = (tmp_path / "nowhere" / "mbt2018-1-0123abcd.pth.tar").as_uri()  # fails like a dead link, offline
    monkeypatch.setitem(model_urls["mbt2018"]["mse"], QUALITY, url)
    with pytest.raises(MissingWeightsError, match="could not be downloaded") as err:
        get_codec("mbt2018").preflight(parse_spec(f"mbt2018:quality={QUALITY}"))
    assert url in str(err.value) and str(hub / "mbt2018-1-0123abcd.pth.tar") in str(err.value)


def test_checkpoint_is_downloaded_into_the_hub_cache(hub, zoo_store, monkeypatch, photos, tmp_path):
    from compressai.zoo.image import model_urls

    monkeypatch.delenv("MPQ_OFFLINE")
    src = zoo_store["bmshj2018-factorized"]
    monkeypatch.setitem(model_urls["bmshj2018-factorized"]["mse"], QUALITY, src.as_uri())
    result = transcode(TranscodeConfig.create("imagefolder", photos[0], [f"bmshj2018-factorized:quality={QUALITY}"],
                                              out=tmp_path / "out"))
    assert not result.failed and result.sets[0].ok == len(IMAGES)
    assert (hub / src.name).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in hub.iterdir()) == [src.name]  # no temporary file left


def test_mismatched_checkpoint_is_refused(hub, zoo_store, photos, tmp_path):
    wrong = _place(hub, zoo_store["bmshj2018-hyperprior"], zoo_store["mbt2018-mean"].name)  # other content
    out = tmp_path / "out"
    with pytest.raises(WeightsHashError, match="refused"):
        transcode(TranscodeConfig.create("imagefolder", photos[0], [f"mbt2018-mean:quality={QUALITY}"], out=out))
    assert wrong.exists() and not out.exists()


def test_weights_dir_overrides_the_hub_cache(hub, zoo_store, monkeypatch, tmp_path):
    spec = parse_spec(f"bmshj2018-factorized:quality={QUALITY}")
    src = zoo_store["bmshj2018-factorized"]
    _place(hub, src)
    own = tmp_path / "my-weights"
    monkeypatch.setenv("MPQ_WEIGHTS_DIR", str(own))
    with pytest.raises(MissingWeightsError, match=str(own / src.name)):  # the hub copy is not used
        get_codec(spec.name).preflight(spec)
    _place(own, src)
    assert get_codec(spec.name).checkpoint(spec) == own / src.name
    rgb = fx.photo("rocket", 32, 48)
    assert make_codec(spec).decode(make_codec(spec).encode(rgb).payload).shape == rgb.shape


def test_a_checkpoint_for_another_architecture_is_refused(hub, zoo_store, monkeypatch, tmp_path):
    """A file whose hash matches its name but that holds another model's weights."""
    from compressai.zoo.image import model_urls

    src = zoo_store["bmshj2018-factorized"]
    monkeypatch.setitem(model_urls["cheng2020-anchor"]["mse"], QUALITY, "https://models.invalid/" + src.name)
    _place(hub, src)
    codec = make_codec(parse_spec(f"cheng2020-anchor:quality={QUALITY}"))
    with pytest.raises(ConfigError, match="does not fit cheng2020-anchor"):
        codec.encode(fx.photo("coffee", 16, 16))


# --------------------------------------------------------------------------- devices


def test_device_choice(monkeypatch):
    torch = pytest.importorskip("torch")
    from pipeline.codecs import devices

    monkeypatch.setenv("MPQ_DEVICE", "cpu")
    assert devices.choose_device() == "cpu"
    assert devices.choose_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("MPQ_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        devices.choose_device()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no GPU"):
            devices.choose_device("cuda")
    monkeypatch.setenv("MPQ_INFERENCE_THREADS", "two")
    with pytest.raises(ConfigError, match="not a number of threads"):
        devices.inference_threads()
    monkeypatch.setenv("MPQ_INFERENCE_THREADS", "3")
    assert devices.inference_threads() == 3


def test_learned_codecs_ask_for_a_gpu_and_store_reconstructions():
    learned = [*ZOO, "hific", "msillm", "noganms", "compressai", "msillm-own"]
    for name in learned:
        cls = get_codec(name)
        assert cls.needs_gpu and cls.reconstruction and cls.extension == "bin"
    assert not any(get_codec(n).reconstruction for n in codec_names("image") if n not in learned)


def test_gpu_encode_and_decode(hub, zoo_store, photos, monkeypatch, tmp_path):
    """Where a GPU is present: the stream records it, decodes on it to the stored PNG, and a CPU decode warns."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no GPU here")
    monkeypatch.setenv("MPQ_DEVICE", "cuda")
    arch = "bmshj2018-hyperprior"
    _place(hub, zoo_store[arch])
    result = transcode(TranscodeConfig.create("imagefolder", photos[0], [f"{arch}:quality={QUALITY}"],
                                              out=tmp_path / "out"))
    assert not result.failed
    for items in _members(Path(result.sets[0].folder)).values():
        d = dict(items)
        record = json.loads(d["json"])
        assert record["device"] == "cuda" and record["device_name"] == torch.cuda.get_device_name()
        assert np.array_equal(bitstream.decode_bytes(d["bin"], record=record), _png_pixels(d["png"]))
        # the CPU may decode other pixels: measured by bench/bench_neural.py, not asserted here
        with pytest.warns(bitstream.CrossDeviceWarning, match="device: encoded with 'cuda', decoding with 'cpu'"):
            bitstream.decode_bytes(d["bin"], record=record, device="cpu")


# --------------------------------------------------------------------------- HiFiC


def test_hific_specs():
    assert parse_spec("hific").canonical == "hific:level=mi"
    assert parse_spec("hific:level=lo").tag == "hific-llo"
    assert [s.canonical for s in fx_specs("hific:level=lo,hi")] == ["hific:level=lo", "hific:level=hi"]
    with pytest.raises(ConfigError, match="not one of lo, mi, hi"):
        parse_spec("hific:level=max")


def test_hific_says_how_to_install_it(photos, tmp_path):
    if HiFiC.unavailable() is None:
        pytest.skip("tensorflow-compression is installed here")
    assert "pip install 'mpq-pipeline[hific]'" in HiFiC.unavailable()
    with pytest.raises(ConfigError, match=r"codec hific cannot run here: .*mpq-pipeline\[hific\]"):
        transcode(TranscodeConfig.create("imagefolder", photos[0], ["hific:level=lo"], out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_hific_missing_weights_name_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("MPQ_OFFLINE", "1")
    monkeypatch.delenv("MPQ_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / "mpq-pipeline" / "tfc_metagraphs" / "hific-hi.metagraph"
    with pytest.raises(MissingWeightsError, match=str(expected)) as err:
        HiFiC.preflight(parse_spec("hific:level=hi"))
    assert "https://storage.googleapis.com/tensorflow_compression/metagraphs/hific-hi.metagraph" in str(err.value)
    monkeypatch.setenv("MPQ_WEIGHTS_DIR", str(tmp_path / "w"))
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "w" / "hific-hi.metagraph")):
        HiFiC.preflight(parse_spec("hific:level=hi"))
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "hific-hi.metagraph").write_bytes(b"pre-placed")
    assert HiFiC.checkpoint(parse_spec("hific:level=hi")) == tmp_path / "w" / "hific-hi.metagraph"


def _toy_metagraph() -> bytes:
    """A metagraph with HiFiC's interface (``sender``/``receiver`` signatures, uint8 image in and out)
    whose "entropy coder" is PNG: it tests our loading, packing and cropping, not HiFiC's model."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    info = tf1.saved_model.utils.build_tensor_info
    graph = tf.Graph()
    with graph.as_default():
        image = tf1.placeholder(tf.uint8, [1, None, None, 3])
        string = tf.reshape(tf.image.encode_png(image[0]), [1])
        shape = tf.shape(image)[1:3]
        r_string = tf1.placeholder(tf.string, [1])
        r_shape = tf1.placeholder(tf.int32, [2])
        decoded = tf.reshape(tf.image.decode_png(r_string[0], channels=3), tf.concat([[1], r_shape, [3]], 0))
        build = tf1.saved_model.signature_def_utils.build_signature_def
        metagraph = tf1.train.export_meta_graph(graph=graph)
        metagraph.signature_def["sender"].CopyFrom(
            build({"image": info(image)}, {"a": info(string), "b": info(shape)}, "sender"))
        metagraph.signature_def["receiver"].CopyFrom(
            build({"a": info(r_string), "b": info(r_shape)}, {"image": info(decoded)}, "receiver"))
    return metagraph.SerializeToString()


def test_hific_plumbing_with_a_toy_metagraph(monkeypatch, tmp_path, photos):
    """Only where tensorflow-compression is installed (the [hific] extra); real HiFiC weights cannot be
    downloaded here, so a toy graph with HiFiC's signatures stands in for them."""
    pytest.importorskip("tensorflow_compression")
    monkeypatch.setenv("MPQ_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("MPQ_OFFLINE", "1")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "hific-lo.metagraph").write_bytes(_toy_metagraph())
    result = transcode(TranscodeConfig.create("imagefolder", photos[0], ["hific:level=lo"], out=tmp_path / "out"))
    assert not result.failed and result.sets[0].ok == len(IMAGES)
    members = _members(Path(result.sets[0].folder))
    for key, items in members.items():
        d = dict(items)
        record = json.loads(d["json"])
        assert record["bits"] == 8 * len(d["bin"]) and record["device"] in ("cpu", "cuda")
        assert np.array_equal(_png_pixels(d["png"]), photos[1][key])  # the toy coder is lossless
        assert np.array_equal(bitstream.decode_bytes(d["bin"], record=record), photos[1][key])

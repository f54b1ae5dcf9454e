"""Decoding from the latents the encoder kept (:mod:`pipeline.codecs.latents`): the same pixels as the bytes give.

The models are RANDOMLY INITIALISED instances of CompressAI's architecture classes and of a small
``msillm_net.HiFiCAutoencoder`` (the published layout with few channels), written as a researcher's
own checkpoint or handed to the codec directly; the images are small photographs.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import fixtures as fx
import numpy as np
import pytest
from PIL import Image

from pipeline import TranscodeConfig, transcode
from pipeline.codecs import batching, bitstream, latents, make_codec
from pipeline.codecs.spec import parse_spec
from pipeline.modalities import image as image_modality

torch = pytest.importorskip("torch")
pytest.importorskip("compressai")

KEPT = ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean"]
RGBS = [("astronaut", 50, 60), ("chelsea", 64, 64), ("coffee", 40, 70)]  # the first two: 64 x 64 once padded


pytestmark = pytest.mark.usefixtures("offline_cpu")


def _own(tmp_path: Path, arch: str, seed: int = 0) -> object:
    """A codec over a random ``arch`` model (N=16, M=24) written as an own checkpoint. Models are cached
    per process by their weights' hash, and checks per model: equal seeds share both."""
    from compressai.zoo.image import model_architectures

    torch.manual_seed(seed)
    model = model_architectures[arch](16, 24)
    model.update(force=True)
    path = tmp_path / f"{arch}-{seed}.pth"
    torch.save(model.state_dict(), path)
    return make_codec(parse_spec(f"compressai:arch={arch},checkpoint={path}"))


def _small_msillm(monkeypatch) -> object:
    """``msillm:quality=1`` over a small random HiFiC autoencoder (the published layout, few channels)."""
    from pipeline.codecs import msillm_net

    torch.manual_seed(0)
    model = msillm_net.HiFiCAutoencoder(latent_features=8, hyper_features=8, residual_blocks=1)
    model.update(force=True)
    model.eval().requires_grad_(False)
    codec = make_codec(parse_spec("msillm:quality=1"))
    monkeypatch.setattr(codec, "_model", lambda: model)
    monkeypatch.setattr(codec, "environment", lambda: {"device": "cpu"})  # no weights file to hash
    return codec


def _rgbs() -> list[np.ndarray]:
    return [fx.photo(name, h, w) for name, h, w in RGBS]


def _check_same_pixels(codec, batch: int) -> None:
    """One image at a time or a batch: synthesised from the kept latents, the pixels of the bytes. A batch
    goes through the synthesis together only where this CPU's synthesis of the batch is, layer by layer,
    float for float that of one latent at a time (at small sizes it may not be: then one at a time, with
    a warning); either way from the kept latents."""
    rgbs = _rgbs()
    encs = [codec.encode(r) for r in rgbs] if batch == 1 else codec.encode_batch(rgbs[:batch])
    assert all(isinstance(e.kept, latents.Kept) for e in encs)
    groups = [encs[i: i + 1] for i in range(len(encs))] if batch == 1 else [encs]
    model = codec._model()
    shape = codec._latent_shape(model, [bitstream.unpack(encs[0].payload)])
    key = ("kept", batching.model_token(model), "cpu", shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error", batching.KeptLatentInexactWarning)
        warnings.simplefilter("ignore", batching.BatchInexactWarning)
        for _ in range(2):  # the first call of a key is checked against the bytes; the second relies on it
            for part in groups:
                pixels, source = codec.decode_encoded(part)
                assert source == "latent"
                assert all(np.array_equal(p, codec.decode(e.payload)) for p, e in zip(pixels, part))
    assert batching.batch_exact(key) is True
    if batch > 1:  # the second call checked the batch's synthesis against one latent at a time
        assert batching.batch_exact(("synthesis", batching.model_token(model), "cpu", shape, batch)) is not None


@pytest.mark.parametrize("arch", KEPT)
def test_kept_latents_give_the_pixels_of_the_bytes(arch, tmp_path):
    codec = _own(tmp_path, arch)
    assert latents.dialect(codec._model()) is not None
    _check_same_pixels(codec, 1)


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_kept_latents_of_a_batch(arch, tmp_path, monkeypatch):
    from pipeline.codecs.compressai_zoo import CompressAIModel

    monkeypatch.setattr(CompressAIModel, "cpu_batch", 2)
    _check_same_pixels(_own(tmp_path, arch), 2)


def test_kept_latents_of_msillm(monkeypatch):
    codec = _small_msillm(monkeypatch)
    assert latents.dialect(codec._model()).synthesis_module == "decoder"
    _check_same_pixels(codec, 1)


def test_the_kept_latent_is_what_decompress_feeds_the_synthesis(tmp_path):
    """y_hat kept by the encoder against the one entropy decoding recovers (captured at g_s), bit for bit."""
    codec = _own(tmp_path, "mbt2018-mean")
    model = codec._model()
    enc = codec.encode(fx.photo("astronaut", 64, 64))
    seen = []
    handle = model.g_s.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        codec.decode(enc.payload)
    finally:
        handle.remove()
    (decoded,) = seen
    assert decoded.dtype == enc.kept.y_hat.dtype and torch.equal(decoded, enc.kept.y_hat)


def test_autoregressive_models_decode_their_bytes(tmp_path):
    """mbt2018 decodes y serially through its context model inside compress: nothing kept."""
    codec = _own(tmp_path, "mbt2018")
    assert latents.dialect(codec._model()) is None
    enc = codec.encode(fx.photo("astronaut", 64, 64))
    assert enc.kept is None
    pixels, source = codec.decode_encoded([enc])
    assert source == "bytes" and np.array_equal(pixels[0], codec.decode(enc.payload))


def test_a_library_whose_compress_reads_otherwise_decodes_its_bytes(tmp_path, monkeypatch):
    """The dialects restate CompressAI 1.2.8's compress: a version whose source differs gets none, so its
    streams are its own compress's, decoded from their bytes."""
    codec = _own(tmp_path, "mbt2018-mean")
    assert latents.dialect(codec._model()) is not None
    monkeypatch.setitem(latents._CHECKED_SOURCES, "MeanScaleHyperprior", "0" * 16)
    latents._compressai.cache_clear()
    try:
        assert latents.dialect(codec._model()) is None
        assert codec.encode(fx.photo("astronaut", 64, 64)).kept is None
    finally:
        monkeypatch.undo()
        latents._compressai.cache_clear()
    assert latents.dialect(codec._model()) is not None


def test_a_differing_latent_falls_back_to_the_bytes_and_warns(tmp_path):
    codec = _own(tmp_path, "bmshj2018-hyperprior", seed=11)  # weights no other test uses: a model not checked yet
    rgb = fx.photo("astronaut", 64, 64)
    enc = codec.encode(rgb)
    y_hat = enc.kept.y_hat.clone()
    y_hat[0, 0, 0, 0] += 1.0  # as if the encoder's y_hat were not the decoder's
    enc = dataclasses.replace(enc, kept=latents.Kept(enc.kept.token, y_hat))
    with pytest.warns(batching.KeptLatentInexactWarning, match="decoded from their bytes"):
        pixels, source = codec.decode_encoded([enc])
    assert source == "bytes" and np.array_equal(pixels[0], codec.decode(enc.payload))
    model = codec._model()
    assert batching.batch_exact(("kept", batching.model_token(model), "cpu", (1, 1))) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, source = codec.decode_encoded([codec.encode(rgb)])  # decided for this key: the bytes, no new check
    assert source == "bytes" and np.array_equal(again[0], pixels[0])


def test_a_float_difference_in_the_synthesis_is_seen(tmp_path, monkeypatch):
    """A synthesis that differs by one part in 10^7 (what another kernel can do): rarely a pixel, always a float."""
    codec = _own(tmp_path, "mbt2018-mean", seed=12)  # weights no other test uses: a model not checked yet
    real = latents.dialect(codec._model())
    drifting = latents.Dialect(real.name, real.compress, lambda m, y: real.synthesize(m, y) * (1 + 1e-7),
                               real.synthesis_module)
    monkeypatch.setattr(latents, "dialect", lambda model: drifting)
    enc = codec.encode(fx.photo("chelsea", 64, 64))
    with pytest.warns(batching.KeptLatentInexactWarning):
        pixels, source = codec.decode_encoded([enc])
    assert source == "bytes" and np.array_equal(pixels[0], codec.decode(enc.payload))


def test_a_batch_dependent_synthesis_synthesises_one_latent_at_a_time(tmp_path, monkeypatch):
    """A synthesis whose floats depend on the batch size (as another kernel for another batch can): the
    kept latents are still used, one at a time, and the pixels are those of the bytes."""
    from pipeline.codecs.compressai_zoo import CompressAIModel

    monkeypatch.setattr(CompressAIModel, "cpu_batch", 2)
    codec = _own(tmp_path, "bmshj2018-hyperprior", seed=13)  # weights no other test uses: a model not checked yet
    real = latents.dialect(codec._model())
    by_batch = latents.Dialect(real.name, real.compress,
                               lambda m, y: real.synthesize(m, y) * (1 + 1e-7 * (y.shape[0] - 1)), real.synthesis_module)
    monkeypatch.setattr(latents, "dialect", lambda model: by_batch)
    rgbs = [fx.photo("astronaut", 64, 64), fx.photo("chelsea", 64, 64)]
    encs = [codec.encode(r) for r in rgbs]  # one at a time: the encoder's own batch check plays no part
    model = codec._model()
    token = batching.model_token(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", batching.KeptLatentInexactWarning)
        for attempt in range(2):  # the first call checks the kept latents; the second the batch's synthesis
            if attempt:
                with pytest.warns(batching.BatchInexactWarning, match="synthesised one at a time"):
                    pixels, source = codec.decode_encoded(encs)
            else:
                pixels, source = codec.decode_encoded(encs)
            assert source == "latent"
            assert all(np.array_equal(p, codec.decode(e.payload)) for p, e in zip(pixels, encs))
    assert batching.batch_exact(("kept", token, "cpu", (1, 1))) is True
    assert batching.batch_exact(("synthesis", token, "cpu", (1, 1), 2)) is False


_members = fx.set_members


def test_transcoded_shards_do_not_depend_on_the_kept_path(tmp_path, monkeypatch):
    """Byte-identical shards with the kept path on and off; the manifest says which decoded; mpq decode
    of a stored .bin gives the stored PNG byte for byte."""
    import pyarrow.parquet as pq

    from pipeline.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, h, w in RGBS:
        Image.fromarray(fx.photo(name, h, w)).save(photos / f"{name}.png")
    spec = _own(tmp_path, "mbt2018-mean").spec.canonical
    shards, sources = {}, {}
    for keep in (True, False):
        monkeypatch.setattr(batching, "KEEP_LATENTS", keep)
        result = transcode(TranscodeConfig.create("imagefolder", photos, [spec], out=tmp_path / f"out-{keep}"))
        assert not result.failed and result.sets[0].ok == len(RGBS)
        folder = Path(result.sets[0].folder)
        shards[keep] = {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}
        sources[keep] = {r["decoded_from"] for r in pq.read_table(folder / "manifest.parquet").to_pylist()}
    assert shards[True] == shards[False] and shards[True]
    assert sources == {True: {"latent"}, False: {"bytes"}}
    members = _members(Path(result.sets[0].folder))
    assert all("decoded_from" not in json.loads(d["json"]) for d in members.values())
    monkeypatch.setattr(batching, "KEEP_LATENTS", True)
    for key, d in members.items():
        src = tmp_path / f"{key}.bin"
        src.write_bytes(d["bin"])
        src.with_suffix(".json").write_bytes(d["json"])
        assert main(["decode", str(src), "-o", str(tmp_path / f"{key}.out.png")]) == 0
        assert (tmp_path / f"{key}.out.png").read_bytes() == d["png"]


def test_the_modality_records_where_the_pixels_came_from(tmp_path):
    codec = _own(tmp_path, "bmshj2018-hyperprior")
    members, m = image_modality.encode(codec, fx.photo("rocket", 48, 64), {})
    assert m["decoded_from"] == "latent"

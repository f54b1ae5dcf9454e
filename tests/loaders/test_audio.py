"""Audio through the loaders: every audio payload decodes to exactly the source's length and rate,
aligned (its error against the source is the recorded one), with transcripts, stems and kbps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

import audio_fixtures as af  # noqa: E402
from pipeline import TranscodeConfig, transcode  # noqa: E402
from pipeline.metrics.audio import audio_mse  # noqa: E402
from pipeline.codecs import codec_names, get_codec  # noqa: E402
from pipeline.loaders import load  # noqa: E402
from pipeline.loaders.tables import HF_WEBDATASET  # noqa: E402
from pipeline.codecs.spec import parse_spec  # noqa: E402

#: one setting per registered ffmpeg audio codec (EnCodec, which needs weights, is tested below)
SETTINGS = {"mp3": "mp3:kbps=32", "opus": "opus:kbps=24,vbr=off", "aac": "aac:kbps=32", "vorbis": "vorbis:kbps=48"}
SPLIT = "dev-clean"


def test_every_audio_codec_has_a_setting_here():
    assert set(codec_names("audio")) - {"encodec", "none"} <= set(SETTINGS)


@pytest.fixture(scope="module")
def libri(tmp_path_factory):
    built = af.build_librispeech(tmp_path_factory.mktemp("libri-src"))
    out = tmp_path_factory.mktemp("libri-out")
    specs = ["none", *(SETTINGS[n] for n in SETTINGS if get_codec(n).unavailable() is None)]
    config = TranscodeConfig.create("librispeech", built.root, specs, out=out, split=SPLIT, samples_per_shard=2)
    assert not transcode(config).failed
    return built, out, specs


def records(out: Path, dataset: str, split: str, spec: str) -> dict[str, dict]:
    folder = out / dataset / split / parse_spec(spec).tag
    return {r["key"]: r for r in pq.read_table(folder / "manifest.parquet").to_pylist() if r["status"] == "ok"}


def test_librispeech_samples_are_the_source_length_and_aligned(libri):
    built, out, specs = libri
    for spec in specs:
        rows = records(out, "librispeech", SPLIT, spec)
        samples = list(load(out, "librispeech", SPLIT, spec))
        assert len(samples) == len(rows) == len(built.samples) - len(built.failing)
        for s in samples:
            key, row = s["__key__"], rows[s["__key__"]]
            source = af.as_float(built.samples[key])  # (n, 1)
            audio = s["audio"]
            assert audio.dtype == torch.float32 and tuple(audio.shape) == (1, len(source))
            assert s["sample_rate"] == af.SPEECH_RATE == row["sample_rate"]
            assert s["transcript"] == built.fields[key]["transcript"]
            assert s["speaker_id"] == built.fields[key]["speaker_id"]
            assert s["bits"] == row["bits"] and s["kbps"] == pytest.approx(row["kbps"], rel=1e-12)
            assert "bpp" not in s
            x = audio.numpy().T
            if spec == "none":
                assert np.array_equal(x, source)
            else:  # aligned to the sample: the error is the one the pipeline measured
                assert audio_mse(source, x) == pytest.approx(row["mse"], rel=1e-6)


def test_paired_audio_views_and_batches(libri):
    _, out, specs = libri
    lossy = specs[1]
    ds = load(out, "librispeech", SPLIT, [None, lossy], paired=True)
    for s in ds:
        ref, coded = s["views"]["none"]["audio"], s["views"][parse_spec(lossy).tag]["audio"]
        assert ref.shape == coded.shape and isinstance(s["transcript"], str)
    crop = load(out, "librispeech", SPLIT, lossy, transform=lambda a: a[:, :4000])
    batch = next(iter(torch.utils.data.DataLoader(crop, batch_size=2)))
    assert batch["audio"].shape == (2, 1, 4000) and len(batch["transcript"]) == 2


@pytest.fixture(scope="module")
def musdb(tmp_path_factory):
    built = af.build_musdb_hq(tmp_path_factory.mktemp("musdb-src"))
    out = tmp_path_factory.mktemp("musdb-out")
    for coded in (False, True):
        config = TranscodeConfig.create("musdb", built.root, ["none", "mp3:kbps=96"], out=out / str(coded),
                                        split="test", samples_per_shard=1,
                                        source_options={"encode_stems": coded})
        assert not transcode(config).failed
    return built, out


@pytest.mark.parametrize("coded", [False, True])
def test_musdb_mixture_and_stems(musdb, coded):
    built, out = musdb
    root = out / str(coded)
    rows = records(root, "musdb", "test", "mp3:kbps=96")
    for s in load(root, "musdb", "test", "mp3:kbps=96"):
        key = s["__key__"]
        n = len(built.samples[key])
        assert tuple(s["mixture"].shape) == (2, n) and s["sample_rate"] == af.MUSIC_RATE
        assert audio_mse(af.as_float(built.samples[key]), s["mixture"].numpy().T) == pytest.approx(
            rows[key]["mse"], rel=1e-6)
        assert sorted(s["stems"]) == sorted(built.stems[key])
        for stem, ints in built.stems[key].items():
            assert np.array_equal(s["stems"][stem].numpy().T, af.as_float(ints))  # lossless references
        assert s["track"] == built.fields[key]["track"]
        if coded:
            assert sorted(s["coded_stems"]) == sorted(built.stems[key])
            assert all(v.shape == (2, n) for v in s["coded_stems"].values())
        else:
            assert "coded_stems" not in s
    if not coded:  # (none with encode_stems stores each stem twice as {stem}.flac: refused as ambiguous)
        ref = next(iter(load(root, "musdb", "test", None)))
        assert np.array_equal(ref["mixture"].numpy().T, af.as_float(built.samples[ref["__key__"]]))


def test_musdb_transform_crops_mixture_and_stems_alike(musdb):
    _, out = musdb
    root = out / "True"
    full = {s["__key__"]: s for s in load(root, "musdb", "test", "mp3:kbps=96")}
    seen = []

    def crop(*signals):
        seen.append(len(signals))
        return tuple(x[:, 1000:3000] for x in signals)

    for s in load(root, "musdb", "test", "mp3:kbps=96", transform=crop):
        f = full[s["__key__"]]
        assert torch.equal(s["mixture"], f["mixture"][:, 1000:3000])
        for stem in f["stems"]:
            assert torch.equal(s["stems"][stem], f["stems"][stem][:, 1000:3000])
            assert torch.equal(s["coded_stems"][stem], f["coded_stems"][stem][:, 1000:3000])
    assert seen and set(seen) == {9}  # mixture, 4 coded stems, 4 reference stems in one call


def test_encodec_payloads_decode_through_the_codec(tmp_path, monkeypatch):
    """EnCodec with random weights written here (no download): the loader decodes .ecdc via the codec."""
    pytest.importorskip("encodec")
    af.random_encodec_24khz(tmp_path, monkeypatch)

    built = af.build_librispeech(tmp_path / "src", seconds=0.5)
    config = TranscodeConfig.create("librispeech", built.root, ["encodec:kbps=6"], out=tmp_path / "out",
                                    split=SPLIT, samples_per_shard=4, limit=3)
    assert not transcode(config).failed
    rows = records(tmp_path / "out", "librispeech", SPLIT, "encodec:kbps=6")
    samples = list(load(tmp_path / "out", "librispeech", SPLIT, "encodec:kbps=6"))
    assert len(samples) == len(rows) >= 2
    for s in samples:
        source = af.as_float(built.samples[s["__key__"]])
        assert tuple(s["audio"].shape) == (1, len(source))
        assert audio_mse(source, s["audio"].numpy().T) == pytest.approx(rows[s["__key__"]]["mse"], rel=1e-5)


def test_hf_webdataset_with_audio_shards(libri, tmp_path):
    """What the HF builder does with each audio payload (HF_WEBDATASET), and hf_features() to load
    any set as bytes where datasets would need torchcodec."""
    datasets = pytest.importorskip("datasets")
    from pipeline.loaders import hf_data_files, hf_features

    try:
        import torchcodec  # noqa: F401
        have_torchcodec = True
    except ImportError:
        have_torchcodec = False
    _, out, specs = libri
    for spec in specs:
        ext = "flac" if spec == "none" else get_codec(parse_spec(spec).name).extension
        files = hf_data_files(out, "librispeech", SPLIT, spec)
        cache = tmp_path / parse_spec(spec).tag
        ours = {s["__key__"]: s for s in load(out, "librispeech", SPLIT, spec)}
        kind = HF_WEBDATASET[ext]
        if kind == "audio" and not have_torchcodec:
            with pytest.raises(Exception) as info:  # datasets wraps the ImportError
                datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                                      cache_dir=str(cache / "a"))
            chain, exc = [], info.value
            while exc is not None:
                chain.append(str(exc))
                exc = exc.__cause__
            assert any("torchcodec" in text for text in chain), chain
        elif kind == "audio":
            ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                                       cache_dir=str(cache / "a"))
            assert isinstance(ds.features[ext], datasets.Audio) and len(ds) == len(ours)
        else:
            ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                                       cache_dir=str(cache / "a"))
            assert all(isinstance(row[ext], bytes) for row in ds) and len(ds) == len(ours)
        ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                                   features=hf_features(out, "librispeech", SPLIT, spec), cache_dir=str(cache / "b"))
        rows = list(ds)
        assert len(rows) == len(ours)
        for row in rows:
            mine = ours[row["__key__"]]
            assert row["txt"] == mine["transcript"] and row["json"]["bits"] == mine["bits"]
            assert row["json"]["num_samples"] == mine["audio"].shape[1]
            assert isinstance(row[ext], bytes) and row[ext]

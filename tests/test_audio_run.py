"""Audio through the whole pipeline: plan, shard tasks, tar shards, manifest, index; read everything back.

Every recorded number is recomputed from what the shard holds: bits from the stored file
(Ogg pages, MP3 frame headers), SNR from decoding the payload, lossless members against the
samples the fixtures wrote.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import audio_fixtures as af
import fixtures as fx
from pipeline import TranscodeConfig, parse_spec, transcode
from pipeline.media.audio import decode_audio, remix, resample
from pipeline.metrics.audio import si_sdr, snr
from pipeline.codecs import make_codec
from pipeline.errors import ConfigError
from pipeline.modalities.audio import decode_payload
from pipeline.sources import make_source
from pipeline.run.task import ShardTask, run_shard

REQUIRED_COLUMNS = {"key", "shard", "codec", "status", "error", "sample_rate", "channels", "num_samples", "bits",
                    "kbps", "snr", "source"}


@pytest.fixture(scope="module")
def libri(tmp_path_factory) -> af.BuiltAudio:
    return af.build_librispeech(tmp_path_factory.mktemp("libri"))


@pytest.fixture(scope="module")
def hq(tmp_path_factory) -> af.BuiltAudio:
    return af.build_musdb_hq(tmp_path_factory.mktemp("musdb"))


read_shards = fx.set_members


def decode_back(spec: str, payload: bytes, record: dict) -> np.ndarray:
    """The payload decoded by the codec, cut to the recorded length, back at the source rate and channels."""
    codec = make_codec(parse_spec(spec))
    y, y_rate = codec.decode(payload)
    assert y_rate == record["codec_rate"] and len(y) == record["codec_samples"]
    if y_rate != record["sample_rate"]:
        y = resample(y, y_rate, record["sample_rate"], length=record["num_samples"])
    return remix(y, record["channels"])


@pytest.fixture(scope="module")
def libri_run(libri, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    config = TranscodeConfig.create("librispeech", libri.root, ["mp3:kbps=32", "opus:kbps=24", "none"], out=out,
                                    split="dev-clean", samples_per_shard=3)
    return config, transcode(config)


def test_librispeech_sets_are_complete(libri, libri_run):
    config, result = libri_run
    assert not result.failed and len(result.sets) == 3
    for s in result.sets:
        assert s.samples == len(libri.samples) and s.errors == len(libri.failing)
        index = json.loads((Path(s.folder) / "index.json").read_text())
        assert index["modality"] == "audio" and index["codec"] == s.spec
        table = pq.read_table(Path(s.folder) / "manifest.parquet")
        assert REQUIRED_COLUMNS <= set(table.column_names)
        rows = {r["key"]: r for r in table.to_pylist()}
        for key in libri.failing:
            assert rows[key]["status"] == "error" and "no transcript" in rows[key]["error"]


def test_librispeech_shards_hold_what_was_recorded(libri, libri_run, tmp_path):
    config, result = libri_run
    for s in result.sets:
        spec = s.spec
        members = read_shards(Path(s.folder))
        rows = {r["key"]: r for r in pq.read_table(Path(s.folder) / "manifest.parquet").to_pylist()}
        assert set(members) == set(libri.samples) - libri.failing
        for key, m in members.items():
            record = json.loads(m["json"])
            ext = list(m)[0]
            assert list(m) == [ext, "txt", "json"], "payload first, then the transcript, then the record"
            assert m["txt"].decode() == libri.fields[key]["transcript"] == record["transcript"]
            assert record["speaker_id"] == libri.fields[key]["speaker_id"]
            assert record["chapter_id"] == libri.fields[key]["chapter_id"]
            source = af.as_float(libri.samples[key])
            n = len(source)
            assert record["num_samples"] == rows[key]["num_samples"] == n
            assert record["sample_rate"] == af.SPEECH_RATE and record["channels"] == 1
            if spec == "none":
                ints, rate = af.flac_ints(m["flac"])
                assert ext == "flac" and np.array_equal(ints, libri.samples[key]) and rate == af.SPEECH_RATE
                assert record["snr"] is None and rows[key]["snr"] == math.inf  # lossless: +inf, null in JSON
                assert record["bits"] == 8 * len(m["flac"])
                continue
            codec = parse_spec(spec).name
            assert record["bits"] == rows[key]["bits"] == af.independent_bits(codec, m[ext], tmp_path)
            assert record["kbps"] == pytest.approx(record["bits"] / (n / af.SPEECH_RATE) / 1000)
            decoded = decode_back(spec, m[ext], record)
            assert np.array_equal(decoded, decode_payload(make_codec(parse_spec(spec)), m[ext], record))
            assert af.peak_lag(source, decoded) == 0
            assert record["snr"] == pytest.approx(snr(source, decoded), abs=1e-9)
            assert record["si_sdr"] == pytest.approx(si_sdr(source, decoded), abs=1e-9)
            assert rows[key]["snr"] == pytest.approx(record["snr"])
            path = tmp_path / f"{key}.{ext}"
            path.write_bytes(m[ext])
            assert af.probe(path)["codec"] == codec  # ffprobe reads the stored payload


def test_rerun_is_cached_and_byte_identical(libri_run):
    config, result = libri_run
    before = {p: p.read_bytes() for s in result.sets for p in Path(s.folder).glob("*.tar")}
    again = transcode(config)
    assert again.shards_written == 0 and again.shards_cached == len(before)
    fresh = TranscodeConfig.create(config.dataset, config.root, [c.canonical for c in config.codecs],
                                   out=Path(config.out) / "second", split=config.split,
                                   samples_per_shard=config.samples_per_shard)
    second = transcode(fresh)
    for s, t in zip(result.sets, second.sets):
        for p in sorted(Path(s.folder).glob("*.tar")):
            assert (Path(t.folder) / p.name).read_bytes() == before[p], "same samples, same bytes"


def test_musdb_mixture_coded_stems_lossless(hq, tmp_path):
    config = TranscodeConfig.create("musdb", hq.root, ["mp3:kbps=96", "none"], out=tmp_path, split="test")
    result = transcode(config)
    assert not result.failed
    for s in result.sets:
        members = read_shards(Path(s.folder))
        assert set(members) == set(hq.samples)
        for key, m in members.items():
            ext = "flac" if s.spec == "none" else "mp3"
            assert list(m) == [ext] + [f"{stem}.flac" for stem in sorted(af.STEM_NAMES)] + ["json"]
            for stem in af.STEM_NAMES:
                ints, _ = af.flac_ints(m[f"{stem}.flac"])
                assert np.array_equal(ints, hq.stems[key][stem]), "lossless stems are the source samples"
            record = json.loads(m["json"])
            assert record["channels"] == 2 and record["num_samples"] == len(hq.samples[key])
            if s.spec == "none":
                assert np.array_equal(af.flac_ints(m["flac"])[0], hq.samples[key])
            else:
                decoded = decode_back(s.spec, m["mp3"], record)
                assert af.peak_lag(af.as_float(hq.samples[key]), decoded) == 0


def test_musdb_stems_through_the_codec(hq, tmp_path):
    config = TranscodeConfig.create("musdb", hq.root, ["opus:kbps=64"], out=tmp_path, split="test",
                                    source_options={"encode_stems": True})
    (s,) = transcode(config).sets
    rows = {r["key"]: r for r in pq.read_table(Path(s.folder) / "manifest.parquet").to_pylist()}
    for key, m in read_shards(Path(s.folder)).items():
        record = json.loads(m["json"])
        coded = [f"{stem}.opus" for stem in sorted(af.STEM_NAMES)]
        assert list(m)[:5] == ["opus", *coded]
        assert set(record["tracks"]) == set(af.STEM_NAMES)
        for stem in af.STEM_NAMES:
            t = record["tracks"][stem]
            assert t["bits"] == af.independent_bits("opus", m[f"{stem}.opus"], tmp_path)
            decoded = decode_back("opus:kbps=64", m[f"{stem}.opus"], record)
            assert t["snr"] == pytest.approx(snr(af.as_float(hq.stems[key][stem]), decoded), abs=1e-9)
        assert record["tracks_bits"] == rows[key]["tracks_bits"] == sum(
            record["tracks"][st]["bits"] for st in af.STEM_NAMES)


def test_musdb_stems_in_target_mode_record_their_own_quality(hq, tmp_path):
    """``mp3:vbr_kbps=``: every stem gets its own search, and its record says which LAME quality it got."""
    config = TranscodeConfig.create("musdb", hq.root, ["mp3:vbr_kbps=96"], out=tmp_path, split="test",
                                    source_options={"encode_stems": True})
    (s,) = transcode(config).sets
    assert not s.errors
    for key, m in read_shards(Path(s.folder)).items():
        record = json.loads(m["json"])
        assert record["target_kbps"] == 96.0 and record["kbps"] <= 96.0
        for stem in af.STEM_NAMES:
            t = record["tracks"][stem]
            assert t["target_kbps"] == 96.0 and t["kbps"] <= 96.0 and 0 <= t["chosen_quality"] <= 9
            # the stored stem is what LAME writes at the recorded quality (encoding is deterministic)
            again = make_codec(parse_spec(f"mp3:vbr={t['chosen_quality']}"))
            assert again.encode(af.as_float(hq.stems[key][stem]), hq.rates[key]).payload == m[f"{stem}.mp3"]


def test_options_decoded_flac_pesq_stoi(libri):
    src = make_source("librispeech", str(libri.root), "dev-clean")
    refs = tuple(r for r in src.list() if r.key not in libri.failing)[:2]
    spec = parse_spec("mp3:kbps=24")
    out = Path(libri.root).parent / "options-out"
    task = ShardTask(src, "librispeech", refs, 0, (spec,), str(out),
                     {"decoded_flac": True, "pesq": True, "stoi": True})
    res = run_shard(task)
    (stats,) = res.stats.values()
    folder = Path(out) / "librispeech" / "dev-clean" / spec.tag
    members = read_shards(folder)
    for row in stats["rows"]:
        assert 1.0 <= row["pesq"] <= 4.7 and 0.0 <= row["stoi"] <= 1.0
        m = members[row["key"]]
        assert list(m) == ["mp3", "decoded.flac", "txt", "json"]
        stored = decode_audio(m["decoded.flac"])
        source = af.as_float(libri.samples[row["key"]])
        decoded = decode_back(spec.canonical, m["mp3"], json.loads(m["json"]))
        assert stored.samples.shape == source.shape and stored.bit_depth == 16
        assert np.max(np.abs(stored.samples - decoded)) <= 1 / 32768 + 1e-7  # the decode, rounded to 16 bits
        assert json.loads(m["json"])["pesq"] == pytest.approx(row["pesq"])


def test_audio_codec_on_image_dataset_and_back(tmp_path, libri):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    with pytest.raises(ConfigError, match="audio codec"):
        transcode(TranscodeConfig.create("imagefolder", tmp_path / "img", ["mp3:kbps=64"], out=tmp_path / "o"))
    with pytest.raises(ConfigError, match="image codec"):
        transcode(TranscodeConfig.create("librispeech", libri.root, ["jpeg:quality=50"], out=tmp_path / "o",
                                         split="dev-clean"))


def test_hf_dataset_with_an_audio_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    clips = [af.speech(0.5, 60 + i) for i in range(3)]
    cells = []
    for ints in clips:
        buf = io.BytesIO()
        import soundfile as sf

        sf.write(buf, ints, af.SPEECH_RATE, format="FLAC", subtype="PCM_16")
        cells.append({"bytes": buf.getvalue(), "path": None})
    ds = datasets.Dataset.from_dict({"speech": cells, "label": [0, 1, 0], "text": ["a", "b", "c"]})
    ds = ds.cast_column("speech", datasets.Audio(decode=False))
    ds.save_to_disk(str(tmp_path / "ds"))
    src = make_source("hf", str(tmp_path / "ds"), "train", {"audio_column": "speech", "label_column": "label"})
    assert src.modality == "audio"
    with pytest.raises(ConfigError, match="not both"):
        make_source("hf", str(tmp_path / "ds"), "train", {"audio_column": "speech", "image_column": "x"})
    with pytest.raises(ConfigError, match="no audio column"):
        make_source("hf", str(tmp_path / "ds"), "train", {"audio_column": "voice"}).list()
    config = TranscodeConfig.create("hf", tmp_path / "ds", ["aac:kbps=32", "none"], out=tmp_path / "out",
                                    split="train", source_options={"audio_column": "speech", "label_column": "label"})
    result = transcode(config)
    assert not result.failed
    for s in result.sets:
        assert json.loads((Path(s.folder) / "index.json").read_text())["modality"] == "audio"
        members = read_shards(Path(s.folder))
        assert len(members) == 3
        for i, (key, m) in enumerate(sorted(members.items())):
            record = json.loads(m["json"])
            assert record["label"] == [0, 1, 0][i] and m["cls"] == str(record["label"]).encode()
            assert record["num_samples"] == len(clips[i])
            if s.spec == "none":
                assert np.array_equal(af.flac_ints(m["flac"])[0], clips[i])
            else:
                assert af.peak_lag(af.as_float(clips[i]), decode_back(s.spec, m["m4a"], record)) == 0

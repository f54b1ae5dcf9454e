"""MUSDB18-HQ (WAV folders) and MUSDB18 (.stem.mp4 made with the bundled ffmpeg): listing, stems, options."""
from __future__ import annotations

import numpy as np
import pytest

import audio_fixtures as af
from pipeline.media.audio import decode_audio
from pipeline.errors import ConfigError, SampleError
from pipeline.sources import make_source

STEMS = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="module")
def hq(tmp_path_factory) -> af.BuiltAudio:
    return af.build_musdb_hq(tmp_path_factory.mktemp("musdb-hq"))


@pytest.fixture(scope="module")
def stem(tmp_path_factory) -> af.BuiltAudio:
    return af.build_musdb_stem(tmp_path_factory.mktemp("musdb-stem"))


def test_hq_lists_tracks_and_skips_other_files(hq):
    refs = make_source("musdb", str(hq.root), "test").list()
    assert [r.key for r in refs] == sorted(hq.samples)
    assert {r.get("track") for r in refs} == {f["track"] for f in hq.fields.values()}


def test_hq_stems_are_the_wav_samples_exactly(hq):
    src = make_source("musdb", str(hq.root), "test")
    for ref in src.list():
        raw = src.read(ref)
        assert sorted(raw.attachments) == sorted(f"{s}.flac" for s in STEMS)
        for s in STEMS:
            ints, rate = af.flac_ints(raw.attachments[f"{s}.flac"])
            assert rate == af.MUSIC_RATE and np.array_equal(ints, hq.stems[ref.key][s])
        mix = decode_audio(raw.data)
        assert np.array_equal(mix.samples, af.as_float(hq.samples[ref.key]))
        assert raw.fields["track"] == hq.fields[ref.key]["track"] and not raw.fields["stems_coded"]
        assert not getattr(raw, "tracks", None)


def test_encode_stems_hands_the_stems_to_the_codec(hq):
    src = make_source("musdb", str(hq.root), "test", {"encode_stems": "true"})
    raw = src.read(src.list()[0])
    assert sorted(raw.tracks) == sorted(STEMS)
    assert all(raw.tracks[s] == raw.attachments[f"{s}.flac"] for s in STEMS)
    assert src.describe()["options"] == {"encode_stems": True}
    with pytest.raises(ConfigError, match="true or false"):
        make_source("musdb", str(hq.root), "test", {"encode_stems": "maybe"})
    with pytest.raises(ConfigError, match="unknown option"):
        make_source("musdb", str(hq.root), "test", {"stems": "codec"})


def test_stem_mp4_streams_decode_to_the_inputs(stem):
    src = make_source("musdb", str(stem.root), "test")
    (ref,) = src.list()
    raw = src.read(ref)
    # the reference is the AAC decode, quantized to 24 bits: time-aligned with the WAV that went in
    mix = decode_audio(raw.data)
    want = af.as_float(stem.samples[ref.key])
    assert mix.bit_depth == 24 and mix.samples.shape == want.shape
    assert af.peak_lag(want, mix.samples) == 0
    for i, s in enumerate(STEMS, 1):
        ints24 = decode_audio(raw.attachments[f"{s}.flac"])
        assert ints24.samples.shape == want.shape
        assert af.peak_lag(af.as_float(stem.stems[ref.key][s]), ints24.samples) == 0
        # the bundled ffmpeg decoding that stream agrees with the stored stem
        pcm = np.frombuffer(af.ffmpeg("-i", str(stem.root / "test" / f"{ref.get('track')}.stem.mp4"),
                                      "-map", f"0:{i}", "-f", "f32le", "-c:a", "pcm_f32le", "-"),
                            dtype="<f4").reshape(-1, 2)
        assert pcm.shape == want.shape
        assert np.max(np.abs(pcm - ints24.samples)) < 1e-4


def test_wrong_split_or_root(hq, tmp_path):
    with pytest.raises(ConfigError, match="unknown split"):
        make_source("musdb", str(hq.root), "valid")
    with pytest.raises(ConfigError, match="no train folder"):
        make_source("musdb", str(hq.root), "train").list()
    (tmp_path / "test").mkdir()
    with pytest.raises(ConfigError, match="no tracks"):
        make_source("musdb", str(tmp_path), "test").list()


def test_stem_of_another_length_is_a_sample_error(tmp_path):
    built = af.build_musdb_hq(tmp_path, seconds=0.2)
    track = next(p for p in (tmp_path / "test").iterdir() if p.is_dir())
    af.write_audio(track / "bass.wav", af.music(0.1, 9), af.MUSIC_RATE, fmt="WAV")
    src = make_source("musdb", str(built.root), "test")
    ref = next(r for r in src.list() if r.get("track") == track.name)
    with pytest.raises(SampleError, match="bass.wav"):
        src.read(ref)

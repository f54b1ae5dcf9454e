"""audiofolder: any folder of audio files, class subfolders as labels."""
from __future__ import annotations

import pytest

import audio_fixtures as af
from pipeline.media.audio import decode_audio
from pipeline.errors import ConfigError
from pipeline.sources import make_source


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> af.BuiltAudio:
    return af.build_audiofolder(tmp_path_factory.mktemp("audiofolder"))


def test_lists_audio_with_class_labels(folder):
    src = make_source("audiofolder", str(folder.root), None)
    refs = src.list()
    assert [r.key for r in refs] == sorted(folder.fields)
    assert src.skipped == 1  # notes.txt
    for r in refs:
        assert src.label_fields(r) == folder.fields[r.key]


def test_read_and_decode(folder):
    src = make_source("audiofolder", str(folder.root), None)
    for ref in src.list():
        raw = src.read(ref)
        assert raw.attachments == {"cls": str(folder.fields[ref.key]["label"]).encode()}
        audio = decode_audio(raw.data)
        assert audio.rate == folder.rates[ref.key]
        if ref.key in folder.samples:  # lossless files: exactly the samples written
            assert (audio.samples == af.as_float(folder.samples[ref.key])).all()
            assert audio.bit_depth == 16
        else:  # the MP3: decoded and quantized to 24 bits
            assert audio.bit_depth == 24 and audio.channels == 1


def test_flat_folder_has_no_labels(tmp_path):
    af.write_audio(tmp_path / "a.flac", af.speech(0.1, 1), af.SPEECH_RATE)
    refs = make_source("audiofolder", str(tmp_path), None).list()
    assert [(r.key, r.label) for r in refs] == [("a", None)]


def test_empty_folder_is_a_config_error(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="no audio files"):
        make_source("audiofolder", str(tmp_path), None).list()

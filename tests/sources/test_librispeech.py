"""LibriSpeech listing and reading on a generated tree in the native layout."""
from __future__ import annotations

import pytest

import audio_fixtures as af
from pipeline.errors import ConfigError, SampleError
from pipeline.sources import make_source


@pytest.fixture(scope="module")
def libri(tmp_path_factory) -> af.BuiltAudio:
    return af.build_librispeech(tmp_path_factory.mktemp("librispeech"))


def test_lists_every_utterance_sorted(libri):
    src = make_source("librispeech", str(libri.root), "dev-clean")
    refs = src.list()
    assert [r.key for r in refs] == sorted(libri.samples)
    assert all(r.source.startswith("dev-clean/") and r.source.endswith(".flac") for r in refs)
    assert src.modality == "audio"


@pytest.mark.parametrize("where", ["", "LibriSpeech", "LibriSpeech/dev-clean"])
def test_root_may_be_parent_librispeech_or_subset(libri, where):
    refs = make_source("librispeech", str(libri.root / where) if where else str(libri.root), "dev-clean").list()
    assert len(refs) == len(libri.samples)


def test_read_carries_transcript_speaker_chapter(libri):
    src = make_source("librispeech", str(libri.root), "dev-clean")
    for ref in src.list():
        if ref.key in libri.failing:
            with pytest.raises(SampleError, match="no transcript"):
                src.read(ref)
            continue
        raw = src.read(ref)
        want = libri.fields[ref.key]
        assert raw.attachments == {"txt": want["transcript"].encode()}
        assert raw.fields == want
        ints, rate = af.flac_ints(raw.data)
        assert rate == af.SPEECH_RATE and (ints == libri.samples[ref.key]).all()
        assert src.label_fields(ref)["speaker_id"] == want["speaker_id"]


def test_split_is_a_subset_name(libri):
    with pytest.raises(ConfigError, match="unknown split"):
        make_source("librispeech", str(libri.root), "dev")
    with pytest.raises(ConfigError, match="give --split"):
        make_source("librispeech", str(libri.root), None)
    with pytest.raises(ConfigError, match="no test-clean folder"):
        make_source("librispeech", str(libri.root), "test-clean").list()


def test_misnamed_file_is_refused(tmp_path):
    built = af.build_librispeech(tmp_path, seconds=0.1)
    folder = built.root / "LibriSpeech" / "dev-clean" / "84" / "121123"
    (folder / "84-121123-0000.flac").rename(folder / "oops.flac")
    with pytest.raises(ConfigError, match="oops.flac"):
        make_source("librispeech", str(tmp_path), "dev-clean").list()


def test_duplicate_transcript_line_is_refused(tmp_path):
    built = af.build_librispeech(tmp_path, seconds=0.1)
    trans = built.root / "LibriSpeech" / "dev-clean" / "84" / "121123" / "84-121123.trans.txt"
    line = trans.read_text().splitlines()[0]
    trans.write_text(trans.read_text() + line + "\n")
    with pytest.raises(ConfigError, match="twice"):
        make_source("librispeech", str(tmp_path), "dev-clean").list()

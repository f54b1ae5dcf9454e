"""webdataset interop decides from declarations: the set's schema, the codec registry, the safe table.

``test_wds.py`` checks pixels and audio against our loader for every codec; here: MUSDB's coded and
lossless stems through the set's own index (and without it), a wrong index refused, and a codec
registered from outside decoded by its own declarations with no change to ``pipeline/loaders/``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

wds = pytest.importorskip("webdataset")

import audio_fixtures as af  # noqa: E402
from pipeline import TranscodeConfig, transcode  # noqa: E402
from pipeline.codecs.spec import parse_spec  # noqa: E402
from pipeline.errors import SampleError  # noqa: E402
from pipeline.loaders import load, wds_decoder, wds_sample_decoder  # noqa: E402
from pipeline.loaders.storage import Storage  # noqa: E402
from pipeline.store.index import read_index  # noqa: E402

SPEC = "opus:kbps=64"


def _read(out: Path, dataset: str, split: str, spec: str, stage) -> dict[str, dict]:
    folder = out / dataset / split / parse_spec(spec).tag
    pipe = wds.WebDataset(sorted(str(p) for p in folder.glob("*.tar")), shardshuffle=False)
    pipe = pipe.decode(stage) if isinstance(stage, type(wds_decoder())) else pipe.map(stage)
    return {s["__key__"]: s for s in pipe}


@pytest.fixture(scope="module")
def musdb(tmp_path_factory):
    built = af.build_musdb_hq(tmp_path_factory.mktemp("wds-musdb-src"))
    out = tmp_path_factory.mktemp("wds-musdb-out")
    config = TranscodeConfig.create("musdb", built.root, [SPEC], out=out, split="test",
                                    source_options={"encode_stems": True})
    assert not transcode(config).failed
    return out


def test_musdb_stems_as_our_loader_gives_them(musdb):
    ours = {s["__key__"]: s for s in load(musdb, "musdb", "test", SPEC, image_format="numpy")}
    assert len(ours) >= 2
    index = read_index(Storage(musdb, cache_dir=False), "musdb", "test", SPEC)
    for stage in (wds_sample_decoder(root=musdb, dataset="musdb", split="test"), wds_sample_decoder(index=index),
                  wds_sample_decoder()):
        theirs = _read(musdb, "musdb", "test", SPEC, stage)
        assert sorted(theirs) == sorted(ours)
        for key, s in ours.items():
            got = theirs[key]
            assert np.array_equal(got["opus"], s["mixture"]), key
            for stem in af.STEM_NAMES:
                coded, lossless = got[f"{stem}.opus"], got[f"{stem}.flac"]
                assert coded.dtype == np.float32 and np.array_equal(coded, s["coded_stems"][stem]), (key, stem)
                assert np.array_equal(lossless, s["stems"][stem]), (key, stem)


def test_an_index_of_another_setting_is_refused(musdb, tmp_path):
    config = TranscodeConfig.create("musdb", af.build_musdb_hq(tmp_path / "src").root, ["none"], out=musdb,
                                    split="test", limit=1)
    assert not transcode(config).failed
    other = read_index(Storage(musdb, cache_dir=False), "musdb", "test", "none")
    with pytest.raises(SampleError, match="set index is none"):
        _read(musdb, "musdb", "test", SPEC, wds_sample_decoder(index=other))


PLUGIN = '''
import numpy as np
from pipeline.codecs import register
from pipeline.codecs.base import AudioCodec, Encoded


@register
class Raw16(AudioCodec):
    """16-bit little-endian PCM with a 4-byte rate header: a codec the loaders have never heard of."""

    name = "raw16test"
    extension = "r16"
    summary = "test codec"

    def encode(self, samples, rate):
        body = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
        return Encoded(rate.to_bytes(4, "little") + bytes([body.shape[1]]) + body.tobytes(), self.extension)

    def decode(self, payload):
        rate, channels = int.from_bytes(payload[:4], "little"), payload[4]
        body = np.frombuffer(payload[5:], dtype="<i2").reshape(-1, channels)
        return body.astype(np.float32) / 32767, rate

    @classmethod
    def stream_rate(cls, payload):
        return 8000  # declared: members read alone are handed out at 8 kHz
'''


def test_a_registered_codec_is_decoded_from_its_declarations(tmp_path, monkeypatch):
    import fixtures as fx

    (tmp_path / "raw16plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    with fx.registered_codecs("raw16plugin", ["raw16test"]) as plugin:
        codec = plugin.Raw16(parse_spec("raw16test"))
        x = np.linspace(-0.5, 0.5, 32000, dtype=np.float32).reshape(-1, 2)
        enc = codec.encode(x, 16000)
        got = wds_decoder()(".r16", enc.payload)  # nothing in pipeline/loaders names it
        assert got.dtype == np.float32 and got.shape == (2, 8000)  # channels first, at the declared rate
        whole = codec.decode(enc.payload)[0]  # 16 kHz: sample 2i is at the time of 8 kHz sample i (edges: filter)
        assert np.allclose(got[:, 200:-200], whole[400:-400:2].T, atol=0.01)
        assert wds_decoder()(".other", b"xyz") == b"xyz"  # undeclared members stay bytes
    assert "raw16plugin" not in sys.modules

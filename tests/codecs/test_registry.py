"""The codec registry: one source of names; duplicates and bad names refused; every codec self-describing."""
from __future__ import annotations

import numpy as np
import pytest

import pipeline.codecs as registry
from pipeline.codecs import Codec, codec_names, get_codec, make_codec
from pipeline.codecs.base import Encoded, ImageCodec
from pipeline.errors import ConfigError
from pipeline.codecs.spec import parse_spec

IMAGE_CODECS = {"jpeg", "webp", "avif", "jpeg2000", "jxl", "hevc", "none"}


@pytest.fixture
def scratch_registry(monkeypatch):
    registry.codec_names()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry


def _image_codec(codec_name: str) -> type[ImageCodec]:
    class Fake(ImageCodec):
        name = codec_name
        extension = "bin"

        def encode(self, rgb: np.ndarray) -> Encoded:
            return Encoded(rgb.tobytes(), self.extension)

        def decode(self, payload: bytes) -> np.ndarray:
            raise NotImplementedError

    return Fake


def test_names():
    image = codec_names("image")
    assert IMAGE_CODECS <= set(image)
    assert image == sorted(image)
    assert set(image) <= set(codec_names())
    assert codec_names("no-such-modality") == []


@pytest.mark.parametrize("name", codec_names())
def test_every_codec_describes_itself(name):
    cls = get_codec(name)
    assert issubclass(cls, Codec) and cls.name == name
    assert cls.modality in ("image", "audio", "any")  # "any": the lossless reference set (none)
    assert cls.extension and "." not in cls.extension
    assert cls.summary and cls.library
    shorts = [p.short or p.name for p in cls.params]
    assert len(set(shorts)) == len(shorts), "tag abbreviations must be unique within a codec"
    for p in cls.params:
        assert p.help, f"{name}:{p.name} needs a help text"
        if p.default is not None:
            assert p.coerce(name, p.default) == p.default
    if cls.unavailable() is None:
        versions = cls.versions()
        assert versions and all(isinstance(k, str) and isinstance(v, str) and v for k, v in versions.items())


def test_unknown_codec_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        get_codec("mp3x")
    assert "unknown codec 'mp3x'" in str(err.value) and "jpeg" in str(err.value)


def test_duplicate_registration_raises(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        scratch_registry.register(_image_codec("jpeg"))
    assert get_codec("jpeg").__module__ == "pipeline.codecs.classic"  # not replaced
    jpeg = get_codec("jpeg")
    assert scratch_registry.register(jpeg) is jpeg  # re-registering the same class (re-import) is fine


@pytest.mark.parametrize("bad", ["", "JPEG", "a:b", "a,b"])
def test_bad_names_raise(scratch_registry, bad):
    with pytest.raises(ValueError, match="bad codec name"):
        scratch_registry.register(_image_codec(bad))


def test_registered_codec_is_usable(scratch_registry):
    scratch_registry.register(_image_codec("mpq-test-raw"))
    assert "mpq-test-raw" in codec_names("image")
    codec = make_codec(parse_spec("mpq-test-raw"))
    assert codec.encode(np.zeros((2, 2, 3), np.uint8)).payload_bits == 8 * 12


def test_codec_refuses_a_spec_of_another_codec():
    with pytest.raises(ValueError, match="cannot run"):
        get_codec("webp")(parse_spec("jpeg"))

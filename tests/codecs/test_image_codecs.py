"""Every registered image codec round-trips real photographs at a low and a high setting.

Parametrized over the registry: a new codec is tested by registering it. Codecs whose settings
cannot be derived generically (no ``quality`` parameter, no valid default) get a row in SETTINGS.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

import fixtures as fx
from pipeline.codecs import codec_names, get_codec, make_codec
from pipeline.errors import ConfigError, MissingWeightsError
from pipeline.metrics.image import psnr
from pipeline.modalities import image as image_modality
from pipeline.codecs.spec import CodecSpec, parse_spec

SETTINGS = {  # (low, high) where the generic rule below does not apply or is not telling
    "jpeg2000": ("jpeg2000:ratio=30", "jpeg2000:psnr=42"),  # both rate-control modes
    "jxl": ("jxl:distance=8", "jxl:quality=95"),  # both modes
    "msillm": ("msillm:quality=1", "msillm:quality=6"),  # named qualities (with the published weights only)
    "noganms": ("noganms:quality=1", "noganms:quality=6"),
}

# codecs with no setting of their own to derive: a spec must name a file the user trained
OWN_FILES = {"compressai": "compressai: every spec names a checkpoint the researcher trained (checkpoint=PATH); "
                           "tests/codecs/test_own_codec.py codes real photographs with random-weight checkpoints",
             "msillm-own": "msillm-own: every spec names a checkpoint the researcher trained (checkpoint=PATH); "
                           "tests/codecs/test_msillm_own.py codes real photographs with random-weight checkpoints"}


def settings(name: str) -> tuple[CodecSpec, CodecSpec]:
    """A low- and a high-quality spec for a codec: from SETTINGS, from its quality range, or its default."""
    if name in SETTINGS:
        low, high = SETTINGS[name]
        return parse_spec(low), parse_spec(high)
    params = {p.name: p for p in get_codec(name).params}
    q = params.get("quality")
    if q is not None and q.minimum is not None and q.maximum is not None:
        span = q.maximum - q.minimum
        return (parse_spec(f"{name}:quality={int(q.minimum + span // 10)}"),
                parse_spec(f"{name}:quality={int(q.maximum - span // 10)}"))
    try:
        spec = parse_spec(name)
    except ConfigError as exc:
        pytest.fail(f"add a (low, high) row for codec {name!r} to SETTINGS: {exc}")
    return spec, spec


IMAGES = {
    "photo-odd-size": lambda: fx.photo("chelsea", 75, 101),
    "gray-content": lambda: np.repeat(fx.photo("camera", 64, 48)[:, :, None], 3, axis=2),
    "tiny": lambda: fx.photo("coffee", 3, 17),
}


@functools.lru_cache(maxsize=None)
def _cannot_run(name: str) -> str | None:
    """Why a codec cannot run here (library missing, learned weights absent), asked once per codec."""
    if name in OWN_FILES:
        return OWN_FILES[name]
    cls = get_codec(name)
    reason = cls.unavailable()
    if reason:
        return f"{name}: {reason}"
    for spec in settings(name):
        try:
            cls.preflight(spec)
        except MissingWeightsError as exc:  # no downloads here; learned codecs have their own tests
            return str(exc).splitlines()[0]
    return None


@pytest.fixture(params=codec_names("image"))
def codec_name(request) -> str:
    """A registered image codec that can run here."""
    reason = _cannot_run(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


def _roundtrip(spec: CodecSpec, rgb: np.ndarray) -> tuple[bytes, np.ndarray]:
    codec = make_codec(spec)
    enc = codec.encode(rgb)
    assert isinstance(enc.payload, bytes) and enc.payload
    assert enc.extension == codec.extension
    assert enc.payload_bits == 8 * len(enc.payload)  # images: the payload is the bitstream, all of it
    dec = codec.decode(enc.payload)
    assert dec.shape == rgb.shape and dec.dtype == np.uint8
    return enc.payload, dec


@pytest.mark.parametrize("image", list(IMAGES))
def test_roundtrip_low_and_high(codec_name, image):
    rgb = IMAGES[image]()
    low, high = settings(codec_name)
    low_payload, low_dec = _roundtrip(low, rgb)
    high_payload, high_dec = _roundtrip(high, rgb)
    if get_codec(codec_name).lossless:
        assert np.array_equal(low_dec, rgb) and np.array_equal(high_dec, rgb)
        return
    if image == "tiny":  # a 3x17 image: only check it works and is not garbage
        assert psnr(rgb, high_dec) > 25
        return
    p_low, p_high = psnr(rgb, low_dec), psnr(rgb, high_dec)
    assert 15 < p_low < p_high, (p_low, p_high)
    assert p_high > 33, p_high
    assert len(low_payload) < len(high_payload)


def test_encoding_is_deterministic(codec_name):
    rgb = IMAGES["photo-odd-size"]()
    for spec in settings(codec_name):
        codec = make_codec(spec)
        assert codec.encode(rgb).payload == make_codec(spec).encode(rgb.copy()).payload


def test_spec_forms_are_stable(codec_name):
    for spec in settings(codec_name):
        assert parse_spec(spec.canonical) == spec
        assert parse_spec(spec.canonical).tag == spec.tag
        assert spec.canonical.split(":")[0] == codec_name
        assert spec.tag.split("-")[0] == codec_name
        data = json.loads(json.dumps(spec.to_dict()))
        assert CodecSpec.from_dict(data) == spec
        assert [k for k, _ in spec.params] == [p.name for p in get_codec(codec_name).params]


def test_modality_measures_the_payload(codec_name):
    """The image modality records bits from the payload and PSNR from the decoded payload."""
    rgb = IMAGES["photo-odd-size"]()
    spec = settings(codec_name)[0]
    codec = make_codec(spec)
    members, m = image_modality.encode(codec, rgb, {"ms_ssim": False})
    ext, payload = members[0]
    assert ext == codec.extension
    assert m["bits"] == 8 * len(payload)
    assert m["bpp"] == m["bits"] / (rgb.shape[0] * rgb.shape[1])
    assert (m["width"], m["height"]) == (rgb.shape[1], rgb.shape[0])
    assert m["psnr"] == psnr(rgb, codec.decode(payload))
    assert "ms_ssim" not in m and m["encode_s"] >= 0 and m["decode_s"] >= 0


def test_modality_rejects_a_decoder_that_changes_the_shape(codec_name):
    spec = settings(codec_name)[0]
    codec = make_codec(spec)
    original = codec.decode
    codec.decode = lambda payload: original(payload)[:-1]  # a broken decoder
    with pytest.raises(Exception, match="differs"):
        image_modality.encode(codec, IMAGES["photo-odd-size"](), {})

"""The safe decoder table: the fast JPEG and PNG paths give exactly the codecs' pixels, and bad
bytes raise instead of decoding to something plausible."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import fixtures as fx
from pipeline.codecs import make_codec
from pipeline.errors import SampleError
from pipeline.loaders import DECODERS
from pipeline.loaders.decoders import UNSAFE, decoder_table, integer, jpeg_rgb, label_map, pil_rgb, png_rgb
from pipeline.codecs.spec import parse_spec

SIZES = [(48, 64), (33, 47), (17, 9), (1, 1)]


@pytest.mark.parametrize("sub", ["444", "422", "420"])
def test_jpeg_fast_path_is_the_codec_decode(sub):
    for q in (1, 5, 30, 75, 95, 100):
        codec = make_codec(parse_spec(f"jpeg:quality={q},subsampling={sub}"))
        for name, (h, w) in zip(("astronaut", "coffee", "chelsea", "rocket"), SIZES):
            payload = codec.encode(fx.photo(name, h, w)).payload
            want = codec.decode(payload)
            assert np.array_equal(jpeg_rgb(payload), want), (q, sub, h, w)
            assert np.array_equal(pil_rgb(payload), want)


def test_png_fast_path_is_the_codec_decode():
    codec = make_codec(parse_spec("none"))
    for name, (h, w) in zip(("astronaut", "coffee", "chelsea", "rocket"), SIZES):
        rgb = fx.photo(name, h, w)
        payload = codec.encode(rgb).payload
        assert np.array_equal(png_rgb(payload), rgb) and np.array_equal(codec.decode(payload), rgb)
    # modes other than 8-bit RGB go through Pillow's conversion, as the codec's decode does
    for img in (Image.fromarray(fx.photo("camera", 20, 30)), Image.fromarray(fx.photo("logo", 20, 20)),
                Image.fromarray(fx.photo("chelsea", 20, 30)).quantize(16)):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        assert np.array_equal(png_rgb(buf.getvalue()), codec.decode(buf.getvalue()))


@pytest.mark.parametrize("ext,codec", [("jpg", "jpeg:quality=50"), ("png", "none"), ("webp", "webp:quality=50")])
def test_truncated_payloads_raise(ext, codec):
    payload = make_codec(parse_spec(codec)).encode(fx.photo("astronaut", 48, 64)).payload
    with pytest.raises(Exception):
        DECODERS[ext](payload[: len(payload) * 2 // 3])


def test_label_maps_stay_class_indices():
    seg = (np.arange(12 * 10) % 151).astype(np.uint8).reshape(12, 10)
    assert np.array_equal(label_map(fx.png_bytes(seg)), seg)
    with pytest.raises(SampleError, match="single-channel"):
        label_map(fx.png_bytes(fx.photo("astronaut", 8, 8)))


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    import pipeline.loaders.decoders as dec

    payload = make_codec(parse_spec("jpeg:quality=50")).encode(fx.photo("astronaut", 48, 64)).payload
    monkeypatch.setattr(dec, "MAX_PIXELS", 48 * 64 - 1)
    for fn in (jpeg_rgb, pil_rgb):
        with pytest.raises(SampleError, match="pixel limit"):
            fn(payload)


def test_labels_and_unsafe_extensions():
    assert integer(b"17\n") == 17 and integer(b"-1") == -1
    with pytest.raises(SampleError):
        integer(b"__import__('os')")
    assert not UNSAFE & set(DECODERS)
    for ext in sorted(UNSAFE):
        with pytest.raises(ValueError, match="runs code"):
            decoder_table(None, {ext: bytes})
    with pytest.raises(SampleError, match="NaN"):
        DECODERS["json"](b'{"psnr": NaN}')


def test_pixel_limit_from_the_environment(monkeypatch):
    import pipeline.loaders.decoders as dec

    payload = make_codec(parse_spec("jpeg:quality=50")).encode(fx.photo("astronaut", 48, 64)).payload
    monkeypatch.setenv(dec.PIXELS_ENV, str(48 * 64 - 1))  # a set written with a lower --max-pixels
    with pytest.raises(SampleError, match=r"pixel limit 3071 \(\$MPQ_MAX_PIXELS\)"):
        jpeg_rgb(payload)
    monkeypatch.setattr(dec, "MAX_PIXELS", 10)  # the variable wins over the default, both ways
    monkeypatch.setenv(dec.PIXELS_ENV, str(48 * 64))
    assert jpeg_rgb(payload).shape == (48, 64, 3) and pil_rgb(payload).shape == (48, 64, 3)
    for bad in ("lots", "0"):
        monkeypatch.setenv(dec.PIXELS_ENV, bad)
        with pytest.raises(ValueError, match="MPQ_MAX_PIXELS"):
            jpeg_rgb(payload)

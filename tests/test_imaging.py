"""The documented conversion of stored images to the RGB pixels codecs see (pipeline/media/image.py)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import fixtures as fx
from pipeline.errors import SampleError
from pipeline.media.image import decode_to_rgb, rgb_from_pil_bytes
from pipeline.metrics.image import psnr


def test_jpeg_is_decoded_as_stored():
    data = fx.jpeg_bytes(fx.photo("astronaut", 96, 128))
    rgb = decode_to_rgb(data)
    assert rgb.shape == (96, 128, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert np.array_equal(rgb, fx.pil_raw(data))
    assert psnr(fx.photo("astronaut", 96, 128), rgb) > 30


def test_png_named_jpeg_is_decoded_by_content(tmp_path):
    """ILSVRC-2012 has a PNG named .JPEG: content decides, and PNG is lossless, so pixels are exact."""
    pixels = fx.photo("china", 80, 120)
    path = tmp_path / "n02105855_2933.JPEG"
    path.write_bytes(fx.png_bytes(pixels))
    assert np.array_equal(decode_to_rgb(path.read_bytes()), pixels)


def test_grayscale_jpeg_becomes_three_equal_channels():
    data = fx.gray_jpeg("camera", (96, 96))
    gray = fx.pil_raw(data)
    assert gray.ndim == 2
    rgb = decode_to_rgb(data)
    assert rgb.shape == (96, 96, 3)
    for c in range(3):
        assert np.array_equal(rgb[..., c], gray)


def test_cmyk_jpeg_uses_naive_conversion_and_looks_like_the_photo():
    data = fx.cmyk_jpeg("coffee", (96, 128))
    cmyk = fx.pil_raw(data).astype(np.float64)
    assert cmyk.shape == (96, 128, 4)
    rgb = decode_to_rgb(data)
    # naive CMYK -> RGB: (255 - C) * (255 - K) / 255, independently of Pillow's integer rounding
    want = (255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:4]) / 255.0
    assert np.abs(rgb.astype(np.float64) - want).max() <= 1.0
    # and not inverted (Adobe CMYK JPEGs store inverted values): close to the photograph
    assert psnr(fx.photo("coffee", 96, 128), rgb) > 25


@pytest.mark.parametrize("orientation, k", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(orientation, k):
    """Orientation 6 = rotate 90 degrees clockwise to view, 8 = counter-clockwise, 3 = 180."""
    data = fx.exif_rotated_jpeg("rocket", (64, 112), orientation)
    stored = fx.pil_raw(data)
    assert stored.shape == (64, 112, 3)
    rgb = decode_to_rgb(data)
    assert np.array_equal(rgb, np.rot90(stored, k))
    if orientation != 3:
        assert rgb.shape == (112, 64, 3)


@pytest.mark.parametrize("data", [
    pytest.param(fx.truncated_jpeg(), id="truncated-jpeg"),
    pytest.param(b"this is not an image", id="text"),
    pytest.param(b"", id="empty"),
    pytest.param(fx.png_bytes(fx.photo("coffee", 64, 64))[:200], id="truncated-png"),
])
def test_bad_data_raises_sample_error(data):
    with pytest.raises(SampleError, match="cannot decode"):
        decode_to_rgb(data)


def test_pixel_limit_raises_sample_error():
    data = fx.jpeg_bytes(fx.photo("coffee", 64, 64))
    with pytest.raises(SampleError, match="pixel limit"):
        decode_to_rgb(data, max_pixels=64 * 64 - 1)
    assert decode_to_rgb(data, max_pixels=64 * 64).shape == (64, 64, 3)


def test_palette_png_is_looked_up():
    data = fx.palette_png("chelsea", (80, 112))
    with Image.open(__import__("io").BytesIO(data)) as img:
        assert img.mode == "P"
        palette = np.asarray(img.getpalette()[: 3 * 256], dtype=np.uint8).reshape(-1, 3)
        indices = np.asarray(img)
    assert np.array_equal(decode_to_rgb(data), palette[indices])


def test_palette_with_transparent_index_goes_over_white():
    data = fx.palette_png("chelsea", (80, 112), transparent=0)
    with Image.open(__import__("io").BytesIO(data)) as img:
        palette = np.asarray(img.getpalette()[: 3 * 256], dtype=np.uint8).reshape(-1, 3)
        indices = np.asarray(img)
    want = palette[indices]
    want[indices == 0] = 255
    assert (indices == 0).any()
    assert np.array_equal(decode_to_rgb(data), want)


def test_rgba_png_is_composited_over_white():
    data = fx.rgba_png("astronaut", (100, 100))
    rgba = fx.pil_raw(data)
    assert rgba.shape == (100, 100, 4)
    assert (rgba[..., 3] == 0).any() and (rgba[..., 3] == 255).any()  # really has transparency
    rgb = decode_to_rgb(data)
    assert np.abs(rgb.astype(int) - fx.over_white(rgba).astype(int)).max() <= 1
    assert (rgb[rgba[..., 3] == 0] == 255).all()


def test_la_png_is_composited_over_white():
    gray = np.asarray(Image.fromarray(fx.photo("camera", 64, 64)).convert("L"))
    alpha = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    data = fx.encode_pil(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG")
    rgb = decode_to_rgb(data)
    want = fx.over_white(np.dstack([gray, gray, gray, alpha]))
    assert np.abs(rgb.astype(int) - want.astype(int)).max() <= 1


def test_16bit_grayscale_png_is_scaled_to_8_bits():
    values = np.array([[0, 257, 65535, 32768], [1000, 40000, 128, 65280]], dtype=np.uint16)
    data = fx.encode_pil(Image.fromarray(values), "PNG")
    rgb = decode_to_rgb(data)
    want = np.rint(values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    assert rgb.shape == (2, 4, 3)
    for c in range(3):
        assert np.array_equal(rgb[..., c], want)


def test_payload_decoder_reads_what_our_codecs_write():
    pixels = fx.photo("flower", 48, 64)
    assert np.array_equal(rgb_from_pil_bytes(fx.png_bytes(pixels)), pixels)


def test_pillow_global_pixel_limit_is_left_alone():
    """The pipeline as a library must not switch off Pillow's bomb check for the user's own code."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    decode_to_rgb(buf.getvalue())
    assert Image.MAX_IMAGE_PIXELS == before

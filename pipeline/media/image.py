"""Turning whatever a dataset stores into the RGB pixels every image codec sees.

The one documented conversion (README, "Pixels the codecs see"):
1. decode with Pillow by content, never by file name (ImageNet has a PNG named .JPEG);
2. apply the EXIF orientation, so pixels are upright as a viewer shows them;
3. integer grayscale deeper than 8 bits (Pillow modes I;16 and I) is scaled from the 16-bit range
   (value * 255 / 65535, rounded); float grayscale (mode F) is rounded and clipped to 0-255;
4. grayscale, bilevel, CMYK, YCbCr, LAB and palette images become RGB with Pillow's convert
   (no ICC colour management; CMYK uses Pillow's naive conversion);
5. anything with transparency (RGBA, LA, PA, palette with a transparent index) is composited
   over white, so transparent areas do not turn into arbitrary colours.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..errors import SampleError

from . import MAX_PIXELS


def open_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully load an image from bytes; truncated, unknown or oversized data raise SampleError."""
    try:
        with warnings.catch_warnings():
            # our own limit below, checked from the header before decoding pixels; Pillow's global
            # MAX_IMAGE_PIXELS is left as the user set it (its hard error is twice its warning level)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > max_pixels:
            raise SampleError(f"image of {w}x{h} = {w * h} pixels exceeds the pixel limit {max_pixels}")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow warns on some corrupt data: make it an error
            img.load()
    except SampleError:
        raise
    except Image.DecompressionBombError as exc:
        raise SampleError(f"image exceeds the pixel limit: {exc}") from None
    except Exception as exc:  # Pillow raises many types for bad data
        raise SampleError(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    return img


def to_rgb(img: Image.Image) -> np.ndarray:
    """Apply EXIF orientation and convert any mode to RGB uint8 (H, W, 3) as documented above."""
    try:
        if img.getexif().get(0x0112, 1) != 1:  # orientation tag: only then do pixels move
            img = ImageOps.exif_transpose(img)
    except Exception as exc:
        raise SampleError(f"bad EXIF orientation: {exc}") from None
    mode = img.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit grayscale: scaled from the 16-bit range
        arr = np.asarray(img).astype(np.float64)
        scale = 1.0 if mode == "F" else 255.0 / 65535.0
        arr8 = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return np.repeat(arr8[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)


def decode_to_rgb(data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Source bytes to the RGB uint8 array the codecs encode."""
    return to_rgb(open_image(data, max_pixels=max_pixels))


def pil_to_bytes(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def rgb_from_pil_bytes(payload: bytes) -> np.ndarray:
    """Decode a payload our own codecs wrote (no EXIF handling: we never write orientation)."""
    with Image.open(io.BytesIO(payload)) as img:
        img.load()
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()

"""The one table of safe member decoders, keyed by member extension.

A shard may come from anyone, so reading it must never run code: every entry here parses bytes
with a media or text parser (Pillow, pillow-heif, imagecodecs, json, int). There is no pickle,
no ``torch.load`` and no numpy object array, and a member whose extension is not in the table is
never decoded at all: it is dropped (``.pyd``, ``.pickle``, ``.pth`` included) unless the caller
adds a decoder for it explicitly.

Payloads of a codec whose extension has no entry (audio, EnCodec, future neural codecs) are
decoded by that registered codec's own ``decode``, which knows its stream (priming, padding,
sample count); :func:`decoder_table` puts it in the table for that codec set.
"""
from __future__ import annotations

import io
import json
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import SampleError, env_count
from ..media import MAX_PIXELS  # the one limit, shared with the writer

Decoder = Callable[[bytes], Any]

#: Images above this many pixels are refused before their pixels are decoded (decompression bombs);
#: ``$MPQ_MAX_PIXELS`` raises or lowers it, e.g. for sets written with a higher ``--max-pixels``.
PIXELS_ENV = "MPQ_MAX_PIXELS"


def pixel_limit() -> int:
    """The loaders' pixel limit: ``$MPQ_MAX_PIXELS`` when set, else :data:`MAX_PIXELS`."""
    limit = env_count(PIXELS_ENV, "pixels")
    return MAX_PIXELS if limit is None else limit


def _check_size(width: int, height: int) -> None:
    limit = pixel_limit()
    if width * height > limit:
        raise SampleError(f"image of {width}x{height} pixels exceeds the pixel limit {limit} (${PIXELS_ENV})")


def pil_rgb(data: bytes) -> np.ndarray:
    """RGB uint8 (H, W, 3) with Pillow: JPEG, PNG, WebP, AVIF, JPEG 2000 (what our Pillow codecs decode)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        _check_size(*img.size)
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.array(img, dtype=np.uint8)  # a writable copy (Pillow's array view is read-only)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF marker, or None when the markers do not parse."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > n:
                return None
            return int.from_bytes(data[pos + 7:pos + 9], "big"), int.from_bytes(data[pos + 5:pos + 7], "big")
        if marker == 0xDA or length < 2:
            return None
        pos += 2 + length
    return None


def _imagecodecs():
    try:
        import imagecodecs
    except ImportError:
        return None
    return imagecodecs


def jpeg_rgb(data: bytes) -> np.ndarray:
    """JPEG to RGB uint8: libjpeg-turbo through imagecodecs, else Pillow; the pixels are the same.

    imagecodecs writes straight into one array, about twice as fast as Pillow's decode plus
    copies. It is used only for complete (EOI-terminated) 3-channel 8-bit JPEGs, where both
    run libjpeg-turbo's default (islow DCT, fancy upsampling); libjpeg would fill a truncated
    stream with grey where Pillow raises, so anything else goes to Pillow. A test checks both
    give the jpeg codec's pixels across qualities, subsamplings and odd sizes.
    """
    size = _jpeg_size(data)
    ic = _imagecodecs()
    if size is None or ic is None or not data.endswith(b"\xff\xd9"):
        return pil_rgb(data)
    _check_size(*size)
    try:
        out = ic.jpeg8_decode(data)
    except Exception:
        return pil_rgb(data)  # Pillow gives the error message (or copes)
    if out.ndim != 3 or out.shape[2] != 3 or out.dtype != np.uint8 or out.shape[:2] != (size[1], size[0]):
        return pil_rgb(data)
    return out


def png_rgb(data: bytes) -> np.ndarray:
    """PNG to RGB uint8: imagecodecs for 8-bit RGB (lossless: any decoder gives these pixels), else Pillow."""
    ic = _imagecodecs()
    if ic is None or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 33:
        return pil_rgb(data)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[24] != 8 or data[25] != 2:  # bit depth 8, colour type RGB: others go through Pillow's conversion
        return pil_rgb(data)
    pos = 8
    while pos + 8 <= len(data):  # chunks before the pixels: a gamma or transparency chunk -> Pillow
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            break
        if kind in (b"gAMA", b"tRNS", b"sBIT"):
            return pil_rgb(data)
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    return _fast_or_pil(data, width, height, ic.png_decode)


def _fast_or_pil(data: bytes, width: int, height: int, decode: Any) -> np.ndarray:
    """``decode(data)`` when it gives the header's (height, width, 3) uint8 pixels, else Pillow's conversion
    (the size is checked against the pixel limit first)."""
    _check_size(width, height)
    try:
        out = decode(data)
    except Exception:
        return pil_rgb(data)
    if out.shape != (height, width, 3) or out.dtype != np.uint8:
        return pil_rgb(data)
    return out


def webp_rgb(data: bytes) -> np.ndarray:
    """WebP to RGB uint8: lossless WebP (VP8L) without alpha straight into one array with imagecodecs
    (lossless: any decoder gives these pixels), everything else (lossy VP8, alpha) with Pillow."""
    ic = _imagecodecs()
    if (ic is None or len(data) < 25 or data[:4] != b"RIFF" or data[8:16] != b"WEBPVP8L" or data[20] != 0x2F):
        return pil_rgb(data)
    bits = int.from_bytes(data[21:25], "little")
    width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if bits >> 28 & 1:  # alpha used: Pillow's conversion
        return pil_rgb(data)
    return _fast_or_pil(data, width, height, ic.webp_decode)


def qoi_rgb(data: bytes) -> np.ndarray:
    """QOI to RGB uint8 with imagecodecs (the reference C decoder); 4-channel QOI through Pillow's conversion."""
    ic = _imagecodecs()
    if ic is None or len(data) < 14 or data[:4] != b"qoif":
        return pil_rgb(data)
    width, height = int.from_bytes(data[4:8], "big"), int.from_bytes(data[8:12], "big")
    if data[12] != 3:  # RGBA: Pillow drops the alpha as for any other container
        return pil_rgb(data)
    return _fast_or_pil(data, width, height, ic.qoi_decode)


def stored_pixels(ext: str) -> Decoder:
    """The decoder of stored lossless pixels (decoder name ``png`` in a schema) by their container's member."""
    try:
        return {"png": png_rgb, "webp": webp_rgb, "jxl": jxl_rgb, "qoi": qoi_rgb}[ext]
    except KeyError:
        raise SampleError(f"stored pixels in .{ext}: no lossless container has that extension") from None


def heif_rgb(data: bytes) -> np.ndarray:
    """RGB uint8 from HEIF/HEIC (HEVC intra) with pillow-heif, as the hevc codec decodes it."""
    import pillow_heif

    heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
    _check_size(*heif.size)
    img = heif.to_pillow()
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def jxl_rgb(data: bytes) -> np.ndarray:
    """RGB uint8 from JPEG XL with imagecodecs (libjxl), as the jxl codec decodes it."""
    import imagecodecs

    out = imagecodecs.jpegxl_decode(data, numthreads=1)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    if out.dtype != np.uint8:
        raise SampleError(f"JPEG XL payload decodes to {out.dtype}, not 8-bit RGB")
    return np.ascontiguousarray(out[:, :, :3])


def label_map(data: bytes) -> np.ndarray:
    """A segmentation label map (PNG) as stored: class indices, never converted to RGB or rescaled."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        _check_size(*img.size)
        img.load()
        if img.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
            raise SampleError(f"segmentation map has mode {img.mode}, expected a single-channel label map")
        return np.array(img)


def integer(data: bytes) -> int:
    """A ``.cls`` label: ASCII digits (an optional minus sign), nothing else."""
    text = data.decode("ascii").strip()
    if not text.lstrip("-").isdigit():
        raise SampleError(f"label {text[:20]!r} is not an integer")
    return int(text)


def text(data: bytes) -> str:
    return data.decode("utf-8")


def _reject_constant(name: str) -> Any:
    raise SampleError(f"non-standard JSON constant {name}")


def strict_json(data: bytes) -> Any:
    """JSON as our writer emits it (no NaN/Infinity)."""
    return json.loads(data, parse_constant=_reject_constant)


#: The safe decoders, by member extension (the part of the member name after the key's dot).
DECODERS: dict[str, Decoder] = {
    "jpg": jpeg_rgb, "jpeg": jpeg_rgb, "png": png_rgb, "webp": webp_rgb, "avif": pil_rgb, "jp2": pil_rgb,
    "j2k": pil_rgb, "heic": heif_rgb, "heif": heif_rgb, "jxl": jxl_rgb, "qoi": qoi_rgb,
    "seg.png": label_map,
    "cls": integer,
    "txt": text, "transcript": text,
    "json": strict_json,
}

#: Extensions that are never decoded, even when named in a user table: they run code when loaded.
UNSAFE = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "npy_pickle", "joblib", "dill"})


def codec_decoder(spec) -> Decoder | None:
    """The registered codec's own decode for a set's payload, or None when the table already covers it.

    Payloads with a table entry use that entry (a test checks it gives the codec's pixels for
    every registered image codec and the reference set); every other payload goes through its codec.
    """
    from ..codecs import get_codec, make_codec

    cls = get_codec(spec.name)
    if cls.extension in DECODERS:
        return None
    return make_codec(spec).decode


def decoder_table(spec=None, extra: Mapping[str, Decoder] | None = None) -> dict[str, Decoder]:
    """The table for one codec set: the safe decoders, the codec's own payload decoder, user additions."""
    table = dict(DECODERS)
    if spec is not None:
        from ..codecs import get_codec

        own = codec_decoder(spec)
        if own is not None:
            table[get_codec(spec.name).extension] = own
    for ext, fn in (extra or {}).items():
        if ext in UNSAFE:
            raise ValueError(f"refusing a decoder for .{ext}: loading such members runs code")
        table[ext] = fn
    return table

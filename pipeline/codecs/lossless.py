"""Lossless containers of stored pixels: the ``none`` reference's payload and a learned codec's decoded output.

A setting chooses one with its ``container`` parameter (``none:container=webp``,
``mbt2018-mean:quality=3,container=webp``). PNG is the default and is never written into the
spec: ``none`` and ``none:container=png`` are one setting with the tag ``none`` and the bytes sets
always had, so existing sets and caches stay valid. Another container is part of the spec, hence
of the tag (``none-cwebp``) and of every record's ``codec``, because it changes the stored bytes.
It never changes a learned codec's coded stream: the ``.bin`` names its setting without it
(:func:`without_container`), so its bits are the same in every container.

Each container is fixed to one set of encoder options (below), chosen by measurement
(README, "Lossless containers"): a container name always means the same bytes for given pixels
and library versions. Every container decodes to exactly the pixels it was given (tested).
Declarations and pure functions only: the registry, spec parsing and codec base import this.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .params import Param

if TYPE_CHECKING:  # annotations only: spec parsing imports the registry, which imports this
    from .spec import CodecSpec

#: the parameter's name in a spec
PARAM = "container"
#: the container of a setting that names none (every set written before containers existed)
DEFAULT = "png"


@dataclass(frozen=True)
class Container:
    """One lossless container: its member extension, fixed encoder options (in words) and library."""

    name: str
    extension: str
    options: str
    library: str


CONTAINERS: dict[str, Container] = {
    "png": Container("png", "png", "zlib level 6, no optimize (Pillow)", "Pillow (zlib)"),
    "webp": Container("webp", "webp", "lossless, libwebp effort 80 (quality), method 4: Pillow's defaults",
                      "Pillow (libwebp)"),
    "jxl": Container("jxl", "jxl", "lossless (modular), effort 3, one thread", "imagecodecs (libjxl)"),
    "qoi": Container("qoi", "qoi", "QOI (qoiformat.org), 3 channels, sRGB colour-space byte; no options",
                     "imagecodecs (qoi)"),
}


def container_param() -> Param:
    """The ``container`` parameter of every image codec that stores pixels losslessly."""
    return Param(PARAM, str, None, "lossless container of the stored pixels: png (default), webp, jxl or qoi",
                 short="c", choices=tuple(CONTAINERS))


def normalise(values: dict[str, Any]) -> dict[str, Any]:
    """Spec validation: ``container=png`` is the default, so it is dropped (one setting, one tag)."""
    if values.get(PARAM) == DEFAULT:
        return {**values, PARAM: None}
    return values


def container_of(spec: "CodecSpec") -> str:
    """The container a setting stores its pixels in (PNG when it names none)."""
    return spec.get(PARAM) or DEFAULT


def without_container(spec: "CodecSpec") -> "CodecSpec":
    """The setting of the coded stream: ``spec`` with its container left at the default (same canonical as before)."""
    if spec.get(PARAM) is None:
        return spec
    return type(spec)(spec.name, tuple((k, None if k == PARAM else v) for k, v in spec.params))


def extension(container: str) -> str:
    return _get(container).extension


def _get(container: str) -> Container:
    try:
        return CONTAINERS[container]
    except KeyError:
        raise ValueError(f"no lossless container {container!r} (containers: {', '.join(CONTAINERS)})") from None


def _pillow(rgb: np.ndarray, fmt: str, **options: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, format=fmt, **options)
    return buf.getvalue()


def _jxl(rgb: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpegxl_encode(np.ascontiguousarray(rgb), lossless=True, effort=3, numthreads=1))


def _qoi(rgb: np.ndarray) -> bytes:
    import imagecodecs

    # imagecodecs wraps the reference C coder; Pillow's QOI plugin is pure Python (100x slower)
    return bytes(imagecodecs.qoi_encode(np.ascontiguousarray(rgb)))


_ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "png": lambda rgb: _pillow(rgb, "PNG", compress_level=6, optimize=False),
    "webp": lambda rgb: _pillow(rgb, "WEBP", lossless=True, quality=80, method=4),
    "jxl": _jxl,
    "qoi": _qoi,
}
#: containers whose bytes come from imagecodecs (the others from Pillow), with its feature's name
_IMAGECODECS = {"jxl": "JPEGXL", "qoi": "QOI"}


def encode(rgb: np.ndarray, container: str = DEFAULT) -> bytes:
    """RGB uint8 (H, W, 3) as ``container``'s bytes, with its fixed options (same pixels in, same bytes out)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 (H, W, 3), got {rgb.shape} {rgb.dtype}")
    return _ENCODERS[_get(container).name](rgb)


def decode(payload: bytes, container: str = DEFAULT) -> np.ndarray:
    """A container's bytes back to RGB uint8 (H, W, 3): Pillow for PNG and WebP, imagecodecs for JPEG XL
    and QOI."""
    name = _get(container).name
    if name in _IMAGECODECS:
        import imagecodecs

        out = (imagecodecs.jpegxl_decode(payload, numthreads=1) if name == "jxl"
               else imagecodecs.qoi_decode(payload))
        if out.ndim != 3 or out.shape[2] != 3 or out.dtype != np.uint8:
            raise ValueError(f"{name} payload decodes to {out.shape} {out.dtype}, not 8-bit RGB")
        return np.ascontiguousarray(out)
    from ..media.image import rgb_from_pil_bytes

    return rgb_from_pil_bytes(payload)


def unavailable(container: str) -> str | None:
    """Why ``container`` cannot be written here (a library or plugin missing), or None."""
    if container in _IMAGECODECS:
        try:
            import imagecodecs
        except ImportError:
            return "imagecodecs is not installed"
        feature = _IMAGECODECS[container]
        return None if getattr(imagecodecs, feature).available else f"imagecodecs was built without {feature}"
    from PIL import features

    feature = {"png": "zlib", "webp": "webp"}[_get(container).name]
    return None if features.check(feature) else f"this Pillow build has no {feature} support"


def versions(container: str) -> dict[str, str]:
    """Versions of the library writing ``container``'s bytes (recorded in index.json)."""
    if container in _IMAGECODECS:
        import imagecodecs

        lib = ("libjxl", imagecodecs.jpegxl_version()) if container == "jxl" else ("qoi", imagecodecs.qoi_version())
        return {"imagecodecs": imagecodecs.__version__, lib[0]: lib[1]}
    from PIL import __version__, features

    feature = {"png": "zlib", "webp": "webp"}[_get(container).name]
    return {"pillow": __version__, feature: str(features.version(feature))}

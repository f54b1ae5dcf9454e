"""Classical image codecs through Pillow: JPEG (libjpeg-turbo), WebP, AVIF, JPEG 2000 (OpenJPEG), PNG."""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..media.image import pil_to_bytes, rgb_from_pil_bytes
from . import lossless
from .params import Param, RateKnob, bpp_param
from . import register
from .base import Encoded, ImageCodec


def _pillow_versions(*features: str) -> dict[str, str]:
    from PIL import __version__, features as f

    out = {"pillow": __version__}
    for feat in features:
        if f.check(feat):
            out[feat] = str(f.version(feat))
    return out


class _PillowCodec(ImageCodec):
    format: str = ""
    feature: str = ""
    library = "Pillow"

    def options(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self, rgb: np.ndarray) -> Encoded:
        payload = pil_to_bytes(Image.fromarray(rgb, "RGB"), self.format, **self.options())
        return Encoded(payload, self.extension)

    def decode(self, payload: bytes) -> np.ndarray:
        return rgb_from_pil_bytes(payload)

    @classmethod
    def versions(cls) -> dict[str, str]:
        return _pillow_versions(cls.feature)

    @classmethod
    def unavailable(cls) -> str | None:
        from PIL import features

        return None if features.check(cls.feature) else f"this Pillow build has no {cls.feature} support"


@register
class JPEG(_PillowCodec):
    library = "Pillow (libjpeg-turbo)"
    name = "jpeg"
    extension = "jpg"
    format = "JPEG"
    feature = "jpg"
    summary = "baseline JPEG, libjpeg-turbo through Pillow"
    params = (
        Param("quality", int, None, "libjpeg quality 1-100 (75 when no bpp target is given)", short="q", minimum=1,
              maximum=100, in_tag=True),
        Param("subsampling", str, "420", "chroma subsampling", short="s", choices=("444", "422", "420")),
        bpp_param(),
    )
    rate_knob = RateKnob("quality", "bpp", 1, 100, default=75)

    @classmethod
    def versions(cls) -> dict[str, str]:
        return _pillow_versions("jpg", "libjpeg_turbo")

    def options(self) -> dict[str, Any]:
        sub = {"444": 0, "422": 1, "420": 2}[self.spec["subsampling"]]
        return {"quality": self.spec["quality"], "subsampling": sub, "optimize": False, "progressive": False}


@register
class WebP(_PillowCodec):
    library = "Pillow (libwebp)"
    name = "webp"
    extension = "webp"
    format = "WEBP"
    feature = "webp"
    summary = "lossy WebP (libwebp) through Pillow"
    params = (
        Param("quality", int, None, "libwebp quality 0-100 (75 when no bpp target is given)", short="q", minimum=0,
              maximum=100, in_tag=True),
        Param("method", int, 4, "speed/size trade-off 0 (fast) to 6 (small)", short="m", minimum=0, maximum=6),
        bpp_param(),
    )
    rate_knob = RateKnob("quality", "bpp", 0, 100, default=75)

    def options(self) -> dict[str, Any]:
        return {"quality": self.spec["quality"], "method": self.spec["method"], "lossless": False, "exact": False}


@register
class AVIF(_PillowCodec):
    library = "Pillow (libavif)"
    name = "avif"
    extension = "avif"
    format = "AVIF"
    feature = "avif"
    summary = "AVIF (libavif with AOM) through Pillow"
    params = (
        Param("quality", int, None, "libavif quality 0-100 (50 when no bpp target is given)", short="q", minimum=0,
              maximum=100, in_tag=True),
        Param("speed", int, 6, "encoder speed 0 (slow, small) to 10 (fast)", short="sp", minimum=0, maximum=10),
        Param("subsampling", str, "420", "chroma subsampling", short="s", choices=("444", "422", "420")),
        bpp_param(),
    )
    rate_knob = RateKnob("quality", "bpp", 0, 100, default=50)

    def options(self) -> dict[str, Any]:
        s = self.spec["subsampling"]
        # one thread per codec call: parallelism comes from the workers, and it keeps output reproducible
        return {"quality": self.spec["quality"], "speed": self.spec["speed"],
                "subsampling": f"{s[0]}:{s[1]}:{s[2]}", "max_threads": 1}


@register
class JPEG2000(_PillowCodec):
    library = "Pillow (OpenJPEG)"
    name = "jpeg2000"
    extension = "jp2"
    format = "JPEG2000"
    feature = "jpg_2000"
    summary = "JPEG 2000 (OpenJPEG) through Pillow, by compression ratio or target PSNR"
    params = (
        Param("ratio", float, None, "compression ratio against 24-bit RGB (one quality layer)", short="r",
              minimum=1.0),
        Param("psnr", float, None, "target PSNR in dB of the single quality layer", short="db", minimum=1.0),
    )

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, Any]:
        if values["ratio"] is None and values["psnr"] is None:
            raise ConfigError("jpeg2000: give ratio=R (e.g. ratio=40) or psnr=P (e.g. psnr=32)")
        if values["ratio"] is not None and values["psnr"] is not None:
            raise ConfigError("jpeg2000: give ratio or psnr, not both")
        return values

    def options(self) -> dict[str, Any]:
        if self.spec["ratio"] is not None:
            return {"quality_mode": "rates", "quality_layers": [self.spec["ratio"]], "irreversible": True,
                    "no_jp2": False}
        return {"quality_mode": "dB", "quality_layers": [self.spec["psnr"]], "irreversible": True, "no_jp2": False}


@register
class PNG(_PillowCodec):
    library = "Pillow (zlib) for images, libsndfile (FLAC) for audio"
    payload_doc = "`.png`, `.webp`, `.jxl` or `.qoi` (image, by `container`), `.flac` (audio)"
    name = "none"
    extension = "png"
    format = "PNG"
    feature = "zlib"
    lossless = True
    modality = "any"  # images: PNG (here); audio: the audio modality stores the source samples as FLAC
    summary = ("no lossy coding, a reference set: images as lossless PNG (or container=webp, jxl, qoi), "
               "audio as lossless FLAC")
    params = ()  # images: the lossless container (pipeline.codecs.lossless), added when registered

    def encode(self, rgb: np.ndarray) -> Encoded:
        return Encoded(lossless.encode(rgb, self.container), lossless.extension(self.container))

    def decode(self, payload: bytes) -> np.ndarray:
        return lossless.decode(payload, self.container)

    @classmethod
    def versions(cls) -> dict[str, str]:
        out = _pillow_versions("zlib")  # another container's library is added per setting (index.json)
        try:  # audio reference sets are FLAC through libsndfile
            import soundfile

            out["libsndfile"] = soundfile.__libsndfile_version__
        except Exception:  # soundfile absent: only images can use `none` then
            pass
        return out

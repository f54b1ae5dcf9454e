"""HEVC intra coding in a HEIF file (x265 encoder, libde265 decoder) through pillow-heif.

This is the BPG family: BPG is HEVC intra in its own small container; HEIF carries the same
intra bitstream with a slightly larger header, which counts in ``bits`` like any payload byte.
"""
from __future__ import annotations

import io

import numpy as np

from .params import Param, RateKnob, bpp_param
from . import register
from .base import Encoded, ImageCodec


@register
class HEVC(ImageCodec):
    name = "hevc"
    extension = "heic"
    library = "pillow-heif (libheif, x265, libde265)"
    summary = "HEVC intra (x265) in HEIF, comparable to BPG, through pillow-heif"
    params = (
        Param("quality", int, None, "x265 quality 0-100 through libheif (50 when no bpp target is given)",
              short="q", minimum=0, maximum=100, in_tag=True),
        Param("subsampling", str, "420", "chroma subsampling", short="s", choices=("444", "422", "420")),
        bpp_param(),
    )
    rate_knob = RateKnob("quality", "bpp", 0, 100, default=50)

    def encode(self, rgb: np.ndarray) -> Encoded:
        import pillow_heif

        h, w, _ = rgb.shape
        heif = pillow_heif.from_bytes(mode="RGB", size=(w, h), data=np.ascontiguousarray(rgb).tobytes())
        buf = io.BytesIO()
        s = self.spec["subsampling"]
        heif.save(buf, quality=self.spec["quality"], chroma=int(s), save_nclx_profile=True)
        return Encoded(buf.getvalue(), self.extension)

    def decode(self, payload: bytes) -> np.ndarray:
        import pillow_heif

        img = pillow_heif.open_heif(io.BytesIO(payload), convert_hdr_to_8bit=True)
        arr = np.asarray(img.to_pillow().convert("RGB"), dtype=np.uint8)
        return arr.copy()

    @classmethod
    def versions(cls) -> dict[str, str]:
        import pillow_heif

        info = pillow_heif.libheif_info()
        return {"pillow-heif": pillow_heif.__version__, "libheif": info.get("libheif", ""),
                "x265": info.get("encoders", {}).get("x265", "")}

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import pillow_heif
        except ImportError:
            return "pillow-heif is not installed"
        return None if "x265" in pillow_heif.libheif_info().get("encoders", {}) else "libheif has no x265 encoder"

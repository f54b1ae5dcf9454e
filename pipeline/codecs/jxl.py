"""JPEG XL through imagecodecs (libjxl)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from .params import Param, RateKnob, bpp_param
from . import register
from .base import Encoded, ImageCodec


@register
class JPEGXL(ImageCodec):
    name = "jxl"
    extension = "jxl"
    library = "imagecodecs (libjxl)"
    summary = "JPEG XL (libjxl) through imagecodecs, by Butteraugli distance or quality"
    params = (
        Param("distance", float, None, "Butteraugli distance: 0 lossless, 1 visually lossless, up to 25",
              short="d", minimum=0.0, maximum=25.0),
        Param("quality", int, None, "libjxl quality 0-100 (mapped to a distance by libjxl)", short="q",
              minimum=0, maximum=100),
        Param("effort", int, 7, "encoder effort 1 (fast) to 9 (slow)", short="e", minimum=1, maximum=9),
        bpp_param(),
    )
    rate_knob = RateKnob("quality", "bpp", 0, 100)

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, Any]:
        given = [k for k in ("distance", "quality", "bpp") if values[k] is not None]
        if not given:
            raise ConfigError("jxl: give distance=D (e.g. distance=1), quality=Q or bpp=B (a target rate)")
        if len(given) > 1:
            raise ConfigError(f"jxl: give {given[0]} or {given[1]}, not both")
        return values

    def encode(self, rgb: np.ndarray) -> Encoded:
        import imagecodecs

        opts: dict[str, Any] = {"effort": self.spec["effort"], "numthreads": 1}
        if self.spec["distance"] is not None:
            d = self.spec["distance"]
            opts.update(distance=d, lossless=d == 0)
        else:
            opts.update(level=self.spec["quality"])
        return Encoded(bytes(imagecodecs.jpegxl_encode(rgb, **opts)), self.extension)

    def decode(self, payload: bytes) -> np.ndarray:
        import imagecodecs

        out = imagecodecs.jpegxl_decode(payload, numthreads=1)
        if out.ndim == 2:
            out = np.repeat(out[:, :, None], 3, axis=2)
        return np.ascontiguousarray(out[:, :, :3], dtype=np.uint8)

    @classmethod
    def versions(cls) -> dict[str, str]:
        import imagecodecs

        return {"imagecodecs": imagecodecs.__version__, "libjxl": imagecodecs.jpegxl_version()}

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import imagecodecs
        except ImportError:
            return "imagecodecs is not installed"
        return None if imagecodecs.JPEGXL.available else "imagecodecs was built without JPEG XL"

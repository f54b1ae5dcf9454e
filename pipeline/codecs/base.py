"""The codec interface: a codec turns pixels (or samples) into bytes and back, nothing else.

Everything the pipeline records is measured from what the codec returns (``bits`` is the
payload length), so a codec cannot report an estimate by mistake.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..spec import CodecSpec, Param


@dataclass(frozen=True)
class Encoded:
    """What an encoder produced: the payload stored in the shard under ``extension``.

    ``bits`` defaults to ``8 * len(payload)``; a codec whose payload carries a container
    (audio) sets it to the measured size of the stream inside it and says so in ``info``.
    """

    payload: bytes
    extension: str
    bits: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    extra: tuple[tuple[str, bytes], ...] = ()  # further members stored with the payload (e.g. a .png)

    @property
    def payload_bits(self) -> int:
        return 8 * len(self.payload) if self.bits is None else self.bits


class Codec(ABC):
    """Base of every codec. Subclasses declare name, modality, extension and params."""

    name: ClassVar[str]
    modality: ClassVar[str]  # "image" or "audio"
    extension: ClassVar[str]  # member extension of the payload in the shard (no dot)
    params: ClassVar[tuple[Param, ...]] = ()
    summary: ClassVar[str] = ""
    library: ClassVar[str] = ""  # the maintained library doing the work
    lossless: ClassVar[bool] = False
    needs_gpu: ClassVar[bool] = False  # route to GPU workers when there are some

    def __init__(self, spec: CodecSpec):
        if spec.name != self.name:
            raise ValueError(f"{type(self).__name__} cannot run spec {spec.canonical}")
        self.spec = spec

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Cross-parameter validation; raise ConfigError. Returns the (possibly normalised) values."""
        return values

    @classmethod
    def versions(cls) -> dict[str, str]:
        """Versions of the libraries that produce this codec's bytes (recorded in index.json)."""
        return {}

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this codec cannot run here (missing library or plugin), or None when it can."""
        return None


class ImageCodec(Codec):
    """An image codec: RGB uint8 ``(H, W, 3)`` arrays in, bytes out, and back."""

    modality: ClassVar[str] = "image"

    @abstractmethod
    def encode(self, rgb: np.ndarray) -> Encoded:
        """Encode an RGB uint8 image of shape (H, W, 3)."""

    @abstractmethod
    def decode(self, payload: bytes) -> np.ndarray:
        """Decode a payload written by :meth:`encode` back to RGB uint8 (H, W, 3)."""

"""The codec interface: a codec turns pixels (or samples) into bytes and back, nothing else.

Everything the pipeline records is measured from what the codec returns (``bits`` is the
payload length), so a codec cannot report an estimate by mistake.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from . import lossless
from .params import Param, RateKnob, check_values

if TYPE_CHECKING:  # annotations only: spec parsing looks codecs up in the registry, which imports this
    from .spec import CodecSpec


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
    #: what the encoder computed that a decoder in this process may start from instead of the payload
    #: (a learned codec's quantized latent, see :mod:`pipeline.codecs.latents`); never stored or compared
    kept: Any = field(default=None, compare=False, repr=False)

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
    uses_torch: ClassVar[bool] = False  # runs torch kernels (its bytes depend on torch's CPU level, recorded)
    #: the quality knob a rate target (``bpp=``, ``vbr_kbps=``) searches per sample; see :mod:`pipeline.codecs.target`
    rate_knob: ClassVar[RateKnob | None] = None

    def __init__(self, spec: CodecSpec):
        if spec.name != self.name:
            raise ValueError(f"{type(self).__name__} cannot run spec {spec.canonical}")
        self.spec = spec

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Cross-parameter validation; raise ConfigError. Returns the (possibly normalised) values."""
        return values if cls.rate_knob is None else check_values(cls.name, cls.rate_knob, values)

    def at_spec(self, spec: CodecSpec) -> "Codec":
        """This codec at another setting (a target setting's fixed knob values), same device and options."""
        return type(self)(spec)

    @abstractmethod
    def decode(self, payload: bytes) -> Any:
        """Decode a payload written by the codec's ``encode`` (each modality says to what)."""

    @classmethod
    def versions(cls) -> dict[str, str]:
        """Versions of the libraries that produce this codec's bytes (recorded in index.json)."""
        return {}

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this codec cannot run here (missing library or plugin), or None when it can."""
        return None

    @classmethod
    def stream_spec(cls, payload: bytes) -> str | None:
        """The setting that decodes ``payload`` read alone (no set, no record: webdataset interop).

        None: the bare family decodes it (libavcodec, Pillow read everything from the stream). A codec
        whose decoder is built per setting names it from the stream's header (EnCodec's model, a
        learned ``.bin``'s spec, which may name another family sharing the extension).
        """
        return None

    def decode_stream(self, payload: bytes) -> Any:
        """A payload read alone, as a member handler hands it out: what :meth:`decode` gives."""
        return self.decode(payload)

    @classmethod  # noqa: B027 - an optional hook, not abstract: most codecs need nothing before work
    def preflight(cls, spec: CodecSpec) -> None:
        """Check what one setting needs before any work (a learned codec's weights); raise ConfigError."""


class ImageCodec(Codec):
    """An image codec: RGB uint8 ``(H, W, 3)`` arrays in, bytes out, and back.

    A codec that stores pixels losslessly (the reference ``none``, or a learned codec whose shards
    also hold its decoded output) has the ``container`` parameter (:mod:`.lossless`, added when it
    registers). The container is where those pixels are stored, not how the codec codes them:
    ``self.container`` holds it and ``self.spec`` is the setting without it, so a learned codec's
    stream (which names ``self.spec``) is the same in every container.
    """

    modality: ClassVar[str] = "image"
    #: the payload is no image format (a learned codec's .bin): shards also store the decoded pixels
    #: losslessly, in the setting's container (PNG by default)
    reconstruction: ClassVar[bool] = False

    def __init__(self, spec: CodecSpec):
        super().__init__(spec)
        self.container = lossless.container_of(spec)
        self.spec = lossless.without_container(spec)

    @abstractmethod
    def encode(self, rgb: np.ndarray) -> Encoded:
        """Encode an RGB uint8 image of shape (H, W, 3)."""

    @abstractmethod
    def decode(self, payload: bytes) -> np.ndarray:
        """Decode a payload written by :meth:`encode` back to RGB uint8 (H, W, 3)."""


class AudioCodec(Codec):
    """An audio codec: float32 ``(n, channels)`` samples in, a coded file out, and back.

    A codec declares the sample rates and channel counts its encoder takes; the audio modality
    converts to them before :meth:`encode` (soxr, averaging or copying channels) and back after
    :meth:`decode`, so every codec is measured against the source as it was.
    """

    modality: ClassVar[str] = "audio"
    rates: ClassVar[tuple[int, ...] | None] = None  # sample rates the encoder takes; None: any
    channel_counts: ClassVar[tuple[int, ...]] = (1, 2)  # channel counts the encoder takes

    def codec_format(self, rate: int, channels: int) -> tuple[int, int]:
        """The (rate, channels) this codec encodes a ``rate`` Hz, ``channels``-channel signal at.

        Rate: the source rate if accepted, else the lowest accepted rate above it, else the highest.
        Channels: the source count if accepted, else the nearest accepted count.
        """
        if self.rates is None or rate in self.rates:
            out_rate = rate
        else:
            above = [r for r in sorted(self.rates) if r >= rate]
            out_rate = above[0] if above else max(self.rates)
        out_ch = channels if channels in self.channel_counts else min(self.channel_counts,
                                                                      key=lambda c: (abs(c - channels), c))
        return out_rate, out_ch

    @abstractmethod
    def encode(self, samples: np.ndarray, rate: int) -> Encoded:
        """Encode float32 ``(n, channels)`` samples at an accepted rate and channel count.

        ``Encoded.bits`` is the measured payload (see each codec), ``info['container_bytes']`` the file size.
        """

    @classmethod
    def stream_rate(cls, payload: bytes) -> int | None:
        """The sample rate the stream was made from when its decoder gives another (Opus: always 48 kHz)."""
        return None

    def decode_stream(self, payload: bytes) -> np.ndarray:
        """The whole decoded stream (no record to cut it) as float32 ``(n, channels)`` at :meth:`stream_rate`."""
        samples, rate = self.decode(payload)
        wanted = self.stream_rate(payload)
        if wanted is not None and wanted != rate:
            from ..media.audio import resample

            samples = resample(samples, rate, wanted, length=round(samples.shape[0] * wanted / rate))
        return np.asarray(samples, dtype=np.float32)

    @abstractmethod
    def decode(self, payload: bytes) -> tuple[np.ndarray, int]:
        """Decode a payload to float32 ``(n, channels)`` and its rate, starting at the first encoded sample.

        Encoder delay and priming are removed as the stream declares them; the result may run past
        the encoded length (end padding) and the caller trims it to the recorded length.
        """

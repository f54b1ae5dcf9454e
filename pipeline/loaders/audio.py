"""Audio payloads back to the source's samples: its rate, its channels, exactly its length.

A codec may have coded a resampled or remixed signal (Opus at 48 kHz, a mono-only codec); the
audio modality measured the payload after undoing that, and the loader calls the same function
(``pipeline.modalities.audio.decode_payload``) with the facts the record holds (``codec_samples``,
``codec_rate``, ``sample_rate``, ``num_samples``, ``channels``). Samples come out as float32
``(n, channels)``; the dataset turns them into ``(channels, n)`` tensors, torchaudio's layout.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ..errors import SampleError


def flac_audio(data: bytes):
    """A lossless reference member (``.flac``): the exact stored samples, with their rate."""
    from ..media.audio import decode_audio

    return decode_audio(data)


def reference(audio: Any, record: Mapping[str, Any]) -> np.ndarray:
    """Samples of a lossless member, checked against the record's rate and length."""
    rate, n = record.get("sample_rate"), record.get("num_samples")
    if rate is not None and audio.rate != rate:
        raise SampleError(f"lossless audio at {audio.rate} Hz, the record says {rate} Hz")
    if n is not None and audio.num_samples != n:
        raise SampleError(f"lossless audio holds {audio.num_samples} samples, the record says {n}")
    return audio.samples


def lossless(data: bytes, record: Mapping[str, Any]) -> np.ndarray:
    """A lossless member (the reference set's payload, MUSDB's stems): its samples, checked against the record."""
    return reference(flac_audio(data), record)


def restorer(spec) -> Callable[[bytes, Mapping[str, Any]], np.ndarray]:
    """decode(bytes, record) -> (n, channels) of a coded audio payload: the codec, then back to the source."""
    from ..codecs import make_codec

    return _Restorer(make_codec(spec))


class _Restorer:
    """Decode with the codec and cut/convert back to the source exactly as the audio modality measured it."""

    def __init__(self, codec):
        self.codec = codec

    def __call__(self, data: bytes, record: Mapping[str, Any]) -> np.ndarray:
        from ..modalities.audio import decode_payload

        missing = [k for k in ("codec_samples", "codec_rate", "codec_channels", "sample_rate", "num_samples",
                               "channels") if record.get(k) is None]
        if missing:
            raise SampleError(f"the record lacks {', '.join(missing)}")
        return decode_payload(self.codec, data, record)

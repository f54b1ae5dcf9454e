"""Audio payloads back to the source's samples: its rate, its channels, exactly its length.

A codec may have coded a resampled or remixed signal (Opus at 48 kHz, a mono-only codec); the
audio modality measured the payload after undoing that, and so does the loader, with the same
functions and the facts the record holds (``codec_samples``, ``codec_rate``, ``sample_rate``,
``num_samples``, ``channels``). Samples come out as float32 ``(n, channels)``; the dataset turns
them into ``(channels, n)`` tensors, torchaudio's layout.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ..errors import SampleError


def flac_audio(data: bytes):
    """A lossless reference member (``.flac``): the exact stored samples, with their rate."""
    from ..audio_io import decode_audio

    return decode_audio(data)


def reference(audio: Any, record: Mapping[str, Any]) -> np.ndarray:
    """Samples of a lossless member, checked against the record's rate and length."""
    rate, n = record.get("sample_rate"), record.get("num_samples")
    if rate is not None and audio.rate != rate:
        raise SampleError(f"lossless audio at {audio.rate} Hz, the record says {rate} Hz")
    if n is not None and audio.num_samples != n:
        raise SampleError(f"lossless audio holds {audio.num_samples} samples, the record says {n}")
    return audio.samples


def restore(decoded: tuple[np.ndarray, int], record: Mapping[str, Any]) -> np.ndarray:
    """A codec's decode (samples at its rate) cut and converted back to the source, as the modality does."""
    from ..audio_io import remix, resample

    y, rate = decoded
    need = ("codec_samples", "codec_rate", "sample_rate", "num_samples", "channels")
    missing = [k for k in need if record.get(k) is None]
    if missing:
        raise SampleError(f"the record lacks {', '.join(missing)}")
    if rate != record["codec_rate"]:
        raise SampleError(f"decoded at {rate} Hz, the record says the codec ran at {record['codec_rate']} Hz")
    if y.ndim != 2 or y.shape[0] < record["codec_samples"]:
        raise SampleError(f"decoded {y.shape}, fewer than the {record['codec_samples']} samples encoded")
    y = y[: record["codec_samples"]]
    if rate != record["sample_rate"]:
        y = resample(y, rate, record["sample_rate"], length=record["num_samples"])
    out = remix(np.ascontiguousarray(y, dtype=np.float32), record["channels"])
    if out.shape != (record["num_samples"], record["channels"]):
        raise SampleError(f"restored {out.shape}, the source is {(record['num_samples'], record['channels'])}")
    return out


def payload_decoder(spec) -> tuple[str, Callable[[bytes, Mapping[str, Any]], np.ndarray]]:
    """(member extension, decode(bytes, record) -> (n, channels)) of an audio set's payload."""
    from ..codecs import get_codec, make_codec

    cls = get_codec(spec.name)
    if cls.lossless and cls.modality == "any":  # the reference set: the source samples as FLAC
        from ..modalities.audio import LOSSLESS_EXTENSION

        return LOSSLESS_EXTENSION, lambda data, record: reference(flac_audio(data), record)
    codec = make_codec(spec)
    return cls.extension, _Restorer(codec)


class _Restorer:
    def __init__(self, codec):
        self.codec = codec

    def __call__(self, data: bytes, record: Mapping[str, Any]) -> np.ndarray:
        return restore(self.codec.decode(data), record)

"""Audio: source bytes -> exact samples (:mod:`pipeline.media.audio`) -> codec -> bits, kbps, SNR, SI-SDR.

Per codec setting the samples are converted to what the encoder takes (soxr VHQ to its rate,
channels averaged or copied), encoded, decoded from the payload bytes, converted back to the
source's rate and channels, cut to exactly the source's number of samples, and compared with
the source. The codec's stream itself says where the audio starts (see the codecs); the cut at
the end only removes what the stream left past the recorded length (``end_padding``, which
is 0 for every built-in codec and checked by the tests).

:func:`decode_payload` repeats the decoding half for a stored payload and its ``.json`` record, so a
loader gets exactly the samples the metrics saw.

``bits`` is the coded stream's payload (each codec says what that counts), ``container_bytes``
the stored file; ``kbps = bits / duration / 1000`` with the source's duration and
``bits_per_sample = bits / (num_samples * channels)``.

Options (``ShardTask.options``): ``pesq`` and ``stoi`` (speech measures at 16 kHz), ``deep``
(CDPAM, :mod:`pipeline.metrics.deep`),
``decoded_flac`` (also store the decoded signal, rounded to the source's bit depth, as
``{key}.decoded.flac``). The ``none`` codec stores the source samples as lossless FLAC.
A source may hand over further ``tracks`` (MUSDB stems with ``encode_stems``): each is coded with
the same setting and stored as ``{key}.{track}.{ext}``, its measures under ``tracks`` in the JSON
(in target mode with its own search and ``chosen_quality``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..codecs import target
from ..media.audio import Audio, decode_audio, flac_bytes, quantize, remix, resample
from ..metrics import deep
from ..metrics.audio import distortion, pesq_wb, stoi
from ..codecs.base import AudioCodec, Codec, Encoded
from ..errors import SampleError
from ..sources.base import RawSample
from ..store.index import Field, record
from . import ReportAxes

COLUMNS = [("sample_rate", pa.int64()), ("channels", pa.int64()), ("num_samples", pa.int64()),
           ("duration", pa.float64()), ("bit_depth", pa.int64()), ("codec_rate", pa.int64()),
           ("codec_channels", pa.int64()), ("codec_samples", pa.int64()), ("bits", pa.int64()),
           ("kbps", pa.float64()),
           ("bits_per_sample", pa.float64()), ("container_bytes", pa.int64()), ("setup_bytes", pa.int64()),
           ("packets", pa.int64()), ("end_padding", pa.int64()), ("snr", pa.float64()), ("si_sdr", pa.float64()),
           ("mse", pa.float64()), ("pesq", pa.float64()), ("stoi", pa.float64()), ("tracks_bits", pa.int64()),
           ("target_kbps", pa.float64()), ("chosen_quality", pa.int64()),
           *[(c, pa.float64()) for c in deep.columns("audio")]]

#: columns that are +inf (stored as null in JSON) when the decoded samples equal the source (mse == 0)
INF_WHEN_EXACT = ("snr", "si_sdr")

LOSSLESS_EXTENSION = "flac"

#: reports: kbit/s against SNR; raw audio counts as 16-bit PCM
REPORT = ReportAxes(rate="kbps", primary="snr", qualities=("snr", "si_sdr", "pesq", "stoi"),
                    raw="16 bits per channel-sample")


def _col(frame: Any, name: str) -> np.ndarray:
    return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)


def report_raw_bits(frame: Any) -> np.ndarray:
    return 16.0 * _col(frame, "channels") * _col(frame, "num_samples")


def report_storage(shard_bytes: int, frame: Any) -> dict[str, float]:
    seconds = float((_col(frame, "num_samples") / _col(frame, "sample_rate")).sum())
    return {"disk_kbps": 8.0 * shard_bytes / seconds / 1000.0 if seconds > 0 else math.nan}


def report_extras(frame: Any) -> dict[str, float]:
    return {}


@dataclass(frozen=True)
class PreparedAudio:
    """A decoded sample: the main signal, and further tracks coded alongside it (stems)."""

    main: Audio
    tracks: tuple[tuple[str, Audio], ...] = ()


def prepare(raw: RawSample, options: dict[str, Any] | None = None) -> PreparedAudio:
    main = decode_audio(raw.data)
    tracks = []
    for name, data in sorted(getattr(raw, "tracks", {}).items()):
        track = decode_audio(data)
        if track.rate != main.rate or track.num_samples != main.num_samples:
            raise SampleError(f"track {name!r} has {track.num_samples} samples at {track.rate} Hz, the main "
                              f"signal {main.num_samples} at {main.rate} Hz")
        tracks.append((name, track))
    return PreparedAudio(main, tuple(tracks))


def schema(codec: type[Codec], name: str, options: Mapping[str, Any], tracks: Sequence[str] = (),
           spec: Any = None) -> tuple[Field, ...]:
    """The payload, coded tracks and measures a set's samples carry.

    The payload decodes to exactly the samples the metrics saw (the reference set's FLAC is
    checked against the record; an image container has no say here); tracks coded with the setting
    are ``coded_stems``; the ``decoded.flac`` members of ``--store-decoded`` are declared but not
    decoded by the loaders.
    """
    reference = codec.lossless and codec.modality == "any"
    ext = LOSSLESS_EXTENSION if reference else codec.extension
    fields = [Field(name, "payload", "audio", ext, "flac" if reference else "audio_codec")]
    if not reference:  # the reference set has them as FLAC already
        fields += [Field(t, "payload", "audio", f"{t}.{ext}", "audio_codec", "coded_stems") for t in tracks]
    if options.get("decoded_flac"):
        fields.append(Field("decoded", "payload", "audio", "decoded.flac"))
        if not reference:
            fields += [Field(t, "payload", "audio", f"{t}.decoded.flac", None, "decoded_stems") for t in tracks]
    return (*fields, *(record(n, t, view=True) for n, t in (("bits", "int"), ("kbps", "float"),
                                                            ("sample_rate", "int"), ("num_samples", "int"))))


def is_lossless_reference(codec: Codec) -> bool:
    """The ``none`` codec (modality ``any``): audio gets the source samples as FLAC."""
    return codec.lossless and codec.modality == "any"


def _code(codec: Codec, audio: Audio) -> tuple[Encoded, np.ndarray, dict[str, Any]]:
    """Encode one signal, decode it back to the source's format; returns payload, decoded samples, facts."""
    n, rate, channels = audio.num_samples, audio.rate, audio.channels
    t0 = time.perf_counter()
    if is_lossless_reference(codec):
        payload = flac_bytes(audio)
        enc = Encoded(payload, LOSSLESS_EXTENSION, info={"container_bytes": len(payload)})
        t1 = time.perf_counter()
        back = decode_audio(payload)
        if back.rate != rate or not np.array_equal(back.samples, audio.samples):
            raise SampleError("FLAC did not give back the source samples")
        t2 = time.perf_counter()
        decoded, c_rate, c_channels, coded, padding = back.samples, rate, channels, n, 0
    else:
        if not isinstance(codec, AudioCodec):
            raise SampleError(f"{codec.name} is not an audio codec")
        c_rate, c_channels = codec.codec_format(rate, channels)
        x = remix(audio.samples, c_channels)
        if c_rate != rate:
            x = resample(x, rate, c_rate)
        coded = x.shape[0]
        if target.target_of(codec) is not None:  # mp3:vbr_kbps=: the best VBR quality at or under it
            def kbps(e: Encoded) -> float:  # as recorded below
                return e.payload_bits / audio.duration / 1000.0

            chosen, enc, searched = target.search(codec, lambda c: c.encode(x, c_rate), kbps)
            enc = Encoded(enc.payload, enc.extension, enc.bits, {**enc.info, **searched}, enc.extra)
        else:
            chosen, enc = codec, codec.encode(x, c_rate)
        t1 = time.perf_counter()
        shape = {"sample_rate": rate, "channels": channels, "num_samples": n, "codec_rate": c_rate,
                 "codec_channels": c_channels, "codec_samples": coded}
        decoded, padding = _decode_back(chosen, enc.payload, shape)
        t2 = time.perf_counter()
    if decoded.shape != audio.samples.shape:
        raise SampleError(f"decoded {decoded.shape}, the source is {audio.samples.shape}")
    bits = enc.payload_bits
    facts: dict[str, Any] = {
        "codec_rate": c_rate, "codec_channels": c_channels, "codec_samples": coded,
        "bits": bits, "kbps": bits / audio.duration / 1000.0, "bits_per_sample": bits / (n * channels),
        "container_bytes": int(enc.info.get("container_bytes", len(enc.payload))),
        "setup_bytes": enc.info.get("setup_bytes"), "packets": enc.info.get("packets"), "end_padding": padding,
        **distortion(audio.samples, decoded), "encode_s": t1 - t0, "decode_s": t2 - t1,
        **{k: v for k, v in enc.info.items() if k not in ("container_bytes", "setup_bytes", "packets",
                                                          "packet_bytes")},
    }
    return enc, decoded, facts


def _decode_back(codec: AudioCodec, payload: bytes, record: Mapping[str, Any]) -> tuple[np.ndarray, int]:
    """Decode, cut to the encoded length, convert back to the source's rate and channels; (samples, end padding)."""
    c_rate, c_channels, coded = record["codec_rate"], record["codec_channels"], record["codec_samples"]
    y, y_rate = codec.decode(payload)
    if y_rate != c_rate or y.ndim != 2 or y.shape[1] != c_channels:
        raise SampleError(f"{codec.name} decoded {y.shape} at {y_rate} Hz, it encoded "
                          f"{c_channels} channels at {c_rate} Hz")
    if y.shape[0] < coded:
        raise SampleError(f"{codec.name} decoded {y.shape[0]} samples, fewer than the {coded} encoded")
    padding = y.shape[0] - coded
    y = y[:coded]
    if c_rate != record["sample_rate"]:
        y = resample(y, c_rate, record["sample_rate"], length=record["num_samples"])
    return remix(np.ascontiguousarray(y, dtype=np.float32), record["channels"]), padding


def decode_payload(codec: Codec, payload: bytes, record: Mapping[str, Any]) -> np.ndarray:
    """A stored payload as float32 ``(num_samples, channels)`` at the source rate: exactly what was measured.

    ``record`` is the sample's ``.json`` (or manifest row): its ``codec_rate``, ``codec_channels``,
    ``codec_samples`` say what the stream holds, ``sample_rate``, ``channels``, ``num_samples`` what
    the source was. Loaders use this to get the decoded audio the metrics were computed on.
    """
    if is_lossless_reference(codec):
        return decode_audio(payload).samples
    if not isinstance(codec, AudioCodec):
        raise SampleError(f"{codec.name} is not an audio codec")
    return _decode_back(codec, payload, record)[0]


def _decoded_flac(audio: Audio, decoded: np.ndarray) -> bytes:
    q, _ = quantize(decoded, audio.bit_depth)
    return flac_bytes(Audio(q, audio.rate, audio.bit_depth))


def encode(codec: Codec, prepared: PreparedAudio, options: dict[str, Any]) -> tuple[list[tuple[str, bytes]],
                                                                                    dict[str, Any]]:
    """Code the main signal (and any tracks) with one setting; members are payload first, then extras."""
    audio = prepared.main
    enc, decoded, facts = _code(codec, audio)
    m: dict[str, Any] = {"sample_rate": audio.rate, "channels": audio.channels, "num_samples": audio.num_samples,
                         "duration": audio.duration, "bit_depth": audio.bit_depth, **facts}
    if options.get("pesq"):
        m["pesq"] = pesq_wb(audio.samples, decoded, audio.rate)
    if options.get("stoi"):
        m["stoi"] = stoi(audio.samples, decoded, audio.rate)
    if options.get("deep"):  # CDPAM on the main signal (stems are not scored)
        t3 = time.perf_counter()
        m.update(deep.measure(options, audio.samples, decoded, rate=audio.rate))
        m["deep_s"] = time.perf_counter() - t3
    members = [(enc.extension, enc.payload)]
    extras = []
    if options.get("decoded_flac"):
        extras.append(("decoded.flac", _decoded_flac(audio, decoded)))
    if prepared.tracks and not is_lossless_reference(codec):  # the reference set has them as FLAC already
        tracks: dict[str, dict[str, Any]] = {}
        for name, track in prepared.tracks:
            t_enc, t_dec, t_facts = _code(codec, track)
            members.append((f"{name}.{t_enc.extension}", t_enc.payload))
            # in target mode each track gets its own search: its chosen quality is recorded with it
            tracks[name] = {k: t_facts[k] for k in ("bits", "kbps", "container_bytes", "snr", "si_sdr",
                                                    "end_padding", "target_kbps", "chosen_quality")
                            if k in t_facts}
            m["encode_s"] += t_facts["encode_s"]
            m["decode_s"] += t_facts["decode_s"]
            if options.get("decoded_flac"):
                extras.append((f"{name}.decoded.flac", _decoded_flac(track, t_dec)))
        m["tracks"] = {k: {f: (None if isinstance(v, float) and not np.isfinite(v) else v) for f, v in d.items()}
                       for k, d in tracks.items()}
        m["tracks_bits"] = sum(d["bits"] for d in tracks.values())
    return members + extras, m

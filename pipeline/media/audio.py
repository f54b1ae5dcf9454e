"""Audio in and out: decode sources to exact samples, write FLAC, resample, and measure coded streams.

Samples travel as float32 arrays of shape ``(num_samples, channels)`` whose values are exact
integers scaled by ``2**(bit_depth - 1)``: integer PCM sources (WAV, FLAC, AIFF at 8, 16 or 24
bits) keep their exact values, so the lossless reference set (``none`` -> FLAC) holds the very
samples of the source; float or lossy sources (an AAC stem, an MP3) are decoded once and
quantized to 24 bits (error below -140 dBFS), and that quantized signal is the reference.

Decoding follows the stream's own timing: libavcodec removes encoder delay and priming as the
stream says (LAME/Xing tag, Opus pre-skip, MP4 edit lists); MP4 end padding, which libavcodec
leaves in, is cut at the end of the last packet as the edit list gives it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SampleError

#: libsndfile subtypes that hold exact integers, and their depth
_PCM_DEPTH = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24}
_FLAC_SUBTYPE = {8: "PCM_S8", 16: "PCM_16", 24: "PCM_24"}
#: containers where libavcodec does not trim the end padding and the edit list gives the length
_MOV_FORMATS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "ipod")
QUANTIZE_DEPTH = 24  # float and lossy sources are quantized to this many bits


@dataclass(frozen=True)
class Audio:
    """Decoded audio: float32 ``(n, channels)`` samples that are exact ``bit_depth``-bit integers / 2**(depth-1)."""

    samples: np.ndarray
    rate: int
    bit_depth: int = 16
    info: dict[str, Any] = field(default_factory=dict)  # what decoding found: codec, clipped samples, ...

    def __post_init__(self) -> None:
        s = self.samples
        if s.ndim != 2 or s.dtype != np.float32 or not s.flags.c_contiguous:
            raise ValueError(f"audio samples must be C-contiguous float32 (n, channels), got {s.dtype} {s.shape}")
        if self.rate <= 0 or s.shape[1] < 1:
            raise ValueError(f"bad audio: rate {self.rate}, shape {s.shape}")

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration(self) -> float:
        return self.num_samples / self.rate


def quantize(x: np.ndarray, depth: int = QUANTIZE_DEPTH) -> tuple[np.ndarray, int]:
    """Round float samples to ``depth``-bit integers (as float32 / 2**(depth-1)); returns (samples, clipped count)."""
    scale = float(1 << (depth - 1))
    q = np.round(np.asarray(x, dtype=np.float64) * scale)
    clipped = int(np.count_nonzero((q < -scale) | (q > scale - 1)))
    np.clip(q, -scale, scale - 1, out=q)
    return np.ascontiguousarray((q / scale).astype(np.float32)), clipped


def exact_depth(x: np.ndarray) -> int | None:
    """16 or 24 when every sample is an exact integer of that depth (/2**(depth-1)) in range, else None."""
    if x.size and float(np.max(np.abs(x))) > 1.0:
        return None
    for depth in (16, 24):
        scaled = x.astype(np.float64) * float(1 << (depth - 1))
        if np.array_equal(scaled, np.round(scaled)) and (x.size == 0 or float(scaled.max()) < (1 << (depth - 1))):
            return depth
    return None


def to_int(audio: Audio) -> np.ndarray:
    """The exact integers behind ``audio`` (int16 for 8/16 bits, int32 holding 24-bit values otherwise)."""
    scale = float(1 << (audio.bit_depth - 1))
    q = np.round(audio.samples.astype(np.float64) * scale)
    return q.astype(np.int16 if audio.bit_depth <= 16 else np.int32)


# ----------------------------------------------------------------------------------------- decoding

def decode_audio(data: bytes, *, stream: int = 0) -> Audio:
    """Decode a source file's bytes (any format libsndfile or libavformat reads) to exact samples.

    ``stream`` picks the audio stream of a multi-stream file (a ``.stem.mp4``); integer PCM in
    WAV/FLAC/AIFF is read by libsndfile, everything else by PyAV (libavcodec).
    """
    if stream == 0:
        audio = _decode_pcm_soundfile(data)
        if audio is not None:
            return audio
    samples, rate, info = av_decode(data, stream=stream, find_depth=True)
    if samples.shape[0] == 0:
        raise SampleError("the audio stream decodes to no samples")
    depth = info.get("exact_depth")
    if depth:
        return Audio(samples, rate, depth, info)
    q, clipped = quantize(samples)
    return Audio(q, rate, QUANTIZE_DEPTH, {**info, "quantized_from": info.get("sample_format"), "clipped": clipped})


def _decode_pcm_soundfile(data: bytes) -> Audio | None:
    """Integer PCM through libsndfile, exactly; None when this is not integer PCM libsndfile reads."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # not a format libsndfile knows (MP4, ...): PyAV takes it
        return None
    depth = _PCM_DEPTH.get(info.subtype)
    if depth is None:
        return None
    try:
        ints, rate = sf.read(io.BytesIO(data), dtype="int32", always_2d=True)
    except Exception as exc:
        raise SampleError(f"cannot decode {info.format} audio: {exc}") from None
    if ints.shape[0] == 0:
        raise SampleError("the audio file holds no samples")
    # int32 from libsndfile is left-justified: 8/16/24-bit values times 2**(32-depth), exact in float32, and
    # scaling by 2**-31 is exact (32-bit values round once, as they would through float64)
    samples = ints.astype(np.float32)
    samples *= np.float32(2.0 ** -31)
    return Audio(samples, int(rate), depth, {"format": info.format, "subtype": info.subtype})


def _join_frames(chunks: list[np.ndarray], channels: int) -> np.ndarray:
    """Decoded frames as float32 (n, ch); ``to_ndarray()`` gives planar (channels, n) or packed (1, n * channels)."""
    if not chunks:
        return np.zeros((0, channels), np.float32)
    if all(c.shape[0] == channels for c in chunks):  # planar (and mono, where both layouts agree)
        arr = np.concatenate(chunks, axis=1).T
    else:
        arr = np.concatenate([c.reshape(-1, channels) if c.shape[0] != channels else c.T for c in chunks])
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / np.float32(32768.0)
    if arr.dtype == np.int32:
        return (arr.astype(np.float64) / 2147483648.0).astype(np.float32)
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) - 128.0) / np.float32(128.0)
    return np.ascontiguousarray(arr, dtype=np.float32)


def av_decode(data: bytes, *, stream: int = 0, find_depth: bool = False) -> tuple[np.ndarray, int, dict[str, Any]]:
    """Decode one audio stream with PyAV: float32 (n, channels), rate, and what the stream said.

    Start: libavcodec drops the priming the stream declares. End: in MP4 the edit list ends the
    last packet early (``pts + duration``); the decoded frames are cut there. ``find_depth`` also
    reports whether the samples are exact 16- or 24-bit integers (``exact_depth``).
    """
    import av

    try:
        container = av.open(io.BytesIO(data), "r")
    except Exception as exc:
        raise SampleError(f"cannot open audio: {type(exc).__name__}: {exc}") from None
    with container:
        if len(container.streams.audio) <= stream:
            raise SampleError(f"no audio stream #{stream} (the file has {len(container.streams.audio)})")
        st = container.streams.audio[stream]
        ctx = st.codec_context
        rate = int(ctx.sample_rate)
        is_mov = any(f in container.format.name.split(",") for f in _MOV_FORMATS)
        chunks: list[np.ndarray] = []
        end: int | None = None
        fmt_name = None
        try:
            if is_mov:  # packet timing needed for the end of the edit list
                for packet in container.demux(st):
                    if packet.pts is not None and packet.duration:
                        pend = packet.pts + packet.duration
                        end = pend if end is None else max(end, pend)
                    for frame in packet.decode():
                        chunks.append(frame.to_ndarray())
                        fmt_name = frame.format.name
            else:
                for frame in container.decode(st):
                    chunks.append(frame.to_ndarray())
                    fmt_name = fmt_name or frame.format.name
        except av.error.FFmpegError as exc:
            raise SampleError(f"cannot decode audio: {exc}") from None
        samples = _join_frames(chunks, ctx.layout.nb_channels)
        info: dict[str, Any] = {"codec": ctx.name, "sample_format": fmt_name}
        if end is not None and st.time_base is not None:
            last = int(round(float(end * st.time_base) * rate))
            if 0 < last < samples.shape[0]:
                info["end_trimmed"] = samples.shape[0] - last
                samples = samples[:last]
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if find_depth:
        exact = exact_depth(samples)
        if exact:
            info["exact_depth"] = exact
    return samples, rate, info


# ----------------------------------------------------------------------------------------- encoding

def flac_bytes(audio: Audio) -> bytes:
    """The samples as FLAC at their bit depth: lossless, so decoding gives back every value exactly."""
    import soundfile as sf

    if audio.bit_depth not in _FLAC_SUBTYPE:
        raise ValueError(f"no FLAC subtype for {audio.bit_depth}-bit samples")
    ints = to_int(audio)
    if audio.bit_depth == 24:
        ints = ints << 8  # libsndfile takes int32 left-justified and keeps the top 24 bits, exactly
    elif audio.bit_depth == 8:
        ints = ints << 8  # int16 left-justified, top 8 bits kept
    buf = io.BytesIO()
    sf.write(buf, ints, audio.rate, format="FLAC", subtype=_FLAC_SUBTYPE[audio.bit_depth])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------- resampling

def opus_input_rate(data: bytes) -> int | None:
    """The input sample rate an Ogg Opus stream's OpusHead records (0 or absent: None)."""
    at = data.find(b"OpusHead")
    if at < 0 or at + 16 > len(data):
        return None
    rate = int.from_bytes(data[at + 12:at + 16], "little")
    return rate or None


def resample(x: np.ndarray, src: int, dst: int, length: int | None = None) -> np.ndarray:
    """High-quality (soxr VHQ, linear phase, no delay) resampling of float32 (n, channels).

    With ``length`` the result has exactly that many samples: the input is padded with a few
    zeros (the silence after the signal) so that the resampler's output covers the whole span.
    """
    import soxr

    if src == dst:
        out = x
    else:
        if length is not None:
            pad = int(np.ceil(src / dst)) + 16
            x = np.concatenate([x, np.zeros((pad, x.shape[1]), dtype=x.dtype)])
        out = soxr.resample(x, src, dst, quality="VHQ")
    if length is not None:
        if out.shape[0] < length:
            raise ValueError(f"resampled {out.shape[0]} samples, fewer than {length}")
        out = out[:length]
    return np.ascontiguousarray(out, dtype=np.float32)


def remix(x: np.ndarray, channels: int) -> np.ndarray:
    """Mono to stereo by copying, stereo (or more) to mono by averaging; the same count is a no-op."""
    have = x.shape[1]
    if have == channels:
        return x
    if channels == 1:
        return np.ascontiguousarray(x.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32))
    if have == 1:
        return np.ascontiguousarray(np.repeat(x, channels, axis=1))
    raise SampleError(f"cannot map {have} channels to {channels}")


# ----------------------------------------------------------------------------------------- measuring

@dataclass(frozen=True)
class StreamStats:
    """What a coded file holds, measured by demuxing it: packets, decoder set-up, and the rest."""

    codec: str
    rate: int
    channels: int
    packets: int
    packet_bytes: int  # sum of the coded packets the demuxer returns
    setup_bytes: int  # decoder configuration the stream cannot be decoded without (see setup_bytes())
    container_bytes: int  # the whole file

    @property
    def bits(self) -> int:
        return 8 * (self.packet_bytes + self.setup_bytes)


def setup_bytes(codec: str, extradata: bytes | None) -> int:
    """Bytes of decoder configuration that count in the payload.

    Opus: the OpusHead (pre-skip, channel mapping). AAC: the AudioSpecificConfig. Vorbis: the
    identification and setup headers (the codebooks), not the comment header. MP3: none (every
    frame carries its own header). Tags, the LAME/Xing info frame, OpusTags and the Vorbis
    comment are metadata and count in the container only.
    """
    data = extradata or b""
    if codec != "vorbis" or not data:
        return len(data)
    # Xiph lacing as libavformat stores the three Vorbis headers: count-1, two laced sizes, then the data
    if data[0] != 2:
        raise SampleError(f"unexpected Vorbis extradata layout (first byte {data[0]})")
    sizes, pos = [], 1
    for _ in range(2):
        size = 0
        while True:
            b = data[pos]
            pos += 1
            size += b
            if b < 255:
                break
        sizes.append(size)
    ident, comment = sizes
    setup = len(data) - pos - ident - comment
    if setup <= 0:
        raise SampleError("truncated Vorbis headers")
    return ident + setup


def stream_stats(payload: bytes) -> StreamStats:
    """Demux a coded file and count its packets' bytes (no decoding)."""
    import av

    try:
        container = av.open(io.BytesIO(payload), "r")
    except Exception as exc:
        raise SampleError(f"cannot open coded audio: {type(exc).__name__}: {exc}") from None
    with container:
        if not container.streams.audio:
            raise SampleError("coded file has no audio stream")
        st = container.streams.audio[0]
        ctx = st.codec_context
        count = total = 0
        for packet in container.demux(st):
            if packet.size:
                count += 1
                total += packet.size
        channels = ctx.layout.nb_channels
        return StreamStats(ctx.name, int(ctx.sample_rate), int(channels), count, total,
                           setup_bytes(ctx.name, ctx.extradata), len(payload))

"""Lossy audio codecs from FFmpeg: MP3 (LAME), Opus (libopus), AAC (FFmpeg's encoder), Vorbis (libvorbis).

Two ways in, the faster one per codec as measured by ``bench/bench_audio.py --backends``:

* the ``ffmpeg`` binary that imageio-ffmpeg ships, one process per encode (MP3: the LAME in
  PyAV's wheels runs about 4x slower on 44.1 kHz stereo; Vorbis: PyAV's wheels have no libvorbis);
* PyAV in-process (Opus, AAC: no process start, which dominates on short clips).

Payloads are decoded in-process: with PyAV, and Vorbis with libvorbis through libsndfile (FFmpeg's
Ogg demuxer can cut the last block of a Vorbis stream short; see :class:`Vorbis`). Containers are
written to a seekable target so the muxer fills in what a decoder needs to start and stop at the
right sample: the LAME/Xing info frame (MP3 encoder delay and padding), Ogg granule positions and
the Opus pre-skip, and MP4 edit lists (AAC priming). ``bitexact`` keeps library versions and random
Ogg serial numbers out of the files, so the same input gives the same bytes.

``bits`` counts the coded packets as libavformat's demuxer returns them plus the decoder
set-up the stream needs (see :func:`pipeline.media.audio.setup_bytes`); the file size is
``container_bytes``.
"""
from __future__ import annotations

import functools
import io
import os
import subprocess
import tempfile
from typing import Any, ClassVar, Sequence

import numpy as np

from ..media.audio import av_decode, opus_input_rate, stream_stats
from ..errors import ConfigError, SampleError
from .params import Param, RateKnob
from . import register
from .base import AudioCodec, Encoded

MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped in the imageio-ffmpeg wheel (a full static build)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.lru_cache(maxsize=1)
def _cli_encoders() -> frozenset[str]:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True, check=True)
    names = set()
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] == "A":
            names.add(parts[1])
    return frozenset(names)


@functools.lru_cache(maxsize=1)
def _cli_version() -> str:
    out = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True, check=True)
    return out.stdout.split("\n", 1)[0].removeprefix("ffmpeg version ").split(" Copyright")[0]


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}[channels]


def encode_cli(samples: np.ndarray, rate: int, encoder: str, muxer: str, options: list[tuple[str, str]],
               muxer_options: Sequence[tuple[str, str]] = ()) -> bytes:
    """Encode with the ffmpeg binary: raw float32 on stdin, the container written to a (seekable) file."""
    channels = samples.shape[1]
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
           "-f", "f32le", "-ar", str(rate), "-ch_layout", _layout(channels), "-i", "pipe:0",
           "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact", "-threads", "1",
           "-c:a", encoder]
    for key, value in options:
        cmd += [f"-{key}", value]
    cmd += ["-f", muxer]
    for key, value in muxer_options:
        cmd += [f"-{key}", value]
    with tempfile.TemporaryDirectory(prefix="mpq-ffmpeg-") as tmp:
        out = os.path.join(tmp, f"out.{muxer}")
        with open(os.path.join(tmp, "stderr"), "w+b") as err:
            proc = subprocess.Popen([*cmd, "-y", out], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
            try:
                _write_all(proc, np.ascontiguousarray(samples, "<f4").tobytes())
                returncode = proc.wait()
            except BaseException:  # interrupted (a worker shutting down): leave no ffmpeg behind
                proc.kill()
                proc.wait()
                raise
            err.seek(0)
            stderr = err.read()
        if returncode != 0:
            lines = [ln.split("] ", 1)[-1] for ln in stderr.decode(errors="replace").strip().splitlines()]
            raise SampleError(f"ffmpeg {encoder} failed: {' | '.join(lines[:2]) or f'exit {returncode}'}")
        with open(out, "rb") as fh:
            return fh.read()


_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), not exported by Python 3.11's fcntl


def _write_all(proc: subprocess.Popen, data: bytes) -> None:
    """The whole input in one blocking write through a 1 MiB pipe.

    ``communicate`` feeds a pipe 4 KiB per poll, a context switch each, which cost 7% of an MP3
    encode of 44.1 kHz stereo on one core. stderr goes to a file, so ffmpeg can never block on it
    while we write.
    """
    import fcntl

    stdin = proc.stdin
    if stdin is None:
        raise ValueError("ffmpeg was started without a stdin pipe")
    try:
        fcntl.fcntl(stdin.fileno(), _F_SETPIPE_SZ, 1 << 20)
    except OSError:  # not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe works, in more steps
        pass
    try:
        stdin.write(data)
    except BrokenPipeError:  # ffmpeg stopped reading (it failed): its exit status and message say why
        pass
    finally:
        try:
            stdin.close()
        except BrokenPipeError:
            pass


def encode_pyav(samples: np.ndarray, rate: int, encoder: str, muxer: str, options: list[tuple[str, str]],
                muxer_options: Sequence[tuple[str, str]] = ()) -> bytes:
    """Encode with PyAV into an in-memory (seekable) container."""
    import av

    opts = dict(options)
    bit_rate = opts.pop("b:a", None)
    buf = io.BytesIO()
    try:
        with av.open(buf, "w", format=muxer, container_options={"fflags": "+bitexact", **dict(muxer_options)}) as out:
            st = out.add_stream(encoder, rate=rate, options=opts)
            ctx = st.codec_context
            ctx.layout = _layout(samples.shape[1])
            ctx.flags |= av.codec.context.Flags.bitexact
            if bit_rate is not None:
                ctx.bit_rate = int(bit_rate)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T, dtype=np.float32), format="fltp",
                                               layout=_layout(samples.shape[1]))
            frame.sample_rate = rate
            frame.pts = 0
            for packet in st.encode(frame):
                out.mux(packet)
            for packet in st.encode(None):
                out.mux(packet)
    except av.error.FFmpegError as exc:
        raise SampleError(f"{encoder} failed: {exc}") from None
    return buf.getvalue()


class _FFmpegAudio(AudioCodec):
    encoder: ClassVar[str]  # libavcodec encoder name
    muxer: ClassVar[str]  # libavformat muxer name
    backend: ClassVar[str]  # "cli" (ffmpeg binary) or "pyav"
    muxer_options: ClassVar[tuple[tuple[str, str], ...]] = ()

    def options(self) -> list[tuple[str, str]]:
        """Encoder options as ffmpeg spells them (``b:a`` in bits per second, ``q:a``, private options)."""
        raise NotImplementedError

    def encode(self, samples: np.ndarray, rate: int) -> Encoded:
        run = encode_cli if self.backend == "cli" else encode_pyav
        payload = run(samples, rate, self.encoder, self.muxer, self.options(), list(self.muxer_options))
        stats = stream_stats(payload)
        if stats.rate != rate or stats.channels != samples.shape[1]:
            raise SampleError(f"{self.name} wrote {stats.rate} Hz x{stats.channels}, "
                              f"not the {rate} Hz x{samples.shape[1]} it was given")
        info = {"container_bytes": stats.container_bytes, "packet_bytes": stats.packet_bytes,
                "setup_bytes": stats.setup_bytes, "packets": stats.packets}
        return Encoded(payload, self.extension, bits=stats.bits, info=info)

    def decode(self, payload: bytes) -> tuple[np.ndarray, int]:
        samples, rate, _ = av_decode(payload)
        return samples, rate

    @classmethod
    def versions(cls) -> dict[str, str]:
        import av

        if cls.backend == "cli":
            import imageio_ffmpeg

            return {"imageio-ffmpeg": imageio_ffmpeg.__version__, "ffmpeg": _cli_version(),
                    "av (decoding)": av.__version__}
        return {"av": av.__version__, "libavcodec": ".".join(map(str, av.library_versions["libavcodec"]))}

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import av
        except ImportError:
            return "PyAV (av) is not installed"
        if cls.backend == "cli":
            try:
                have = _cli_encoders()
            except (ImportError, OSError, subprocess.CalledProcessError) as exc:
                return f"no usable ffmpeg binary (imageio-ffmpeg): {exc}"
            return None if cls.encoder in have else f"the bundled ffmpeg has no {cls.encoder} encoder"
        try:
            av.codec.Codec(cls.encoder, "w")
        except Exception:
            return f"PyAV's libavcodec has no {cls.encoder} encoder"
        return None


def _kbps(maximum: int, minimum: int = 6) -> Param:
    return Param("kbps", int, None, "target bitrate in kbit/s", short="k", minimum=minimum, maximum=maximum,
                 in_tag=True)


def _require_kbps(name: str, values: dict[str, Any]) -> dict[str, Any]:
    if values["kbps"] is None:
        raise ConfigError(f"{name}: give a bitrate, e.g. {name}:kbps=64")
    return values


@register
class MP3(_FFmpegAudio):
    name = "mp3"
    extension = "mp3"
    encoder = "libmp3lame"
    muxer = "mp3"
    backend = "cli"
    muxer_options = (("id3v2_version", "0"), ("write_xing", "1"))
    rates = MP3_RATES
    library = "LAME (libmp3lame) in imageio-ffmpeg's ffmpeg"
    summary = "MP3 (LAME), CBR at kbps or VBR at LAME quality; gapless through the LAME/Xing tag"
    params = (
        _kbps(320, 8),
        Param("vbr", int, None, "LAME VBR quality 0 (best) to 9 instead of a constant bitrate", short="v",
              minimum=0, maximum=9),
        Param("vbr_kbps", float, None, "target kbit/s for VBR: per clip the best LAME vbr quality at or under it",
              short="vk", minimum=0.0),
    )
    rate_knob = RateKnob("vbr", "vbr_kbps", 0, 9, increasing=False, unit="kbps")

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, Any]:
        if sum(values[k] is not None for k in ("kbps", "vbr", "vbr_kbps")) != 1:
            raise ConfigError("mp3: give one of kbps=K (constant bitrate), vbr=Q (LAME VBR quality 0-9) or "
                              "vbr_kbps=K (VBR, the best quality at or under K kbit/s per clip), not both")
        return values

    def options(self) -> list[tuple[str, str]]:
        if self.spec["vbr"] is not None:
            return [("q:a", str(self.spec["vbr"]))]
        return [("b:a", str(1000 * self.spec["kbps"]))]


class _BitrateCodec(_FFmpegAudio):
    """A codec driven by one target bitrate (``kbps``, required), passed to FFmpeg as ``b:a``."""

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, Any]:
        return _require_kbps(cls.name, values)

    def options(self) -> list[tuple[str, str]]:
        return [("b:a", str(1000 * self.spec["kbps"]))]


@register
class Opus(_BitrateCodec):
    name = "opus"
    extension = "opus"
    encoder = "libopus"
    muxer = "ogg"
    backend = "pyav"
    rates = (48000,)
    library = "libopus through PyAV"
    summary = "Opus (libopus) in Ogg at 48 kHz (resampled with soxr), voip or audio application"
    params = (
        _kbps(510),
        Param("application", str, "audio", "libopus tuning", short="app", choices=("audio", "voip", "lowdelay")),
        Param("vbr", str, "on", "rate control: on (VBR), off (hard CBR), constrained", short="vbr",
              choices=("on", "off", "constrained")),
    )

    def options(self) -> list[tuple[str, str]]:
        return [*super().options(), ("application", self.spec["application"]), ("vbr", self.spec["vbr"])]

    @classmethod
    def stream_rate(cls, payload: bytes) -> int | None:
        return opus_input_rate(payload)


@register
class AAC(_BitrateCodec):
    name = "aac"
    extension = "m4a"
    encoder = "aac"
    muxer = "ipod"  # the .m4a flavour of the MP4 muxer
    backend = "pyav"
    rates = AAC_RATES
    library = "FFmpeg's native AAC-LC encoder through PyAV"
    summary = "AAC-LC (FFmpeg's encoder) in MP4/M4A; priming and padding in the edit list"
    params = (_kbps(512, 8),)


@register
class Vorbis(_BitrateCodec):
    name = "vorbis"
    extension = "ogg"
    encoder = "libvorbis"
    muxer = "ogg"
    backend = "cli"
    library = "libvorbis in imageio-ffmpeg's ffmpeg"
    summary = "Vorbis (libvorbis, average bitrate) in Ogg"
    params = (_kbps(500, 8),)

    def decode(self, payload: bytes) -> tuple[np.ndarray, int]:
        """libvorbis (through libsndfile), which ends where the last granule position says.

        FFmpeg's Ogg demuxer sometimes drops the final short block (it decodes a 16000-sample
        stream whose last page says 16000 to 15744 samples), so FFmpeg is not used to decode Vorbis.
        """
        import soundfile as sf

        try:
            samples, rate = sf.read(io.BytesIO(payload), dtype="float32", always_2d=True)
        except Exception as exc:
            raise SampleError(f"libvorbis cannot decode the stream: {exc}") from None
        return np.ascontiguousarray(samples), int(rate)

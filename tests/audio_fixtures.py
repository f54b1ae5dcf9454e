"""Synthesized audio and small audio datasets in their native layouts, seeded and built in seconds.

Speech-like: a glottal pulse train with a gliding pitch through three moving formant
resonators, syllable envelopes and fricative noise bursts (16 kHz mono). Music-like: chords of
decaying harmonic notes, a bass line and noise-burst drums, panned to stereo (44.1 kHz). Both
are rounded to 16-bit integers, so the FLAC/WAV files hold exactly the samples returned here.

Each builder returns what it wrote, independently of the code under test: keys, samples,
transcripts and which samples must fail.
"""
from __future__ import annotations

import io
import math
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPEECH_RATE = 16000
MUSIC_RATE = 44100


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def as_float(ints: np.ndarray) -> np.ndarray:
    """int16 samples as the exact float32 the pipeline uses."""
    return np.ascontiguousarray((ints.astype(np.float32) / np.float32(32768.0)).reshape(ints.shape[0], -1))


def _resonator(x: np.ndarray, freq: np.ndarray, bw: float, rate: int) -> np.ndarray:
    """Two-pole resonator with a time-varying centre frequency (per-sample coefficients)."""
    r = math.exp(-math.pi * bw / rate)
    a1 = -2.0 * r * np.cos(2.0 * np.pi * freq / rate)
    a2 = r * r
    y = np.zeros_like(x)
    y1 = y2 = 0.0
    for i in range(len(x)):  # short clips only: a plain loop is fast enough and dependency-free
        y0 = x[i] - a1[i] * y1 - a2 * y2
        y[i] = y0
        y2, y1 = y1, y0
    return y * (1 - r)


def _one_pole(x: np.ndarray, a: float) -> np.ndarray:
    from scipy.signal import lfilter

    return lfilter([1.0 - a], [1.0, -a], x)


def speech(seconds: float, seed: int, rate: int = SPEECH_RATE) -> np.ndarray:
    """A speech-like mono signal as int16 (n, 1)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + 15 * np.sin(2 * np.pi * 3.1 * t)
    phase = np.cumsum(f0 / rate)
    pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per pitch period
    excitation = pulses + 0.02 * rng.standard_normal(n)
    for _ in range(2):  # glottal roll-off, -12 dB/octave (radiation adds +6 dB/octave below)
        excitation = _one_pole(excitation, 0.97)
    voiced = np.zeros(n)
    for k, (lo, hi, bw) in enumerate(((300, 800, 90), (900, 2200, 120), (2300, 3000, 200))):
        formant = lo + (hi - lo) * (0.5 + 0.5 * np.sin(2 * np.pi * (1.3 + 0.4 * k) * t + rng.uniform(0, 6)))
        voiced += _resonator(excitation, formant, bw, rate) / (k + 1)
    syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6))
    fricative = rng.standard_normal(n) * (np.sin(2 * np.pi * 1.1 * t + rng.uniform(0, 6)) > 0.85)
    fricative = np.convolve(fricative, [1, -0.9], mode="same")  # high-passed hiss
    voiced = np.diff(voiced, prepend=0.0)  # lip radiation
    x = voiced / (np.std(voiced) + 1e-12) * syllables ** 2 + 0.15 * fricative
    x *= 0.5 / (np.max(np.abs(x)) + 1e-12)
    return to_int16(x)[:, None]


def music(seconds: float, seed: int, rate: int = MUSIC_RATE, channels: int = 2) -> np.ndarray:
    """A music-like signal as int16 (n, channels): chords, bass and drums."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    out = np.zeros((n, 2))
    beat = 0.25
    for start in np.arange(0, seconds, 2 * beat):
        i0 = int(start * rate)
        root = 110 * 2 ** (rng.integers(0, 12) / 12)
        length = min(n - i0, int(2 * beat * rate))
        tt = np.arange(length) / rate
        env = np.exp(-3 * tt) * (1 - np.exp(-200 * tt))
        for j, ratio in enumerate((1, 5 / 4, 3 / 2, 2)):
            note = sum(np.sin(2 * np.pi * root * 2 * ratio * h * tt) / h ** 1.5 for h in range(1, 6))
            pan = (j + 0.5) / 4
            out[i0: i0 + length, 0] += 0.12 * env * note * (1 - pan)
            out[i0: i0 + length, 1] += 0.12 * env * note * pan
        bass = np.sin(2 * np.pi * root / 2 * tt) * np.exp(-2 * tt)
        out[i0: i0 + length] += 0.2 * bass[:, None]
    for start in np.arange(0, seconds, beat):  # drums: decaying noise bursts
        i0 = int(start * rate)
        length = min(n - i0, int(0.08 * rate))
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.015 * rate))
        out[i0: i0 + length] += 0.25 * burst[:, None] * [0.9, 1.0]
    out *= 0.7 / np.max(np.abs(out))
    if channels == 1:
        out = out.mean(axis=1, keepdims=True)
    del t
    return to_int16(out)


def write_audio(path: Path, ints: np.ndarray, rate: int, fmt: str = "FLAC") -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), ints, rate, format=fmt, subtype="PCM_16")
    return path


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args: str, input: bytes | None = None) -> bytes:
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args],
                          input=input, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def ffmpeg_decode(path: Path, channels: int) -> tuple[np.ndarray, int]:
    """The standard decoder: the ffmpeg binary reads the stored file (float32 out, its native rate)."""
    rate = probe(path)["sample_rate"]
    raw = ffmpeg("-i", str(path), "-f", "f32le", "-c:a", "pcm_f32le", "-")
    return np.frombuffer(raw, dtype="<f4").reshape(-1, channels), rate


def probe(path: Path) -> dict[str, Any]:
    """Read a stored file with ffprobe (the bundled ffmpeg's probe where no ffprobe is installed)."""
    import json
    import re

    exe = shutil.which("ffprobe")
    if exe:
        proc = subprocess.run([exe, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ffprobe cannot read {path.name}: {proc.stderr}")
        info = json.loads(proc.stdout)
        st = [s for s in info["streams"] if s["codec_type"] == "audio"][0]
        return {"tool": "ffprobe", "codec": st["codec_name"], "sample_rate": int(st["sample_rate"]),
                "channels": int(st["channels"]), "format": info["format"]["format_name"]}
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    m = re.search(r"Stream #0:\d+.*?: Audio: (\w+).*?, (\d+) Hz, (mono|stereo)", proc.stderr)
    fmt = re.search(r"Input #0, ([\w,]+), from", proc.stderr)
    if not m or not fmt:
        raise RuntimeError(f"ffmpeg cannot read {path.name}: {proc.stderr}")
    return {"tool": "ffmpeg", "codec": m.group(1), "sample_rate": int(m.group(2)),
            "channels": 1 if m.group(3) == "mono" else 2, "format": fmt.group(1)}


def peak_lag(reference: np.ndarray, decoded: np.ndarray, max_lag: int = 3000) -> int:
    """Lag (samples) at which the cross-correlation of the first channels peaks; 0 = aligned."""
    a = reference[:, 0].astype(np.float64)
    b = decoded[:, 0].astype(np.float64)
    size = 1 << int(math.ceil(math.log2(len(a) + len(b))))
    cc = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.r_[0:max_lag + 1, -max_lag:0]
    values = np.r_[cc[:max_lag + 1], cc[-max_lag:]]
    return int(lags[int(np.argmax(values))])


# --------------------------------------------------------------------------- bits, measured independently


def _ogg_packets(data: bytes) -> list[bytes]:
    """Packets of a single-stream Ogg file, reassembled from page segment tables."""
    packets, current, pos = [], b"", 0
    while pos < len(data):
        if data[pos: pos + 4] != b"OggS":
            raise AssertionError(f"no Ogg page at {pos}")
        nseg = data[pos + 26]
        lacing = data[pos + 27: pos + 27 + nseg]
        body = pos + 27 + nseg
        for size in lacing:
            current += data[body: body + size]
            body += size
            if size < 255:
                packets.append(current)
                current = b""
        pos = body
    return packets


_MP3_BITRATES = {1: [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320],
                 2: [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160]}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mp3_frames(data: bytes) -> list[bytes]:
    """MPEG layer III frames by their headers (the file must start with a frame: no ID3 tag)."""
    frames, pos = [], 0
    while pos + 4 <= len(data):
        h = struct.unpack(">I", data[pos: pos + 4])[0]
        if h >> 21 != 0x7FF:
            raise AssertionError(f"no frame sync at {pos}")
        version = (h >> 19) & 3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
        kbps = _MP3_BITRATES[1 if version == 3 else 2][(h >> 12) & 15]
        rate = _MP3_RATES[version][(h >> 10) & 3]
        padding = (h >> 9) & 1
        size = (144 if version == 3 else 72) * kbps * 1000 // rate + padding
        frames.append(data[pos: pos + size])
        pos += size
    return frames


def framecrc(path: Path) -> tuple[int, int]:
    """(sum of packet sizes, extradata size) as the bundled ffmpeg's framecrc muxer lists them."""
    text = ffmpeg("-i", str(path), "-c", "copy", "-f", "framecrc", "-").decode()
    extradata = 0
    total = 0
    for line in text.splitlines():
        if line.startswith("#extradata"):
            extradata = int(line.split(":")[1].split(",")[0])
        elif line and not line.startswith("#"):
            total += int(line.split(",")[4])
    return total, extradata


def independent_bits(codec: str, payload: bytes, tmp_path: Path) -> int:
    """Payload bits of a stored file, measured without the pipeline: Ogg pages, MP3 frame headers, framecrc."""
    if codec == "opus":
        packets = _ogg_packets(payload)
        assert packets[0].startswith(b"OpusHead") and packets[1].startswith(b"OpusTags")
        return 8 * (len(packets[0]) + sum(map(len, packets[2:])))
    if codec == "vorbis":
        packets = _ogg_packets(payload)
        assert [p[:7] for p in packets[:3]] == [b"\x01vorbis", b"\x03vorbis", b"\x05vorbis"]
        return 8 * (len(packets[0]) + len(packets[2]) + sum(map(len, packets[3:])))
    if codec == "mp3":
        frames = _mp3_frames(payload)
        assert b"Info" in frames[0][:64] or b"Xing" in frames[0][:64], "the first frame is the LAME/Xing tag"
        return 8 * sum(map(len, frames[1:]))
    path = tmp_path / "payload.m4a"
    path.write_bytes(payload)
    total, extradata = framecrc(path)
    return 8 * (total + extradata)


# --------------------------------------------------------------------------- datasets


@dataclass
class BuiltAudio:
    root: Path
    split: str
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # key -> int16 (n, ch) that must be listed
    rates: dict[str, int] = field(default_factory=dict)
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> expected record values
    failing: set[str] = field(default_factory=set)  # keys listed whose samples must be error rows
    stems: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # musdb: key -> stem -> int16


LIBRI_SPEAKERS = {84: (121123, 121550), 174: (50561,)}


def build_librispeech(root: Path, subset: str = "dev-clean", seconds: float = 1.0) -> BuiltAudio:
    """``root/LibriSpeech/<subset>/<speaker>/<chapter>/`` with FLAC utterances and trans.txt files.

    One utterance has no transcript line (an error row); one transcript line has no file (ignored).
    """
    built = BuiltAudio(root, subset)
    seed = 0
    for speaker, chapters in LIBRI_SPEAKERS.items():
        for chapter in chapters:
            folder = root / "LibriSpeech" / subset / str(speaker) / str(chapter)
            lines = []
            for n in range(2):
                key = f"{speaker}-{chapter}-{n:04d}"
                ints = speech(seconds * (1 + 0.25 * n), seed)
                seed += 1
                write_audio(folder / f"{key}.flac", ints, SPEECH_RATE)
                built.samples[key], built.rates[key] = ints, SPEECH_RATE
                text = f"UTTERANCE {seed} OF SPEAKER {speaker} CHAPTER {chapter}"
                if (speaker, chapter, n) == (174, 50561, 1):
                    built.failing.add(key)  # no transcript line for this one
                else:
                    lines.append(f"{key} {text}")
                    built.fields[key] = {"transcript": text, "speaker_id": speaker, "chapter_id": chapter}
            lines.append(f"{speaker}-{chapter}-9999 A LINE WITHOUT ITS FILE")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return built


MUSDB_TRACKS = ("A Classic Education - NightOwl", "Zeno - Signs")
STEM_NAMES = ("drums", "bass", "other", "vocals")


def _stems(seconds: float, seed: int) -> dict[str, np.ndarray]:
    """Four stems as int16 and their exact sum (clipped) as the mixture."""
    stems = {name: (music(seconds, seed * 10 + i).astype(np.int32) // 2).astype(np.int16)
             for i, name in enumerate(STEM_NAMES)}
    mix = np.clip(sum(s.astype(np.int32) for s in stems.values()), -32768, 32767).astype(np.int16)
    return {"mixture": mix, **stems}


def build_musdb_hq(root: Path, split: str = "test", seconds: float = 1.0) -> BuiltAudio:
    """MUSDB18-HQ: ``root/<split>/<track>/{mixture,drums,bass,other,vocals}.wav``."""
    from pipeline.sources.base import sanitize_key

    built = BuiltAudio(root, split)
    for i, track in enumerate(MUSDB_TRACKS):
        stems = _stems(seconds, i)
        for name, ints in stems.items():
            write_audio(root / split / track / f"{name}.wav", ints, MUSIC_RATE, fmt="WAV")
        key = sanitize_key(track)
        built.samples[key], built.rates[key] = stems["mixture"], MUSIC_RATE
        built.stems[key] = {k: v for k, v in stems.items() if k != "mixture"}
        built.fields[key] = {"track": track}
    (root / split / "README.txt").write_text("not a track\n")
    return built


def build_musdb_stem(root: Path, split: str = "test", seconds: float = 1.0) -> BuiltAudio:
    """MUSDB18: ``root/<split>/<track>.stem.mp4`` made with the bundled ffmpeg (five AAC streams).

    ``samples`` and ``stems`` hold the WAV inputs; the source's references are their AAC decodes.
    """
    from pipeline.sources.base import sanitize_key

    built = BuiltAudio(root, split)
    (root / split).mkdir(parents=True, exist_ok=True)
    for i, track in enumerate(MUSDB_TRACKS[:1]):
        stems = _stems(seconds, 10 + i)
        with tempfile.TemporaryDirectory() as tmp:
            inputs: list[str] = []
            for name in ("mixture", *STEM_NAMES):
                inputs += ["-i", str(write_audio(Path(tmp) / f"{name}.wav", stems[name], MUSIC_RATE, fmt="WAV"))]
            maps = [a for k in range(5) for a in ("-map", str(k))]
            ffmpeg(*inputs, *maps, "-c:a", "aac", "-b:a", "256k", "-f", "mp4", "-y",
                   str(root / split / f"{track}.stem.mp4"))
        key = sanitize_key(track)
        built.samples[key], built.rates[key] = stems["mixture"], MUSIC_RATE
        built.stems[key] = {k: v for k, v in stems.items() if k != "mixture"}
        built.fields[key] = {"track": track}
    return built


def build_audiofolder(root: Path, seconds: float = 1.0) -> BuiltAudio:
    """Two class folders with WAV, FLAC and MP3 files, a stereo 44.1 kHz one, and a non-audio file."""
    built = BuiltAudio(root, "all")
    files = [("cat/meow_1.wav", speech(seconds, 41), SPEECH_RATE, "WAV"),
             ("cat/meow.2.flac", speech(seconds, 42), SPEECH_RATE, "FLAC"),
             ("dog/bark.flac", music(seconds, 43), MUSIC_RATE, "FLAC")]
    for rel, ints, rate, fmt in files:
        write_audio(root / rel, ints, rate, fmt=fmt)
        key = rel.rsplit(".", 1)[0].replace("/", "_").replace(".", "_")
        built.samples[key], built.rates[key] = ints, rate
        built.fields[key] = {"label": 0 if rel.startswith("cat") else 1,
                             "class_name": rel.split("/")[0]}
    mp3 = ffmpeg("-f", "s16le", "-ar", str(SPEECH_RATE), "-ac", "1", "-i", "-", "-c:a", "libmp3lame", "-b:a",
                 "64k", "-f", "mp3", "-", input=speech(seconds, 44).tobytes())
    (root / "dog" / "woof.mp3").write_bytes(mp3)
    built.fields["dog_woof"] = {"label": 1, "class_name": "dog"}
    built.rates["dog_woof"] = SPEECH_RATE
    (root / "dog" / "notes.txt").write_text("not audio\n")
    return built


def flac_ints(data: bytes) -> tuple[np.ndarray, int]:
    """Decode FLAC bytes with libsndfile to int16 (n, ch) (independent of the pipeline's reader)."""
    import soundfile as sf

    ints, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    return ints, rate


# --------------------------------------------------------------------------- EnCodec with random weights


def seed_encodec_codebooks(net: Any, wav: Any) -> None:
    """Give an untrained EnCodec model codewords, so its codes vary and comparisons of codes can fail.

    encodec's factories leave every codebook at zero (their k-means initialisation runs on the
    first training batch), so an untrained model codes everything as 0. Here each level's codebook
    is drawn from the embeddings of ``wav`` (``[1, channels, samples]`` at the model's rate; at
    each level the residuals left by the previous ones) plus noise, as k-means starts. Call it
    after ``torch.manual_seed`` for reproducible weights.
    """
    import torch

    with torch.no_grad():
        residual = net.encoder(wav)[0].T  # [frames, dimension]
        for layer in net.quantizer.vq.layers:
            book = layer._codebook
            picks = residual[torch.randint(len(residual), (book.codebook_size,))]
            book.embed.copy_(picks + residual.std(0) * torch.randn_like(picks))
            residual = residual - book.embed[book.quantize(residual)]


def random_encodec_24khz(folder: Path, monkeypatch: Any) -> str:
    """A random-weight EnCodec 24 kHz checkpoint (seeded, half precision as the zoo ships it) written
    into ``folder`` under the hash-named file the codec expects, and the codec pointed at it."""
    import hashlib
    import warnings

    import torch
    from encodec.model import EncodecModel

    import pipeline.codecs.encodec as enc_mod

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = EncodecModel.encodec_model_24khz(pretrained=False)
    tmp = folder / "w.partial"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, tmp)
    name = f"encodec_24khz-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.th"
    tmp.rename(folder / name)
    monkeypatch.setenv("MPQ_WEIGHTS_DIR", str(folder))
    monkeypatch.setitem(enc_mod.CHECKPOINTS, "24khz", name)
    return name

"""Audio codecs: exact length, zero-lag alignment, measured bits, readable stored files, EnCodec plumbing.

Signals are synthesized (tests/audio_fixtures.py): speech-like 16 kHz mono and music-like
44.1 kHz stereo, 5 s each so constant-bitrate checks average over enough frames. Bits are
recomputed independently of the pipeline: by parsing the Ogg pages or MP3 frame headers of the
stored file, or from the bundled ffmpeg's ``framecrc`` packet list (AAC).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import audio_fixtures as af
from pipeline import parse_spec
from pipeline.media.audio import Audio, resample, remix
from pipeline.metrics.audio import snr
from pipeline.codecs import codec_names, get_codec, make_codec
from pipeline.codecs.base import AudioCodec
from pipeline.errors import ConfigError
from pipeline.modalities import audio as audio_mod

#: settings every registered audio codec is tested with (a new codec must add its own here)
SETTINGS = {
    "mp3": ["mp3:kbps=64", "mp3:vbr=4"],
    "opus": ["opus:kbps=48,vbr=off", "opus:kbps=24,application=voip"],
    "aac": ["aac:kbps=64"],
    "vorbis": ["vorbis:kbps=64"],
    "encodec": [],  # random weights: tested separately below
}
#: constant (or average) bitrate settings whose measured kbps must be within 10% of the request
CBR = ["mp3:kbps=64", "mp3:kbps=128", "opus:kbps=48,vbr=off", "opus:kbps=96,vbr=off", "aac:kbps=64"]
FFMPEG_SETTINGS = [s for name in ("mp3", "opus", "aac", "vorbis") for s in SETTINGS[name]]
#: what ffprobe calls each codec's stream
PROBE_NAMES = {"mp3": "mp3", "opus": "opus", "aac": "aac", "vorbis": "vorbis"}


@pytest.fixture(scope="module")
def signals() -> dict[str, Audio]:
    return {"speech": Audio(af.as_float(af.speech(5.0, 1)), af.SPEECH_RATE, 16),
            "music": Audio(af.as_float(af.music(5.0, 2)), af.MUSIC_RATE, 16)}


@pytest.fixture(scope="module")
def coded(signals):
    """(setting, signal) -> (codec, Encoded, decoded at the source rate, facts), encoded once per module."""
    cache: dict = {}

    def get(spec: str, signal: str):
        if (spec, signal) not in cache:
            codec = make_codec(parse_spec(spec))
            cache[spec, signal] = (codec, *audio_mod._code(codec, signals[signal]))
        return cache[spec, signal]

    return get


def test_every_audio_codec_has_test_settings():
    assert set(codec_names("audio")) - {"none"} == set(SETTINGS)
    for name in codec_names("audio"):
        assert get_codec(name).modality in ("audio", "any")


#: libopus's voip application high-passes its input (``hp_cutoff`` in opus_encoder.c, a biquad whose
#: cutoff follows the pitch, 60-100 Hz). That causal filter leads the phase of the lowest
#: frequencies, so on low-heavy signals the broadband cross-correlation peaks a few samples early
#: (3 at 16 kHz on our speech) although the stream is aligned. Above this frequency it is not.
VOIP_HIGHPASS_HZ = 500.0


def aligned_parts(spec: str, reference: np.ndarray, decoded: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """What must line up at lag 0: the whole band, or for Opus voip the band above its high-pass."""
    if "voip" not in spec:
        return reference, decoded
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, VOIP_HIGHPASS_HZ, "highpass", fs=rate, output="sos")  # zero phase: moves nothing
    return sosfiltfilt(sos, reference, axis=0), sosfiltfilt(sos, decoded, axis=0)


def test_voip_low_frequency_phase_is_not_a_delay(signals, coded):
    """The voip lag lives in the lowest band only: the same stream, high-passed, is at lag 0 (see above)."""
    audio = signals["speech"]
    _, _, decoded, _ = coded("opus:kbps=24,application=voip", "speech")
    assert af.peak_lag(audio.samples, decoded) < 0  # broadband: the high-pass' phase lead
    assert af.peak_lag(*aligned_parts("voip", audio.samples, decoded, audio.rate)) == 0
    _, _, celt, _ = coded("opus:kbps=48,vbr=off", "speech")  # the audio application has no such filter
    assert af.peak_lag(audio.samples, celt) == 0


@pytest.mark.parametrize("signal", ["speech", "music"])
@pytest.mark.parametrize("spec", FFMPEG_SETTINGS)
def test_round_trip_exact_length_zero_lag(spec, signal, signals, coded):
    audio = signals[signal]
    codec, enc, decoded, facts = coded(spec, signal)
    assert decoded.shape == audio.samples.shape and decoded.dtype == np.float32
    assert facts["end_padding"] == 0, "the stream itself must end at the encoded length"
    x, y = aligned_parts(spec, audio.samples, decoded, audio.rate)
    assert af.peak_lag(x, y) == 0
    # the decode at lag 0 matches the source better than one sample early or late
    assert snr(x, y) > snr(x[1:], y[:-1])
    assert snr(x, y) > snr(x[:-1], y[1:])
    assert facts["snr"] == pytest.approx(snr(audio.samples, decoded))
    assert facts["codec_rate"] == codec.codec_format(audio.rate, audio.channels)[0]
    if spec.startswith("opus"):
        assert facts["codec_rate"] == 48000
    assert facts["kbps"] == pytest.approx(facts["bits"] / audio.duration / 1000)
    assert facts["bits_per_sample"] == pytest.approx(facts["bits"] / (audio.num_samples * audio.channels))
    assert facts["container_bytes"] == len(enc.payload)
    # voip drops the band under its high-pass and SILK keeps music's spectrum more than its waveform
    assert snr(x, y) > (1.0 if "voip" in spec else 5.0)


@pytest.mark.parametrize("signal", ["speech", "music"])
@pytest.mark.parametrize("spec", FFMPEG_SETTINGS)
def test_standard_decoder_reads_stored_file_at_lag_zero(spec, signal, signals, coded, tmp_path):
    """ffmpeg reading the stored file (not our decoder) starts at the first sample and ends at the last."""
    audio = signals[signal]
    codec, enc, decoded, facts = coded(spec, signal)
    path = tmp_path / f"payload.{enc.extension}"
    path.write_bytes(enc.payload)
    info = af.probe(path)
    assert info["codec"] == PROBE_NAMES[codec.name]
    assert info["sample_rate"] == facts["codec_rate"] and info["channels"] == facts["codec_channels"]
    pcm, rate = af.ffmpeg_decode(path, facts["codec_channels"])
    x = remix(audio.samples, facts["codec_channels"])
    if rate != audio.rate:
        x = resample(x, audio.rate, rate)
    if codec.name == "vorbis":
        # FFmpeg's Ogg demuxer may cut the last Vorbis block (<= 1024 samples here); libvorbis does not
        assert 0 <= len(x) - len(pcm) <= 1024
        import soundfile as sf

        ref, _ = sf.read(io.BytesIO(enc.payload), dtype="float32", always_2d=True)
        assert len(ref) == len(x)
    else:
        assert len(pcm) == len(x)
    n = min(len(pcm), len(x))
    assert af.peak_lag(*aligned_parts(spec, x[:n], pcm[:n], rate)) == 0
    ours, _ = codec.decode(enc.payload)  # the pipeline's decoder agrees with ffmpeg sample by sample
    assert np.max(np.abs(ours[:n] - pcm[:n])) < 1e-3


# ----------------------------------------------------------------------------------- bits, recomputed


@pytest.mark.parametrize("signal", ["speech", "music"])
@pytest.mark.parametrize("spec", FFMPEG_SETTINGS)
def test_bits_recomputed_from_the_file(spec, signal, coded, tmp_path):
    codec, enc, _, facts = coded(spec, signal)
    assert facts["bits"] == enc.bits == af.independent_bits(codec.name, enc.payload, tmp_path)
    assert facts["bits"] < 8 * len(enc.payload)  # container overhead is not payload
    if codec.name == "aac":  # cross-check: framecrc agrees for every codec, not only AAC
        return
    path = tmp_path / f"x.{enc.extension}"
    path.write_bytes(enc.payload)
    total, extradata = af.framecrc(path)
    assert facts["bits"] - 8 * facts["setup_bytes"] == 8 * total


@pytest.mark.parametrize("spec", CBR)
def test_constant_bitrate_within_ten_percent(spec, coded):
    requested = parse_spec(spec)["kbps"]
    for signal in ("speech", "music"):
        if spec.startswith("mp3:kbps=128") and signal == "speech":
            continue  # MPEG-2 (16 kHz) layer III tops out at 160 kbit/s; 64 covers it
        _, _, _, facts = coded(spec, signal)
        assert abs(facts["kbps"] / requested - 1) < 0.10, (spec, signal, facts["kbps"])


@pytest.mark.parametrize("spec", ["mp3:kbps=64", "opus:kbps=48,vbr=off", "aac:kbps=64", "vorbis:kbps=64"])
def test_same_input_same_bytes(spec, signals):
    x = signals["music"]
    codec = make_codec(parse_spec(spec))
    rate, _ = codec.codec_format(x.rate, x.channels)
    samples = resample(x.samples[: x.rate], x.rate, rate)
    assert codec.encode(samples, rate).payload == codec.encode(samples, rate).payload


def test_codec_formats():
    assert make_codec(parse_spec("opus:kbps=32")).codec_format(16000, 1) == (48000, 1)
    assert make_codec(parse_spec("mp3:kbps=64")).codec_format(96000, 2) == (48000, 2)
    assert make_codec(parse_spec("mp3:kbps=64")).codec_format(44100, 2) == (44100, 2)
    assert make_codec(parse_spec("aac:kbps=64")).codec_format(22000, 2) == (22050, 2)
    assert make_codec(parse_spec("vorbis:kbps=64")).codec_format(37000, 1) == (37000, 1)


@pytest.mark.parametrize("text", ["mp3", "mp3:kbps=64,vbr=2", "opus", "aac", "vorbis", "opus:kbps=32,vbr=maybe",
                                  "opus:kbps=1000", "mp3:vbr=10"])
def test_bad_settings_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_spec(text)


def test_tags_are_distinct_and_readable():
    tags = {parse_spec(s).tag for s in FFMPEG_SETTINGS}
    assert len(tags) == len(FFMPEG_SETTINGS)
    assert parse_spec("mp3:kbps=64").tag == "mp3-k64"
    assert parse_spec("opus:kbps=24,application=voip").tag == "opus-k24-appvoip"


def test_stereo_through_a_mono_codec_is_measured_against_stereo(signals, monkeypatch):
    """A codec that takes mono gets the channel average and returns it on both channels."""
    monkeypatch.setattr(get_codec("aac"), "channel_counts", (1,))
    codec = make_codec(parse_spec("aac:kbps=64"))
    audio = signals["music"]
    enc, decoded, facts = audio_mod._code(codec, audio)
    assert facts["codec_channels"] == 1 and decoded.shape == audio.samples.shape
    assert np.array_equal(decoded[:, 0], decoded[:, 1])
    assert af.peak_lag(audio.samples, decoded) == 0


def test_failed_encode_is_a_sample_error(signals):
    from pipeline.errors import SampleError

    codec = make_codec(parse_spec("vorbis:kbps=500"))  # beyond libvorbis' range at 16 kHz mono
    with pytest.raises(SampleError, match="libvorbis"):
        audio_mod._code(codec, signals["speech"])


def test_encoders_are_available():
    for name in FFMPEG_SETTINGS:
        cls = get_codec(parse_spec(name).name)
        assert issubclass(cls, AudioCodec) and cls.unavailable() is None
        assert cls.versions()


# ----------------------------------------------------------------------------------- EnCodec
# EnCodec's real weights cannot be downloaded here. These tests write checkpoints of EnCodec's own
# architectures with RANDOM weights (seeded; stored as float16 to halve the files) into a temporary
# weights folder, named "<model>-<first 8 hex of their SHA-256>.th" as EnCodec names its files. Random
# weights test the plumbing (loading, hash checks, the .ecdc stream, lengths, bits, the reference
# decoder reading our files), not the audio quality.


def _write_checkpoint(module, folder: Path, stem: str) -> str:
    import hashlib

    import torch

    state = {k: v.half() if v.is_floating_point() else v for k, v in module.state_dict().items()}
    tmp = folder / f"{stem}.partial"
    torch.save(state, tmp)
    name = f"{stem}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.th"
    tmp.rename(folder / name)
    return name


def signal(rate: int, channels: int) -> np.ndarray:
    """1 s of speech-like audio at ``rate`` as float32 ``(channels, samples)``."""
    x = af.as_float(af.speech(1.0, 5, rate=rate))[:, 0]
    return np.ascontiguousarray(np.stack([x] * channels))


@pytest.fixture(scope="module")
def encodec_files(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, str]]]:
    """Random-weight EnCodec checkpoints (models and language models), written once per module.

    Untrained, EnCodec's codebooks are all zero and every code would be 0: they get codewords drawn
    from the model's own embeddings (:func:`audio_fixtures.seed_encodec_codebooks`).
    """
    pytest.importorskip("encodec")
    import warnings

    import torch
    from encodec.model import EncodecModel, LMModel

    folder = tmp_path_factory.mktemp("encodec-weights")
    names: dict[str, tuple[str, str]] = {}
    for key, factory in (("24khz", EncodecModel.encodec_model_24khz), ("48khz", EncodecModel.encodec_model_48khz)):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = factory(pretrained=False)
        net.eval()
        af.seed_encodec_codebooks(net, torch.from_numpy(signal(net.sample_rate, net.channels))[None])
        lm = LMModel(net.quantizer.n_q, net.quantizer.bins, num_layers=5, dim=200,
                     past_context=int(3.5 * net.frame_rate))
        names[key] = (_write_checkpoint(net, folder, f"encodec_{key}"),
                      _write_checkpoint(lm, folder, f"encodec_lm_{key}"))
    return folder, names


@pytest.fixture
def encodec_weights(encodec_files, monkeypatch) -> Path:
    """$MPQ_WEIGHTS_DIR at the random checkpoints, and the codec's tables naming them (this test only)."""
    import pipeline.codecs.encodec as enc_mod

    folder, names = encodec_files
    monkeypatch.setenv("MPQ_WEIGHTS_DIR", str(folder))
    for key, (model, lm) in names.items():
        monkeypatch.setitem(enc_mod.CHECKPOINTS, key, model)
        monkeypatch.setitem(enc_mod.LM_CHECKPOINTS, key, lm)
    return folder


def _ecdc_code_bytes(header: dict, model: str) -> int:
    """Bytes of bit-packed codes EnCodec writes: 10 bits per code, per segment, byte-aligned per segment."""
    import math

    rate = {"24khz": 24000, "48khz": 48000}[model]
    length = header["al"]
    seg = length if model == "24khz" else rate
    stride = length if model == "24khz" else int(0.99 * rate)
    total = 0
    for offset in range(0, length, stride):
        frames = math.ceil(min(length - offset, seg) / rate * 75 if model == "24khz" else
                           min(length - offset, seg) / rate * 150)
        total += math.ceil(header["nc"] * frames * 10 / 8) + (4 if model == "48khz" else 0)
    return total


@pytest.mark.parametrize("spec,signal,seconds", [("encodec:kbps=6", "speech", 1.0),
                                                  ("encodec:model=48khz,kbps=12", "music", 1.5)])
def test_encodec_stream_plumbing(spec, signal, seconds, encodec_weights, signals):
    from encodec import binary

    audio = signals[signal]
    clip = Audio(np.ascontiguousarray(audio.samples[: int(seconds * audio.rate)]), audio.rate, 16)
    codec = make_codec(parse_spec(spec))
    enc, decoded, facts = audio_mod._code(codec, clip)
    assert decoded.shape == clip.samples.shape and np.isfinite(decoded).all()
    assert facts["end_padding"] == 0 and facts["codec_rate"] == (24000 if "24" in codec.spec["model"] else 48000)
    assert facts["bits"] == 8 * len(enc.payload) == 8 * facts["container_bytes"], "the whole .ecdc file counts"
    fo = io.BytesIO(enc.payload)
    header = binary.read_ecdc_header(fo)
    model = codec.spec["model"]
    kbps = codec.spec["kbps"]
    assert header == {"m": f"encodec_{model}", "al": facts["codec_samples"], "lm": False,
                      "nc": int(kbps * 1000 // ((75 if model == "24khz" else 150) * 10))}
    assert facts["setup_bytes"] == fo.tell()
    assert len(enc.payload) - fo.tell() == _ecdc_code_bytes(header, model)
    assert enc.extension == "ecdc" and facts["device"] == "cpu"
    codes = enc.payload[fo.tell():]
    assert len(set(codes)) > 16, "the seeded codebooks give varied codes, not all zeros"


def test_encodec_reference_decoder_reads_our_stream(encodec_weights, signals, tmp_path, monkeypatch):
    """encodec's own decompress, loading the same weights from torch hub's cache, gives our decode exactly."""
    import shutil
    import warnings

    from encodec.compress import decompress

    import pipeline.codecs.encodec as enc_mod

    audio = signals["speech"]
    x = resample(audio.samples[:16000], 16000, 24000)
    codec = make_codec(parse_spec("encodec:kbps=3"))
    enc = codec.encode(x, 24000)
    ours, rate = codec.decode(enc.payload)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(encodec_weights / enc_mod.CHECKPOINTS["24khz"], hub / "encodec_24khz-d7cc33bc.th")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's weight_norm deprecation, inside encodec
        ref, ref_rate = decompress(enc.payload)  # EncodecModel.encodec_model_24khz() from the hub cache
    assert rate == ref_rate == 24000 and ours.shape == (len(x), 1)
    assert np.array_equal(ours, ref.numpy().T)


def test_encodec_language_model_is_lossless_entropy_coding(encodec_weights, signals):
    from encodec import binary

    audio = signals["speech"]
    x = resample(audio.samples[:8000], 16000, 24000)
    plain = make_codec(parse_spec("encodec:kbps=6"))
    coded = make_codec(parse_spec("encodec:kbps=6,lm=true"))
    a, b = plain.encode(x, 24000), coded.encode(x, 24000)
    assert binary.read_ecdc_header(io.BytesIO(b.payload))["lm"] is True
    assert a.payload != b.payload
    # the same codes, entropy-coded two ways: identical decodes
    assert np.array_equal(plain.decode(a.payload)[0], coded.decode(b.payload)[0])


def test_encodec_settings():
    assert parse_spec("encodec:kbps=1.5").tag == "encodec-m24khz-k1p5"
    assert parse_spec("encodec:model=48khz,kbps=24,lm=true").tag == "encodec-m48khz-k24-lmtrue"
    with pytest.raises(ConfigError, match="48khz model codes at"):
        parse_spec("encodec:model=48khz,kbps=1.5")
    with pytest.raises(ConfigError):
        parse_spec("encodec:kbps=5")
    codec = make_codec(parse_spec("encodec:model=48khz,kbps=6"))
    assert codec.codec_format(16000, 1) == (48000, 2)
    assert make_codec(parse_spec("encodec:kbps=6")).codec_format(44100, 2) == (24000, 1)


PUBLISHED = {"24khz": "encodec_24khz-d7cc33bc.th", "48khz": "encodec_48khz-7e698e3e.th"}
PUBLISHED_LM = {"24khz": "encodec_lm_24khz-1608e3c0.th", "48khz": "encodec_lm_48khz-7add9fc3.th"}


def test_checkpoint_names_are_encodecs_own():
    """Our table holds the file names encodec's loaders use (read from its source, so a new release is noticed)."""
    import inspect

    import encodec.model as em

    import pipeline.codecs.encodec as enc_mod

    source = inspect.getsource(em)
    for name in [*PUBLISHED.values(), *PUBLISHED_LM.values()]:
        assert f"'{name}'" in source
    assert em.ROOT_URL == enc_mod.ROOT_URL
    assert enc_mod.CHECKPOINTS == PUBLISHED and enc_mod.LM_CHECKPOINTS == PUBLISHED_LM


def test_encodec_without_weights_names_the_file(tmp_path, monkeypatch):
    import urllib.error

    from pipeline import TranscodeConfig, transcode
    from pipeline.errors import MissingWeightsError

    monkeypatch.setenv("MPQ_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("MPQ_OFFLINE", "1")
    spec = parse_spec("encodec:model=48khz,kbps=6,lm=true")
    with pytest.raises(MissingWeightsError, match="encodec_48khz-7e698e3e.th") as info:
        get_codec("encodec").preflight(spec)
    assert str(tmp_path / "empty") in str(info.value)
    # downloads allowed but no network: the same clear error, naming the file, its URL and where to put it
    monkeypatch.delenv("MPQ_OFFLINE")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("pipeline.codecs.weights.urllib.request.urlopen", no_network)
    with pytest.raises(MissingWeightsError, match=r"encodec_24khz-d7cc33bc\.th.*could not be downloaded"):
        get_codec("encodec").preflight(parse_spec("encodec:kbps=6"))
    root = tmp_path / "audio"
    af.write_audio(root / "a.flac", af.speech(0.2, 3), af.SPEECH_RATE)
    with pytest.raises(MissingWeightsError, match="dl.fbaipublicfiles.com/encodec/v0/encodec_24khz-d7cc33bc.th"):
        transcode(TranscodeConfig.create("audiofolder", root, ["encodec:kbps=6"], out=tmp_path / "out"))


def test_encodec_refuses_a_checkpoint_with_the_wrong_hash(encodec_weights, tmp_path, monkeypatch):
    import shutil

    import pipeline.codecs.encodec as enc_mod
    from pipeline.codecs.weights import WeightsHashError

    shutil.copy(encodec_weights / enc_mod.CHECKPOINTS["24khz"], tmp_path / "encodec_24khz-d7cc33bc.th")
    monkeypatch.setenv("MPQ_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setitem(enc_mod.CHECKPOINTS, "24khz", "encodec_24khz-d7cc33bc.th")
    with pytest.raises(WeightsHashError, match="refused"):
        get_codec("encodec").preflight(parse_spec("encodec:kbps=6"))

"""Our shards read with the ``webdataset`` library, decoded by the same safe decoders as our loaders.

Two entry points, because a webdataset member handler sees one member, never the sample's record:

- :func:`wds_decoder` for ``WebDataset(urls).decode(wds_decoder())``: every member by its
  extension. Images (``jpg``, ``png``, ``webp``, ``jp2``, ``avif``, ``jxl``, ``heic``) come out
  as the uint8 (H, W, 3) pixels our loader gives; audio as float32 ``(channels, samples)`` of
  the whole decoded stream at the stream's rate (Opus: 48 kHz, or the input rate its OpusHead
  names); ``.cls`` as int, ``.json`` as dict, ``.txt`` as str. A learned ``.bin`` stays bytes
  (the stored ``.png`` beside it holds the pixels) unless ``decode_payload=True``.
- :func:`wds_sample_decoder` for ``WebDataset(urls).map(wds_sample_decoder())`` on undecoded
  samples: it reads the ``.json`` record first and decodes the payload exactly as our loaders do,
  audio cut to the recorded length (MP3 padding, AAC priming, resampling undone) at the source's
  rate and channels.

Neither ever unpickles. webdataset's own default handlers unpickle ``.pyd``/``.pickle`` and
``torch.load`` ``.pth``; our member handler claims every member, so those never run: members it
does not know (pickle-like ones included) stay bytes.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import SampleError
from .decoders import DECODERS, UNSAFE, Decoder, png_rgb, strict_json

BITSTREAM_EXTENSION = "bin"  # learned image codecs (pipeline.codecs.bitstream): self-describing
OPUS_RATE = 48000


def _ext(key: str) -> str:
    """webdataset hands ``.jpg`` or ``.seg.png``; our table keys are ``jpg`` and ``seg.png``."""
    return key.removeprefix(".")


def _audio_families() -> dict[str, str]:
    """Payload extension -> audio codec name, from the registry (the lossless reference is FLAC)."""
    from ..codecs import codec_names, get_codec

    out: dict[str, str] = {}
    for name in codec_names("audio"):
        cls = get_codec(name)
        if cls.modality == "audio":
            out[cls.extension] = name
    return out


def opus_input_rate(data: bytes) -> int | None:
    """The input sample rate an Ogg Opus stream's OpusHead records (0 or absent: None)."""
    at = data.find(b"OpusHead")
    if at < 0 or at + 16 > len(data):
        return None
    rate = int.from_bytes(data[at + 12:at + 16], "little")
    return rate or None


def _channels_first(samples: np.ndarray) -> np.ndarray:
    """(n, channels) float32 -> (channels, n), torchaudio's layout and our loaders'."""
    return np.ascontiguousarray(np.asarray(samples, dtype=np.float32).T)


class WdsDecoder:
    """A webdataset member handler: ``handler(".ext", data)`` -> decoded value, or the bytes unchanged.

    Picklable (DataLoader workers get a copy); codecs are built once per process on first use.
    """

    def __init__(self, *, decode_payload: bool = False, extra: Mapping[str, Decoder] | None = None):
        self.decode_payload = decode_payload
        self.table: dict[str, Decoder] = dict(DECODERS)
        for ext, fn in (extra or {}).items():
            if ext in UNSAFE:
                raise ValueError(f"refusing a decoder for .{ext}: loading such members runs code")
            self.table[ext] = fn
        self._codecs: dict[str, Any] = {}
        self._audio: dict[str, str] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_codecs"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, key: str, data: bytes) -> Any:
        ext = _ext(key)
        last = ext.rsplit(".", 1)[-1]
        if ext in UNSAFE or last in UNSAFE:
            return data  # never decoded, and claimed so webdataset's pickle handlers never see it
        try:
            return self._decode(ext, last, data)
        except SampleError as exc:
            raise SampleError(f".{ext}: {exc}") from None

    def _decode(self, ext: str, last: str, data: bytes) -> Any:
        fn = self.table.get(ext) or self.table.get(last)
        if fn is not None:
            return fn(data)
        if last == "flac":
            from ..media.audio import decode_audio

            return _channels_first(decode_audio(data).samples)
        if last == BITSTREAM_EXTENSION:
            if not self.decode_payload:
                return data
            from ..codecs.bitstream import decode_bytes

            return decode_bytes(data)
        if self._audio is None:
            self._audio = _audio_families()
        name = self._audio.get(last)
        if name is None:
            return data  # unknown members stay bytes: nothing else gets to interpret them
        return self._decode_audio(name, data)

    def _decode_audio(self, name: str, data: bytes) -> np.ndarray:
        samples, rate = self._stream_codec(name, data).decode(data)
        if name == "opus":
            wanted = opus_input_rate(data)
            if wanted is not None and wanted != rate:
                from ..media.audio import resample

                samples = resample(samples, rate, wanted, length=round(samples.shape[0] * wanted / rate))
        return _channels_first(samples)

    def _stream_codec(self, name: str, data: bytes) -> Any:
        """A codec instance that decodes this family's stream; its rate settings do not matter to decoding.

        EnCodec's model comes from the ``.ecdc`` header; a test decodes every registered audio family.
        """
        from ..codecs import get_codec
        from ..codecs.spec import CodecSpec, build_spec

        if name == "encodec":
            meta = _ecdc_header(data)
            spec = build_spec(name, {"model": str(meta["m"]).removeprefix("encodec_"), "lm": bool(meta.get("lm"))})
        else:
            spec = CodecSpec(name)  # stream-only: libavcodec/libsndfile read everything from the stream
        with self._lock:
            if spec.canonical not in self._codecs:
                self._codecs[spec.canonical] = get_codec(name)(spec)
            return self._codecs[spec.canonical]


def _ecdc_header(data: bytes) -> dict[str, Any]:
    """The JSON metadata of an EnCodec ``.ecdc`` stream (magic ``ECDC``, version 0)."""
    import struct

    if len(data) < 9 or data[:4] != b"ECDC" or data[4] != 0:
        raise SampleError("not an EnCodec .ecdc stream (version 0)")
    (size,) = struct.unpack(">I", data[5:9])
    meta = strict_json(data[9:9 + size])
    if not isinstance(meta, dict) or "m" not in meta:
        raise SampleError("the .ecdc header names no model")
    return meta


def wds_decoder(*, decode_payload: bool = False, extra: Mapping[str, Decoder] | None = None) -> WdsDecoder:
    """The handler for ``webdataset.WebDataset(urls).decode(pipeline.loaders.wds_decoder())``.

    ``decode_payload`` decodes learned ``.bin`` streams with their codec (weights needed) instead
    of leaving them as bytes beside the stored ``.png``. ``extra`` adds ``{extension: fn(bytes)}``
    (never for pickle-like extensions). Audio members are whole decoded streams; for the exact
    samples our loaders give, use :func:`wds_sample_decoder` instead.
    """
    return WdsDecoder(decode_payload=decode_payload, extra=extra)


class WdsSampleDecoder:
    """``.map()`` function: an undecoded webdataset sample to what our loaders give, member by member.

    The payload (found from the record's ``codec``) is decoded as :func:`pipeline.loaders.load`
    decodes it: images as uint8 (H, W, 3) (a learned codec's stored ``.png`` unless
    ``decode_payload``), audio as float32 ``(channels, samples)`` at the source's rate and length;
    stems likewise. Every other member goes through :class:`WdsDecoder`.
    """

    def __init__(self, *, decode_payload: bool = False, extra: Mapping[str, Decoder] | None = None):
        self.members = WdsDecoder(decode_payload=decode_payload, extra=extra)
        self.decode_payload = decode_payload
        self._plans: dict[str, tuple[str, Any, bool]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_plans": {}}

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        record = sample.get("json")
        if isinstance(record, (bytes, bytearray)):
            record = strict_json(bytes(record))
        if not isinstance(record, dict) or not isinstance(record.get("codec"), str):
            raise SampleError(f"{sample.get('__key__')}: no .json record naming its codec")
        ext, payload, audio = self._plan(record["codec"], "flac" in sample)
        out: dict[str, Any] = {}
        for k, v in sample.items():
            if k.startswith("__") or not isinstance(v, (bytes, bytearray)):
                out[k] = v
            elif k == "json":
                out[k] = record
            elif audio and k.rsplit(".", 1)[-1] in (ext, "flac") and k != "decoded.flac":
                out[k] = self._audio(k, bytes(v), ext, payload, record)
            elif k == ext and not audio:
                out[k] = payload(bytes(v))
            else:
                out[k] = self.members(k, bytes(v))
        return out

    def _audio(self, member: str, data: bytes, ext: str, payload: Any, record: dict[str, Any]) -> np.ndarray:
        from . import audio

        try:
            if member.rsplit(".", 1)[-1] == ext:
                return _channels_first(payload(data, record))
            return _channels_first(audio.reference(audio.flac_audio(data), record))
        except SampleError as exc:
            raise SampleError(f".{member}: {exc}") from None

    def _plan(self, canonical: str, has_flac: bool) -> tuple[str, Any, bool]:
        """(payload extension, decoder, is audio) of one setting, built once per process.

        The lossless reference ``none`` serves both modalities: its audio samples hold ``.flac``.
        """
        key = f"{canonical}|{has_flac}"
        if key not in self._plans:
            from ..codecs import get_codec
            from ..codecs.spec import parse_spec
            from .decoders import decoder_table

            spec = parse_spec(canonical)
            cls = get_codec(spec.name)
            fn: Callable[..., Any]  # audio decoders also take the record, image decoders the bytes only
            if cls.modality == "audio" or (cls.modality == "any" and has_flac):
                from . import audio

                ext, fn = audio.payload_decoder(spec)
                self._plans[key] = (ext, fn, True)
            else:
                stored_png = getattr(cls, "reconstruction", False) and not self.decode_payload
                table = decoder_table(spec, self.members.table)
                fn = png_rgb if stored_png else table[cls.extension]
                self._plans[key] = ("png" if stored_png else cls.extension, fn, False)
        return self._plans[key]


def wds_sample_decoder(*, decode_payload: bool = False,
                       extra: Mapping[str, Decoder] | None = None) -> WdsSampleDecoder:
    """The function for ``webdataset.WebDataset(urls).map(pipeline.loaders.wds_sample_decoder())``.

    Apply it to undecoded samples (no ``.decode()`` before it): it needs the payload's bytes and
    the record to cut audio exactly as our loaders do. Same options as :func:`wds_decoder`.
    """
    return WdsSampleDecoder(decode_payload=decode_payload, extra=extra)

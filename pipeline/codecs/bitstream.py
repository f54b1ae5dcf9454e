"""The ``.bin`` format of learned codecs: entropy-coded strings plus the least header that decodes them.

A learned codec's payload is no image format, so it gets a small self-describing container.
Every byte of it counts in ``bits``: it is exactly what a decoder needs, nothing more.

Layout (version 1; integers are unsigned LEB128 varints, as in protobuf)::

    magic     4 bytes   b"MPQB"
    version   1 byte    1
    spec      varint n, then n bytes of ASCII: the canonical codec spec
                        (``mbt2018:quality=3,metric=mse``), which names the model
    height    varint    image height in pixels, before padding to the model's stride
    width     varint    image width in pixels
    groups    varint g  number of string groups (CompressAI: one per entropy model, e.g. y and z)
    per group: varint k strings, then per string: varint length and the bytes

The latent shapes are not stored: they follow from the image size and the model's stride, and
the encoder checks that they do. The device and library versions that produced a stream are
recorded in the sample's ``.json`` instead (they are not needed to decode, so they do not count
in ``bits``); :func:`decode_file` compares them with the decoding side and warns on a difference.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"MPQB"
VERSION = 1
EXTENSION = "bin"


class BitstreamError(ValueError):
    """Bytes that are not a valid ``.bin`` stream (wrong magic, unknown version, truncated, trailing data)."""


class CrossDeviceWarning(UserWarning):
    """A stream is decoded on another device or with other library versions than it was encoded with.

    Learned codecs compute the entropy model's parameters in floating point; a different device or
    library can change them by one rounding step, and the decoded image is then wrong (CompressAI
    streams encoded on a GPU are known to fail on a CPU).
    """


@dataclass(frozen=True)
class Bitstream:
    """A parsed ``.bin``: which codec setting, the image size, and the entropy-coded strings."""

    spec: str
    height: int
    width: int
    groups: tuple[tuple[bytes, ...], ...]


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"cannot write a negative varint ({n})")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise BitstreamError(f"truncated stream: {what} needs {n} bytes at offset {self.pos}, "
                                 f"{len(self.data) - self.pos} left")
        out = bytes(self.data[self.pos: self.pos + n])
        self.pos += n
        return out

    def varint(self, what: str) -> int:
        value, shift = 0, 0
        while True:
            if self.pos >= len(self.data):
                raise BitstreamError(f"truncated stream while reading {what}")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise BitstreamError(f"varint for {what} is too long")


def pack(spec: str, shape: tuple[int, int], groups: Sequence[Sequence[bytes]]) -> bytes:
    """Serialise one encoded image: canonical spec, (height, width) before padding, string groups."""
    text = str(spec).encode("ascii")
    height, width = (int(v) for v in shape)
    if height < 1 or width < 1:
        raise ValueError(f"bad image shape {shape}")
    parts = [MAGIC, bytes([VERSION]), _varint(len(text)), text, _varint(height), _varint(width),
             _varint(len(groups))]
    for group in groups:
        parts.append(_varint(len(group)))
        for s in group:
            if not isinstance(s, (bytes, bytearray)):
                raise TypeError(f"entropy-coded strings must be bytes, got {type(s).__name__}")
            parts += [_varint(len(s)), bytes(s)]
    return b"".join(parts)


def unpack(data: bytes) -> Bitstream:
    """Parse a ``.bin``; anything malformed raises :class:`BitstreamError`."""
    r = _Reader(data)
    magic = r.take(4, "magic")
    if magic != MAGIC:
        raise BitstreamError(f"not an mpq bitstream (magic {magic!r}, expected {MAGIC!r})")
    version = r.take(1, "version")[0]
    if version != VERSION:
        raise BitstreamError(f"bitstream format version {version} is not supported (this reader: {VERSION})")
    try:
        spec = r.take(r.varint("spec length"), "spec").decode("ascii")
    except UnicodeDecodeError:
        raise BitstreamError("the spec in the stream is not ASCII") from None
    height, width = r.varint("height"), r.varint("width")
    if height < 1 or width < 1:
        raise BitstreamError(f"bad image shape {height}x{width}")
    groups = []
    for _ in range(r.varint("group count")):
        groups.append(tuple(r.take(r.varint("string length"), "string") for _ in range(r.varint("string count"))))
    if r.pos != len(r.data):
        raise BitstreamError(f"{len(r.data) - r.pos} trailing bytes after the last string")
    return Bitstream(spec, height, width, tuple(groups))


def environment_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between the encoding side (a sample's ``.json``) and this decoder, key by key."""
    return [f"{k}: encoded with {recorded[k]!r}, decoding with {current.get(k)!r}"
            for k in sorted(current) if k in recorded and recorded[k] != current.get(k)]


def decode_bytes(data: bytes, *, record: Mapping[str, Any] | None = None, device: str | None = None) -> np.ndarray:
    """Decode a ``.bin`` stream to RGB uint8 (H, W, 3) with the codec its header names.

    ``record`` is the sample's ``.json``: when given, the device and library versions it records
    are compared with this decoder's, and a :class:`CrossDeviceWarning` names any difference.
    """
    from . import runnable_codec

    stream = unpack(data)
    spec = _decoding_spec(stream.spec, record)
    cls = runnable_codec(spec.name)
    # only learned codecs write .bin streams, and they all take a device
    codec = cls(spec, device=device)  # type: ignore[call-arg]
    if record is not None:
        # learned codecs define environment(); a stream's header names only learned codecs
        diffs = environment_differences(record, codec.environment())  # type: ignore[attr-defined]
        if diffs:
            warnings.warn("stream decoded in another environment than it was encoded in; learned codecs can "
                          "decode wrongly across devices or versions (" + "; ".join(diffs) + ")",
                          CrossDeviceWarning, stacklevel=2)
    return codec.decode(data)


def _decoding_spec(named: str, record: Mapping[str, Any] | None) -> Any:
    """The setting that decodes a stream: the one its header names, else the sample's recorded ``codec``.

    A header may name its weights by hash only (a researcher's checkpoint, see
    :mod:`pipeline.codecs.own`); when they are not in the weights folder, the record's
    setting (the set's spec, with the checkpoint's path) of the same family is tried.
    """
    from ..errors import MissingWeightsError
    from .spec import parse_spec

    try:
        return parse_spec(named)
    except MissingWeightsError:
        recorded = (record or {}).get("codec")
        if not isinstance(recorded, str) or recorded.partition(":")[0] != named.partition(":")[0]:
            raise
        return parse_spec(recorded)


def decode_file(path: str | Path, *, record: Mapping[str, Any] | str | Path | None = None,
                device: str | None = None) -> np.ndarray:
    """Decode a stored ``.bin`` file (e.g. ``key.bin`` taken out of a shard) to RGB uint8.

    The sample's ``.json`` is used to check the encoding environment: pass it as ``record`` (a dict
    or a path); by default ``key.json`` beside the file is read when it exists.
    """
    path = Path(path)
    if record is None:
        sibling = path.with_suffix(".json")
        record = sibling if sibling.is_file() else None
    facts = json.loads(Path(record).read_text()) if isinstance(record, (str, Path)) else record
    return decode_bytes(path.read_bytes(), record=facts, device=device)


def png_bytes(rgb: np.ndarray) -> bytes:
    """The lossless PNG of a reconstruction, as stored in shards of the default container (the same bytes)."""
    from .lossless import encode

    return encode(rgb, "png")


def decode_to_png(src: str | Path, dst: str | Path, *, device: str | None = None) -> np.ndarray:
    """Decode ``src`` (.bin) and write ``dst`` as the same lossless PNG a shard stores; returns the pixels."""
    rgb = decode_file(src, device=device)
    Path(dst).write_bytes(png_bytes(rgb))
    return rgb

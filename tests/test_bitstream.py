"""The .bin container: what is packed is what is unpacked, byte for byte, and bad bytes are refused."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.codecs import bitstream
from pipeline.codecs.bitstream import BitstreamError, pack, unpack
from pipeline.errors import ConfigError

SPEC = "mbt2018:quality=3,metric=mse"


def _streams():
    rng = np.random.default_rng(7)

    def blob(n: int) -> bytes:
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()

    return [
        (SPEC, (1, 1), []),
        (SPEC, (64, 96), [[blob(17)], [blob(3)]]),
        ("bmshj2018-factorized:quality=8,metric=ms-ssim", (4000, 127), [[blob(128 * 128 + 5)]]),
        ("hific:level=lo", (128, 16385), [[b"", blob(1)], [], [blob(300), blob(127), blob(128)]]),
    ]


@pytest.mark.parametrize("spec, shape, groups", _streams())
def test_roundtrip(spec, shape, groups):
    data = pack(spec, shape, groups)
    assert data[:4] == b"MPQB" and data[4] == 1
    s = unpack(data)
    assert (s.spec, s.height, s.width) == (spec, *shape)
    assert s.groups == tuple(tuple(g) for g in groups)
    assert pack(s.spec, (s.height, s.width), s.groups) == data


def test_layout_is_as_documented():
    data = pack("ab", (300, 5), [[b"xyz"], [b"", b"q"]])
    # magic, version, spec length 2 + "ab", height 300 as LEB128 (0xAC 0x02), width 5, 2 groups,
    # group 1: 1 string of 3 bytes; group 2: 2 strings of 0 and 1 bytes
    assert data == b"MPQB\x01" + b"\x02ab" + b"\xac\x02" + b"\x05" + b"\x02" + b"\x01\x03xyz" + b"\x02\x00\x01q"


def test_every_truncation_is_refused():
    data = pack(SPEC, (64, 96), [[b"abcdef"], [b"gh"]])
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            unpack(data[:n])


def test_bad_streams_are_refused():
    data = pack(SPEC, (64, 96), [[b"abc"]])
    with pytest.raises(BitstreamError, match="not an mpq bitstream"):
        unpack(b"\x89PNG" + data[4:])
    with pytest.raises(BitstreamError, match="version 2 is not supported"):
        unpack(data[:4] + b"\x02" + data[5:])
    with pytest.raises(BitstreamError, match="1 trailing bytes"):
        unpack(data + b"\x00")
    with pytest.raises(BitstreamError, match="varint .* too long"):
        unpack(b"MPQB\x01" + b"\xff" * 12)
    with pytest.raises(BitstreamError, match="not ASCII"):
        unpack(b"MPQB\x01\x02\xc3\xa9\x01\x01\x00")
    with pytest.raises(BitstreamError, match="bad image shape"):
        unpack(b"MPQB\x01\x01a\x00\x01\x00")


def test_pack_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match="bad image shape"):
        pack(SPEC, (0, 5), [])
    with pytest.raises(TypeError, match="must be bytes"):
        pack(SPEC, (5, 5), [["text"]])
    with pytest.raises(UnicodeEncodeError):
        pack("é", (5, 5), [])


def test_decode_names_an_unknown_codec():
    with pytest.raises(ConfigError, match="unknown codec 'nosuch'"):
        bitstream.decode_bytes(pack("nosuch:quality=1", (2, 2), []))


def test_environment_differences():
    recorded = {"device": "cuda", "torch": "2.11.0", "bits": 100}
    current = {"device": "cpu", "torch": "2.11.0", "compressai": "1.2.8"}
    assert bitstream.environment_differences(recorded, current) == ["device: encoded with 'cuda', decoding with 'cpu'"]
    assert bitstream.environment_differences({}, current) == []

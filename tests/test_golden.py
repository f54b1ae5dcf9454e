"""Byte identity: a small fixed transcode gives shard tars with pinned SHA-256s.

The pins were computed with the code before the typed set index (format ``mpq-shards/1``), so
this test proves that writing sets through :class:`pipeline.store.index.SetIndex` left the shard
bytes (tars and per-sample ``.json``) unchanged; only ``index.json`` differs. The inputs are made
here from seeded numpy arrays, so only the libraries that write the bytes matter: their versions
are recorded next to the hashes and the pin is skipped (with the reason) when they differ.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

#: library versions the pins were computed with
PINNED_VERSIONS = {"pillow": "13.0.0", "numpy": "1.26.4", "soundfile": "0.14.0", "libsndfile": "1.2.2"}

#: shard file name -> SHA-256, per set
IMAGE_PINS: dict[str, str] = {
    "imagefolder-all-jpeg-q40-000000.tar": "9eec1da3496470350988623ce70bf909e66f90b252edb36b8416e66b71bce13f",
    "imagefolder-all-jpeg-q40-000001.tar": "e893df5bed91416be1d42ff94b24c6ee9c22f49ce1c24980bf7485b8b11052f1",
    "imagefolder-all-jpeg-q40-000002.tar": "9920724c48b2af2a92a4606b47df6c75cda502fa69c6c8d06ec09a4394f69a3b",
    "imagefolder-all-none-000000.tar": "3c8d8ba718b0b20943375513775e4f97c6677cf9dfc8754b5f2e9a691cb2b921",
    "imagefolder-all-none-000001.tar": "1acb717541828a7d8472006c5ff964e37b93085771d2908785dd5b0115ecbe4e",
    "imagefolder-all-none-000002.tar": "6cd34eb82723e063d398c357ad16a3dca4f38591846a979bd7e030814366c11c",
    "imagefolder-all-webp-q30-000000.tar": "fc4856a32379b311b7806b84825ed443df342d4dfd7bf74393aee9378d8a6a0e",
    "imagefolder-all-webp-q30-000001.tar": "3fa051bbd9d305e4644cf62d6b3610ac4eb8947d3685b55b287045a3bfc3f524",
    "imagefolder-all-webp-q30-000002.tar": "1d13d0ef29b7ab2c0ddd008adb9c6437f2331e82d0bbce5891c0e50235d77294",
}
AUDIO_PINS: dict[str, str] = {
    "audiofolder-all-none-000000.tar": "20cfdc410db137037392ff68cc720b013d253b2b316201d421e7b0b8dce5bb47",
}

IMAGE_CODECS = ("none", "jpeg:quality=40", "webp:quality=30")


def _versions() -> dict[str, str]:
    import PIL
    import soundfile

    return {"pillow": PIL.__version__, "numpy": np.__version__, "soundfile": soundfile.__version__,
            "libsndfile": soundfile.__libsndfile_version__}


def _skip_unless_pinned_versions() -> None:
    have = _versions()
    if have != PINNED_VERSIONS:
        pytest.skip(f"pins were computed with {PINNED_VERSIONS}, here {have}: bytes may legitimately differ")


def _images(root: Path) -> None:
    """Five small images from a legacy-seeded generator (stable across numpy versions), as PNG."""
    from PIL import Image

    rng = np.random.RandomState(1234)
    for i in range(5):
        h, w = 24 + 8 * i, 40 - 4 * i
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 127 // (w + h))], axis=-1)
        noise = rng.randint(0, 32, size=(h, w, 3))
        buf = io.BytesIO()
        Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
        (root / f"img_{i}.png").write_bytes(buf.getvalue())


def _audio(root: Path) -> None:
    """One short 16-bit mono tone with noise, as WAV."""
    import soundfile as sf

    rng = np.random.RandomState(99)
    t = np.arange(4000) / 8000.0
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    sf.write(root / "tone.wav", (x * 32767).astype(np.int16), 8000, subtype="PCM_16")


def _run(dataset: str, root: Path, out: Path, codecs: tuple[str, ...]) -> None:
    from pipeline import TranscodeConfig
    from pipeline.run.driver import InlineExecutor, transcode

    config = TranscodeConfig.create(dataset, str(root), list(codecs), out=out, samples_per_shard=2)
    transcode(config, InlineExecutor())


def _hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.tar"))}


def test_image_shards_are_byte_identical(tmp_path):
    _skip_unless_pinned_versions()
    src = tmp_path / "src"
    src.mkdir()
    _images(src)
    _run("imagefolder", src, tmp_path / "out", IMAGE_CODECS)
    got = _hashes(tmp_path / "out")
    assert len(got) == 9  # 3 settings x 3 shards of at most 2 samples
    assert got == IMAGE_PINS


def test_audio_shards_are_byte_identical(tmp_path):
    _skip_unless_pinned_versions()
    src = tmp_path / "src"
    src.mkdir()
    _audio(src)
    _run("audiofolder", src, tmp_path / "out", ("none",))
    got = _hashes(tmp_path / "out")
    assert len(got) == 1
    assert got == AUDIO_PINS


def test_index_is_the_only_file_that_may_differ(tmp_path):
    """Every per-sample .json inside the tars is what the pins cover; index.json is typed and read back."""
    from pipeline.store.index import FORMAT, SetIndex

    src = tmp_path / "src"
    src.mkdir()
    _images(src)
    _run("imagefolder", src, tmp_path / "out", ("none",))
    (path,) = (tmp_path / "out").rglob("index.json")
    raw = json.loads(path.read_text())
    assert raw["format"] == FORMAT
    assert SetIndex.from_dict(raw).to_dict() == raw


def _cpuinfo_here() -> tuple[str, set[str]]:
    """Model name and flags of this machine's first CPU, read here independently of pipeline.run.machine."""
    text = Path("/proc/cpuinfo").read_text()
    model = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
    flags = set(next(line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")))
    return model, flags


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file() or "flags" not in Path("/proc/cpuinfo").read_text(),
                    reason="needs an x86 Linux /proc/cpuinfo")
def test_index_records_the_machine_the_shards_were_encoded_on(tmp_path):
    """Byte identity holds for one machine: libopus and torch pick SIMD paths by CPU, so the index says which."""
    from pipeline.store.index import LocalRoot, read_index

    src = tmp_path / "src"
    src.mkdir()
    _audio(src)
    _run("audiofolder", src, tmp_path / "out", ("none", "opus:kbps=24"))
    model, flags = _cpuinfo_here()
    level = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else None
    for codec in ("none", "opus:kbps=24"):
        (described,) = read_index(LocalRoot(tmp_path / "out"), "audiofolder", "all", codec).versions["machines"]
        assert described["cpu"] == model and described["arch"] == "x86_64"
        if level is not None:
            assert described["isa"] == level
        assert {"avx2", "avx512f"} & flags == {"avx2", "avx512f"} & set(described["flags"].split())
    for stats_file in (tmp_path / "out").rglob("*_stats.json"):  # each shard's record, from its worker
        assert json.loads(stats_file.read_text())["machine"] == described

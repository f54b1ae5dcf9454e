"""Checkpoints: hash names as the zoo writes them, offline errors that say what to do, downloads that
are checked before they land, and loading that never unpickles arbitrary objects."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipeline.codecs import weights
from pipeline.errors import ConfigError, MissingWeightsError
from pipeline.codecs.weights import WeightsHashError


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(weights.OFFLINE_ENV, raising=False)


def _named(folder: Path, stem: str, data: bytes) -> Path:
    """A file named like the zoo does: ``<stem>-<first 8 hex of its SHA-256>.pth.tar``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth.tar"
    path.write_bytes(data)
    return path


def test_hash_prefix_of_zoo_names():
    assert weights.hash_prefix("bmshj2018-factorized-prior-1-446d5c7f.pth.tar") == "446d5c7f"
    assert weights.hash_prefix("cheng2020_attn-ms-ssim-6-216423ec.pth.tar") == "216423ec"
    assert weights.hash_prefix("resnet18-5c106cde.pth") == "5c106cde"
    assert weights.hash_prefix("hific-lo.metagraph") is None
    assert weights.hash_prefix("model-final.pth.tar") is None


def test_every_zoo_url_carries_a_hash():
    pytest.importorskip("compressai")
    from compressai.zoo.image import model_urls

    for metrics in model_urls.values():
        for urls in metrics.values():
            for url in urls.values():
                assert weights.hash_prefix(Path(url).name) is not None, url


def test_verify_and_the_digest_cache(tmp_path):
    path = _named(tmp_path, "m", b"weights v1")
    prefix = weights.hash_prefix(path.name)
    weights.verify(path, prefix)
    path.write_bytes(b"weights v2, corrupted")  # another size: the remembered digest is not reused
    with pytest.raises(WeightsHashError, match=f"starts with {prefix}: refused"):
        weights.verify(path, prefix)
    weights.verify(path, None)  # nothing to check against


def test_fetch_finds_a_pre_placed_file_offline(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    path = _named(tmp_path / "cache", "m", b"abc")
    assert weights.fetch(f"https://host.invalid/v1/{path.name}", tmp_path / "cache", what="m") == path


def test_fetch_offline_names_file_url_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    url = "https://host.invalid/v1/m-0123abcd.pth.tar"
    with pytest.raises(MissingWeightsError) as err:
        weights.fetch(url, tmp_path / "cache", what="mbt2018:quality=1,metric=mse")
    msg = str(err.value)
    for part in ("mbt2018:quality=1,metric=mse", "m-0123abcd.pth.tar", url, str(tmp_path / "cache" / "m-0123abcd.pth.tar"),
                 "--weights-dir", "MPQ_WEIGHTS_DIR", "MPQ_OFFLINE"):
        assert part in msg
    assert not (tmp_path / "cache").exists()


def test_fetch_downloads_checks_and_renames(tmp_path):
    src = _named(tmp_path / "remote", "m", os.urandom(3_000_000))
    got = weights.fetch(src.as_uri(), tmp_path / "cache", what="m")
    assert got == tmp_path / "cache" / src.name and got.read_bytes() == src.read_bytes()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [src.name]


def test_a_download_with_the_wrong_hash_never_lands(tmp_path):
    (tmp_path / "remote").mkdir()
    bad = tmp_path / "remote" / "m-00000000.pth.tar"
    bad.write_bytes(b"not the published file")
    with pytest.raises(WeightsHashError, match="refused"):
        weights.fetch(bad.as_uri(), tmp_path / "cache", what="m")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_failed_download_is_a_missing_weights_error(tmp_path):
    url = (tmp_path / "gone" / "m-0123abcd.pth.tar").as_uri()
    with pytest.raises(MissingWeightsError, match="could not be downloaded"):
        weights.fetch(url, tmp_path / "cache", what="m")


def test_weights_dir_override(tmp_path, monkeypatch):
    assert weights.weights_dir_override() is None
    monkeypatch.setenv(weights.WEIGHTS_ENV, str(tmp_path))
    assert weights.weights_dir_override() == tmp_path


def test_torch_hub_cache_follows_torch_home(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert weights.torch_hub_checkpoints() == tmp_path / "th" / "hub" / "checkpoints"


class _Payload:
    """An object whose unpickling would run code (here: create a file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_loading_never_unpickles_objects(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "extra": _Payload(str(marker))}, path)
    with pytest.raises(ConfigError, match="holds more than tensors and is refused"):
        weights.load_state_dict(path)
    assert not marker.exists()


def test_loading_state_dicts(tmp_path):
    torch = pytest.importorskip("torch")
    plain = {"a.weight": torch.arange(3.0), "b.bias": torch.ones(1)}
    torch.save(plain, tmp_path / "plain.pth")
    torch.save({"epoch": 3, "state_dict": plain}, tmp_path / "train.pth")  # CompressAI's training checkpoints
    torch.save({"a": 1}, tmp_path / "notensors.pth")
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    for name in ("plain.pth", "train.pth"):
        got = weights.load_state_dict(tmp_path / name)
        assert got.keys() == plain.keys() and all(torch.equal(got[k], plain[k]) for k in plain)
    with pytest.raises(ConfigError, match="not a state dict of tensors"):
        weights.load_state_dict(tmp_path / "notensors.pth")
    with pytest.raises(ConfigError, match="cannot be read: not a torch checkpoint"):
        weights.load_state_dict(tmp_path / "junk.pth")

"""The typed set index: format 2 round trips, format 1 sets (written by hand as the old code wrote
them) load the same samples, and a new source's attachment reaches the loader with no loader edit."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import audio_fixtures as af  # noqa: E402
import fixtures as fx  # noqa: E402
from pipeline import TranscodeConfig, transcode  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from pipeline.loaders import load  # noqa: E402
from pipeline.report import find_sets, summarize  # noqa: E402
from pipeline.sources import register  # noqa: E402
from pipeline.sources.base import RawSample, SampleRef, Source, finalize, read_file  # noqa: E402
from pipeline.store.index import FORMAT, V1, Field, SetIndex, attachment, read_index, record  # noqa: E402
from pipeline.store.index import LocalRoot  # noqa: E402

#: the keys index.json had in format 1, in the order the old driver wrote them
V1_KEYS = ("dataset", "split", "codec", "spec", "tag", "modality", "source", "samples_per_shard", "limit",
           "ms_ssim", "versions", "counts", "shards", "manifest", "shard_compression", "max_pixels")


def index_paths(out: Path) -> list[Path]:
    return sorted(out.rglob("index.json"))


def write_v1(path: Path) -> dict:
    """Rewrite a set's index.json as the code before the set index wrote it: no schema, format 1."""
    v2 = json.loads(path.read_text())
    v1 = {"format": V1, **{k: v2[k] for k in V1_KEYS if k in v2}}
    path.write_text(json.dumps(v1, indent=1, sort_keys=True))
    return v1


def same(a, b) -> bool:
    """Deep equality of loaded samples (tensors, arrays, dicts)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


def assert_v1_loads_like_v2(out: Path, dataset: str, split: str, settings, **kwargs) -> None:
    """Load every setting (and all of them paired) from format 2, rewrite the indexes as format 1, load again."""
    loads = [(s, {}) for s in settings] + ([(list(settings), {"paired": True})] if len(settings) > 1 else [])
    before = [list(load(out, dataset, split, codec, **extra, **kwargs)) for codec, extra in loads]
    assert all(before) and all(json.loads(p.read_text())["format"] == FORMAT for p in index_paths(out))
    for p in index_paths(out):
        v1 = write_v1(p)
        assert SetIndex.from_dict(v1).schema  # the upgrade derives a schema
    on_disk = {p: p.read_bytes() for p in index_paths(out)}
    after = [list(load(out, dataset, split, codec, **extra, **kwargs)) for codec, extra in loads]
    assert {p: p.read_bytes() for p in index_paths(out)} == on_disk  # loading leaves format 1 as it is
    for a, b in zip(before, after):
        assert len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- the dataclasses


def test_fields_refuse_bad_declarations():
    with pytest.raises(ConfigError, match="role"):
        Field("x", "sidecar", "int", "x")
    with pytest.raises(ConfigError, match="type"):
        Field("x", "attachment", "blob", "x", "integer")
    with pytest.raises(ConfigError, match="decoder"):
        Field("x", "attachment", "int", "x", "pickle")
    with pytest.raises(ConfigError, match="record value"):
        Field("x", "record", "int", "x")
    assert Field("image", "payload", "image", "jpg", "codec").view  # a payload belongs to its setting
    assert Field.from_dict(record("bits", "int", view=True).to_dict()) == record("bits", "int", view=True)


def test_label_fields_declare_their_space_and_others_are_written_as_before():
    label = attachment("label", "cls", "int", "integer", classes=1000, label_space="ILSVRC-2012")
    assert label.to_dict()["classes"] == 1000 and Field.from_dict(label.to_dict()) == label
    assert "classes" not in record("bits", "int", view=True).to_dict()  # unchanged keys for every other field
    with pytest.raises(ConfigError, match="only an int or mask label has classes"):
        Field("transcript", "attachment", "text", "txt", "text", classes=3)


def test_unknown_formats_and_missing_keys_are_refused():
    with pytest.raises(ConfigError, match="format"):
        SetIndex.from_dict({"format": "mpq-shards/9", "dataset": "d", "split": "s", "codec": "none", "shards": []})
    with pytest.raises(ConfigError, match="lacks codec"):
        SetIndex.from_dict({"format": FORMAT, "dataset": "d", "split": "s", "shards": [], "schema": []})
    with pytest.raises(ConfigError, match="schema"):
        SetIndex.from_dict({"format": FORMAT, "dataset": "d", "split": "s", "codec": "none", "shards": []})
    with pytest.raises(ConfigError, match="shard name"):
        SetIndex.from_dict({"format": V1, "dataset": "d", "split": "s", "codec": "none",
                            "shards": [{"name": "../x.tar", "samples": 1, "bytes": 1, "sha256": "0"}]})


@pytest.fixture(scope="module")
def classes_out(tmp_path_factory, imagefolder_classes) -> Path:
    out = tmp_path_factory.mktemp("index-classes")
    assert not fx.transcode("imagefolder", imagefolder_classes, out, codecs=("none", "jpeg:quality=20")).failed
    return out


def test_v2_round_trip_and_schema_of_a_written_set(classes_out):
    for path in index_paths(classes_out):
        raw = json.loads(path.read_text())
        index = SetIndex.from_dict(raw)
        assert index.to_dict() == raw and SetIndex.from_dict(index.to_dict()) == index
        assert raw["format"] == FORMAT
        ext = "png" if index.codec == "none" else "jpg"
        assert index.payload == Field("image", "payload", "image", ext, "codec")
        space = {"classes": 2, "label_space": "2 class folders"}  # imagefolder's class folders
        assert attachment("label", "cls", "int", "integer", **space) in index.schema
        assert index.label_space("label") == (2, "2 class folders")
        assert {f.name for f in index.fields("record", view=True)} == {"bits", "bpp"}
        assert read_index(LocalRoot(classes_out), "imagefolder", "all", index.codec) == index


def test_read_index_checks_the_folder(classes_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(classes_out, out)
    folder = out / "imagefolder" / "all" / "none"
    with pytest.raises(ConfigError, match="index.json missing.*sets there: jpeg-q20, none"):
        read_index(LocalRoot(out), "imagefolder", "all", "webp:quality=3")
    moved = out / "imagefolder" / "all" / "elsewhere"
    shutil.copytree(folder, moved)
    with pytest.raises(ConfigError, match="not the folder it is in"):
        read_index(LocalRoot(out), "imagefolder", "all", tag="elsewhere")


# --------------------------------------------------------------------------- format 1 still loads


def test_v1_image_set_loads_the_same_samples(classes_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(classes_out, out)
    summary_v2 = summarize(find_sets(out)[0]).drop(columns=["folder_bytes"])  # (index.json's own size differs)
    assert_v1_loads_like_v2(out, "imagefolder", "all", ("none", "jpeg:quality=20"), meta=True)
    assert summarize(find_sets(out)[0]).drop(columns=["folder_bytes"]).equals(summary_v2)  # the report too


def test_v1_ade20k_set_loads_the_same_samples(ade20k, tmp_path):
    out = tmp_path / "out"
    assert not fx.transcode("ade20k", ade20k["val"], out, split="val", codecs=("none", "webp:quality=20")).failed
    index = read_index(LocalRoot(out), "ade20k", "val", "webp:quality=20")
    assert attachment("segmentation", "seg.png", "mask", "label_map", classes=150, label_space="ADE20K") in index.schema
    flips = []

    def flip(*xs):  # a transform sees the image and the segmentation as one call
        flips.append(len(xs))
        return tuple(torch.flip(x, dims=[-1]) for x in xs)

    shutil.copytree(out, tmp_path / "twin")
    assert_v1_loads_like_v2(out, "ade20k", "val", ("none", "webp:quality=20"))
    assert_v1_loads_like_v2(tmp_path / "twin", "ade20k", "val", ("webp:quality=20",), transform=flip)
    assert flips and set(flips) == {2}
    s = next(iter(load(out, "ade20k", "val", "webp:quality=20")))
    assert s["segmentation"].dtype == torch.uint8 and s["segmentation"].shape == s["image"].shape[1:]


@pytest.fixture(scope="module")
def musdb_out(tmp_path_factory):
    built = af.build_musdb_hq(tmp_path_factory.mktemp("musdb-src"), seconds=0.5)
    out = tmp_path_factory.mktemp("musdb-out")
    config = TranscodeConfig.create("musdb", built.root, ["none", "mp3:kbps=96"], out=out, split="test",
                                    samples_per_shard=1, source_options={"encode_stems": True})
    assert not transcode(config).failed
    return built, out


def test_v1_musdb_set_loads_the_same_samples(musdb_out, tmp_path):
    built, src = musdb_out
    out = tmp_path / "out"
    shutil.copytree(src, out)
    index = read_index(LocalRoot(out), "musdb", "test", "mp3:kbps=96")
    assert index.payload.name == "mixture"
    assert {f.name for f in index.schema if f.group == "coded_stems"} == set(next(iter(built.stems.values())))
    assert {f.name for f in index.schema if f.group == "stems"} == {f.name for f in index.schema
                                                                    if f.group == "coded_stems"}
    assert not [f for f in read_index(LocalRoot(out), "musdb", "test", None).schema if f.group == "coded_stems"]
    assert_v1_loads_like_v2(out, "musdb", "test", ("none", "mp3:kbps=96"))
    s = next(iter(load(out, "musdb", "test", "mp3:kbps=96")))
    assert set(s["coded_stems"]) == set(s["stems"]) and isinstance(s["track"], str)


# --------------------------------------------------------------------------- a new source, no loader edit


class DepthFolder(Source):
    """A toy dataset: ``*.png`` images with a ``*.depth.png`` depth map beside each, and a weather tag."""

    name = "toy-depth"
    splits = None
    default_split = "all"

    def fields(self) -> tuple[Field, ...]:
        return (attachment("depth", "depth.png", "mask", "label_map"), *super().fields(), record("weather", "text"))

    def list(self) -> list[SampleRef]:
        root = Path(self.root)
        return finalize([SampleRef(p.stem, p.name, None, (("path", str(p)),))
                         for p in sorted(root.glob("*.png")) if ".depth" not in p.name])

    def read(self, ref: SampleRef) -> RawSample:
        path = Path(ref.get("path"))
        depth = read_file(path.with_name(f"{path.stem}.depth.png"))
        return RawSample(read_file(path), {"depth.png": depth}, {"weather": "rain" if "0" in ref.key else "sun"})


def test_a_new_attachment_reaches_the_loader(tmp_path, monkeypatch):
    from PIL import Image

    import pipeline.sources as sources

    sources.source_names()  # the built-in sources, then a registry of this test's own
    monkeypatch.setattr(sources, "_REGISTRY", dict(sources._REGISTRY))
    register(DepthFolder)

    src = tmp_path / "src"
    src.mkdir()
    depths = {}
    for i in range(3):
        rgb = fx.photo("astronaut", 24, 32)
        depths[f"img{i}"] = (np.arange(24 * 32).reshape(24, 32) * (i + 1) % 251).astype(np.uint8)
        (src / f"img{i}.png").write_bytes(fx.png_bytes(rgb))
        buf = io.BytesIO()
        Image.fromarray(depths[f"img{i}"], mode="L").save(buf, format="PNG")
        (src / f"img{i}.depth.png").write_bytes(buf.getvalue())
    out = tmp_path / "out"
    config = TranscodeConfig.create("toy-depth", str(src), ["jpeg:quality=30"], out=out, samples_per_shard=2)
    assert not transcode(config).failed
    index = read_index(LocalRoot(out), "toy-depth", "all", "jpeg:quality=30")
    assert attachment("depth", "depth.png", "mask", "label_map") in index.schema
    samples = list(load(out, "toy-depth", "all", "jpeg:quality=30"))
    assert [s["__key__"] for s in samples] == sorted(depths)
    for s in samples:
        assert torch.equal(s["depth"], torch.from_numpy(depths[s["__key__"]]))
        assert s["weather"] == ("rain" if "0" in s["__key__"] else "sun")
    # the declared mask moves with the image under a transform, as ADE20K's segmentation does
    crop = list(load(out, "toy-depth", "all", "jpeg:quality=30", transform=lambda im, d: (im[:, 2:10], d[2:10])))
    assert torch.equal(crop[0]["depth"], torch.from_numpy(depths["img0"][2:10]))
    assert crop[0]["image"].shape[1] == 8

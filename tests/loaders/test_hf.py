"""Our shards through Hugging Face ``datasets``' webdataset builder: images decoded where it can,
labels and records intact, and exactly the payload bytes where it cannot decode (as documented)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("torch")

import fixtures as fx  # noqa: E402
from pipeline.codecs import get_codec, make_codec  # noqa: E402
from pipeline.loaders import DECODERS, hf_data_files, load  # noqa: E402
from pipeline.loaders.tables import HF_WEBDATASET  # noqa: E402
from pipeline.codecs.spec import parse_spec  # noqa: E402

SETTINGS = ["jpeg:quality=5", "none", "webp:quality=0", "jpeg2000:ratio=60", "avif:quality=20", "jxl:distance=3",
            "hevc:quality=20"]
AVAILABLE = [s for s in SETTINGS if get_codec(parse_spec(s).name).unavailable() is None]


@pytest.fixture(scope="module")
def out(tmp_path_factory, imagefolder_classes) -> Path:
    dest = tmp_path_factory.mktemp("hf-shards")
    assert not fx.transcode("imagefolder", imagefolder_classes, dest, codecs=tuple(AVAILABLE),
                            samples_per_shard=4).failed
    return dest


def hf_load(files, cache: Path):
    return datasets.load_dataset("webdataset", data_files={"train": files}, split="train", cache_dir=str(cache))


@pytest.mark.parametrize("setting", AVAILABLE)
def test_hf_webdataset_reads_our_shards(out, setting, tmp_path):
    spec = parse_spec(setting)
    ext = get_codec(spec.name).extension
    ours = {s["__key__"]: s for s in load(out, "imagefolder", "all", spec, image_format="numpy", meta=True)}
    ds = hf_load(hf_data_files(out, "imagefolder", "all", spec), tmp_path)
    assert len(ds) == len(ours)
    assert sorted(ds.column_names) == sorted([ext, "cls", "json", "__key__", "__url__"])
    kind = HF_WEBDATASET[ext]
    for row in ds:
        mine = ours[row["__key__"]]
        assert row["cls"] == mine["label"]  # labels intact
        assert row["json"]["bits"] == mine["bits"] and row["json"]["codec"] == spec.canonical
        value = row[ext]
        if kind == "image":
            assert np.array_equal(np.asarray(value.convert("RGB")), mine["image"])
        else:
            assert kind == "bytes" and isinstance(value, bytes) and 8 * len(value) == mine["bits"]
            assert np.array_equal(DECODERS[ext](value), mine["image"])
            assert np.array_equal(make_codec(spec).decode(value), mine["image"])


def test_hf_keeps_segmentation_maps_as_label_images(tmp_path, ade20k):
    fx.transcode("ade20k", ade20k["train"], tmp_path / "out", split="train", codecs=("jpeg:quality=30",))
    ours = {s["__key__"]: s for s in load(tmp_path / "out", "ade20k", "train", "jpeg:quality=30")}
    ds = hf_load(hf_data_files(tmp_path / "out", "ade20k", "train", "jpeg:quality=30"), tmp_path / "cache")
    for row in ds:
        seg = row["seg.png"]
        assert seg.mode == "L"
        assert np.array_equal(np.asarray(seg), ours[row["__key__"]]["segmentation"].numpy())

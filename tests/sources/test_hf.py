"""Hugging Face source: save_to_disk folders and parquet files built with `datasets`; offline hub names."""
from __future__ import annotations

import os
import pickle
import time

import pytest

import fixtures as fx
from pipeline.errors import ConfigError, SampleError
from pipeline.sources import make_source

pytest.importorskip("datasets")

KINDS = ["disk", "parquet"]


@pytest.mark.parametrize("kind", KINDS)
def test_list_and_read(hf_data, kind):
    built = hf_data[kind]
    src = make_source("hf", built.root, None, built.options)
    refs = src.list()
    assert {r.source: r.label for r in refs} == {e.source: e.label for e in built.samples.values()}
    ok = [r for r in refs if built.samples[r.source].error != "missing label"]
    for ref in ok:
        raw = src.read(ref)
        exp = built.samples[ref.source]
        assert raw.data == exp.data  # the stored bytes, undecoded
        assert raw.attachments == {"cls": str(exp.label).encode()}
        assert raw.fields["class_name"] == fx.HF_CLASSES[exp.label]


def test_source_pickles_without_the_dataset(hf_data):
    """Workers get the source by pickle: the open dataset stays behind and is reopened there."""
    built = hf_data["disk"]
    src = make_source("hf", built.root, None, built.options)
    refs = src.list()
    clone = pickle.loads(pickle.dumps(src))
    assert getattr(clone, "_ds", None) is None
    assert clone.read(refs[0]).data == src.read(refs[0]).data


@pytest.mark.parametrize("kind", KINDS)
def test_transcode_end_to_end(hf_data, kind, tmp_path):
    built = hf_data[kind]
    result = fx.transcode("hf", built, tmp_path, samples_per_shard=4)
    fx.verify_run(result, built)


def test_key_column_names_the_samples(hf_data, tmp_path):
    built = hf_data["disk"]
    refs = make_source("hf", built.root, None, {"key_column": "name"}).list()
    assert [r.key for r in refs] == sorted(f"img{i}" for i in range(len(built.samples)))
    assert all(r.source == r.key and r.label is None for r in refs)


def test_unknown_hub_name_is_a_config_error_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest before datasets is imported
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="cannot load"):
        make_source("hf", "mpq-test-nobody/no-such-dataset", None).list()
    assert time.monotonic() - t0 < 30


def test_config_errors(hf_data, tmp_path):
    built = hf_data["disk"]
    with pytest.raises(ConfigError, match="no image column"):
        make_source("hf", built.root, None, {"image_column": "picture"}).list()
    with pytest.raises(ConfigError, match="no label column"):
        make_source("hf", built.root, None, {"label_column": "class"}).list()
    with pytest.raises(ConfigError, match="label column 'name' holds str"):
        make_source("hf", built.root, None, {"label_column": "name"}).list()
    with pytest.raises(ConfigError, match="neither a save_to_disk folder nor parquet"):
        make_source("hf", tmp_path, None).list()
    with pytest.raises(ConfigError, match="neither"):
        make_source("hf", str(tmp_path / "missing"), None).list()


def test_cells_holding_only_a_path_are_read_from_it(tmp_path):
    """Datasets made from local files may store paths, not bytes: the worker reads the file."""
    import datasets
    import pyarrow.parquet as pq

    first, second = tmp_path / "a.jpg", tmp_path / "b.jpg"
    first.write_bytes(fx.jpeg_bytes(fx.photo("coffee", 48, 64)))
    second.write_bytes(fx.jpeg_bytes(fx.photo("rocket", 48, 64)))
    ds = datasets.Dataset.from_dict({"image": [str(first), str(second)]},
                                    features=datasets.Features({"image": datasets.Image()}))
    ds.to_parquet(str(tmp_path / "paths.parquet"))
    cells = pq.read_table(tmp_path / "paths.parquet").column("image").to_pylist()
    if any(c["bytes"] is not None for c in cells):
        pytest.skip("this datasets version embeds the files in parquet")
    second.unlink()  # a path that no longer exists is a per-sample error
    src = make_source("hf", str(tmp_path / "paths.parquet"), None)
    refs = src.list()
    assert src.read(refs[0]).data == first.read_bytes()
    with pytest.raises(SampleError, match="cannot read"):
        src.read(refs[1])


def test_dataset_dict_split_and_parquet_glob(tmp_path, hf_data):
    import datasets

    ds = datasets.load_from_disk(str(hf_data["disk"].root))
    datasets.DatasetDict({"train": ds.select(range(2)), "test": ds.select(range(2, 5))}).save_to_disk(
        str(tmp_path / "dd"))
    assert len(make_source("hf", tmp_path / "dd", None).list()) == 2  # default split: train
    assert len(make_source("hf", tmp_path / "dd", "test").list()) == 3
    with pytest.raises(ConfigError, match="split 'validation' not in"):
        make_source("hf", tmp_path / "dd", "validation").list()
    pattern = str(hf_data["parquet"].root / "part-*.parquet")
    assert len(make_source("hf", pattern, None).list()) == len(hf_data["parquet"].samples)

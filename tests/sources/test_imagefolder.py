"""Image folder source: with and without class subfolders; non-image files are skipped and counted."""
from __future__ import annotations

import pytest

import fixtures as fx
from pipeline.errors import ConfigError, SampleError
from pipeline.sources import make_source


@pytest.mark.parametrize("which", ["imagefolder_classes", "imagefolder_flat"])
def test_list_names_labels_and_skipped(request, which):
    built: fx.Built = request.getfixturevalue(which)
    src = make_source("imagefolder", built.root, None)
    refs = src.list()
    assert {r.source: r.label for r in refs} == {e.source: e.label for e in built.samples.values()}
    assert src.skipped == built.skipped
    assert src.split == "all"
    assert all("." not in r.key and "/" not in r.key for r in refs)


def test_class_labels_are_sorted_folder_indices(imagefolder_classes):
    src = make_source("imagefolder", imagefolder_classes.root, None)
    assert src.classes() == ["cats", "things"]
    for ref in src.list():
        assert ref.label == ["cats", "things"].index(ref.source.split("/")[0])
        raw = src.read(ref)
        assert raw.attachments["cls"] == str(ref.label).encode()
        assert raw.fields["class_name"] == ref.source.split("/")[0]


@pytest.mark.parametrize("which", ["imagefolder_classes", "imagefolder_flat"])
def test_transcode_end_to_end(request, which, tmp_path):
    built: fx.Built = request.getfixturevalue(which)
    result = fx.transcode("imagefolder", built, tmp_path, samples_per_shard=3)
    assert result.skipped_files == built.skipped
    fx.verify_run(result, built)


def test_colliding_keys_are_made_unique(tmp_path):
    """a/b.jpg and a_b.jpg sanitise to the same key; both are kept under distinct, stable keys."""
    data = fx.jpeg_bytes(fx.photo("coffee", 64, 64))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.jpg").write_bytes(data)
    (tmp_path / "a_b.jpg").write_bytes(data)
    refs = make_source("imagefolder", tmp_path, None).list()
    again = make_source("imagefolder", tmp_path, None).list()
    assert len({r.key for r in refs}) == 2
    assert [(r.key, r.source) for r in refs] == [(r.key, r.source) for r in again]
    assert all("." not in r.key for r in refs)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        make_source("imagefolder", tmp_path / "missing", None).list()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="no images"):
        make_source("imagefolder", tmp_path, None).list()
    with pytest.raises(ConfigError, match="unknown option"):
        make_source("imagefolder", tmp_path, None, {"label_column": "x"})
    with pytest.raises(ConfigError, match="split name"):
        make_source("imagefolder", tmp_path, "a/b")


def test_file_gone_after_listing_is_a_sample_error(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(fx.jpeg_bytes(fx.photo("chelsea", 32, 32)))
    src = make_source("imagefolder", tmp_path, None)
    refs = src.list()
    (tmp_path / "b.jpg").unlink()
    assert src.read(refs[0]).data == (tmp_path / "a.jpg").read_bytes()
    with pytest.raises(SampleError, match="cannot read b.jpg"):
        src.read(refs[1])

"""ImageNet source: both on-disk layouts, torchvision labels, Kaggle csv labels, end-to-end shards."""
from __future__ import annotations

import shutil

import pytest

import fixtures as fx
from pipeline.errors import ConfigError, SampleError
from pipeline.sources import make_source

LAYOUTS = ["imagenet_folders", "imagenet_kaggle"]


@pytest.fixture(params=LAYOUTS)
def imagenet(request) -> dict[str, fx.Built]:
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("split", ["train", "val"])
def test_list_names_and_labels(imagenet, split):
    built = imagenet[split]
    refs = make_source("imagenet", built.root, split).list()
    assert [r.key for r in refs] == sorted(r.key for r in refs)
    assert {r.source: r.label for r in refs} == {e.source: e.label for e in built.samples.values()}
    for r in refs:
        assert "." not in r.key and "/" not in r.key


def test_labels_are_sorted_wnid_indices_in_both_layouts(imagenet_folders, imagenet_kaggle):
    """torchvision's convention: label = index of the wnid in the sorted wnid list, whatever the layout."""
    want = {w: i for i, w in enumerate(sorted(fx.WNIDS))}
    for built in (imagenet_folders, imagenet_kaggle):
        for split in ("train", "val"):
            src = make_source("imagenet", built[split].root, split)
            assert src.wnids() == sorted(fx.WNIDS)
            for ref in src.list():
                if ref.get("wnid") is not None:
                    assert ref.label == want[ref.get("wnid")]


def test_read_gives_file_bytes_and_ascii_label(imagenet_kaggle):
    built = imagenet_kaggle["val"]
    src = make_source("imagenet", built.root, "val")
    for ref in src.list():
        exp = built.samples[ref.source]
        if exp.error == "missing label":
            with pytest.raises(SampleError, match="missing label"):
                src.read(ref)
            continue
        raw = src.read(ref)
        assert raw.data == exp.data
        assert raw.attachments == {"cls": str(exp.label).encode("ascii")}
        assert raw.fields["wnid"] == exp.fields["wnid"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_transcode_end_to_end(imagenet, split, tmp_path):
    built = imagenet[split]
    result = fx.transcode("imagenet", built, tmp_path, split=split)
    records = fx.verify_run(result, built)
    assert set(records) == {"none", "jpeg:quality=50,subsampling=420"}


def test_wrong_root_unknown_split_and_empty_split(tmp_path, imagenet_folders):
    with pytest.raises(ConfigError, match="not a folder"):
        make_source("imagenet", tmp_path / "missing", "train").list()
    with pytest.raises(ConfigError, match="no train/ folder"):
        make_source("imagenet", tmp_path, "train").list()
    with pytest.raises(ConfigError, match="unknown split"):
        make_source("imagenet", imagenet_folders["train"].root, "test")
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images"):
        make_source("imagenet", tmp_path, "train").list()


def test_kaggle_val_without_csv_labels_nothing(tmp_path, imagenet_kaggle):
    """Without LOC_val_solution.csv the flat val images have no label: every one becomes an error row."""
    root = tmp_path / "k"
    shutil.copytree(imagenet_kaggle["val"].root, root)
    (root / "LOC_val_solution.csv").unlink()
    src = make_source("imagenet", root, "val")
    refs = src.list()
    assert len(refs) == len(imagenet_kaggle["val"].samples)
    for ref in refs:
        with pytest.raises(SampleError, match="missing label"):
            src.read(ref)


def test_kaggle_csv_with_bom_or_wrong_columns(tmp_path, imagenet_kaggle):
    root = tmp_path / "k"
    shutil.copytree(imagenet_kaggle["val"].root, root)
    csv_file = root / "LOC_val_solution.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + csv_file.read_bytes())  # saved by a spreadsheet program
    want = {e.source: e.label for e in imagenet_kaggle["val"].samples.values()}
    assert {r.source: r.label for r in make_source("imagenet", root, "val").list()} == want
    csv_file.write_text("id,label\nILSVRC2012_val_00000001,n01440764\n")
    with pytest.raises(ConfigError, match="ImageId,PredictionString"):
        make_source("imagenet", root, "val").list()

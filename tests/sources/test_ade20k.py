"""ADE20K source: images re-encoded, annotations copied byte for byte, missing annotation is an error row."""
from __future__ import annotations

import pytest

import fixtures as fx
from pipeline.errors import ConfigError, SampleError
from pipeline.sources import make_source


@pytest.mark.parametrize("split", ["train", "val"])
def test_list_names(ade20k, split):
    built = ade20k[split]
    refs = make_source("ade20k", built.root, split).list()
    assert [r.source for r in refs] == sorted(built.samples)
    assert all(r.label is None and "." not in r.key for r in refs)


def test_read_annotation_bytes_and_missing_annotation(ade20k):
    built = ade20k["val"]
    src = make_source("ade20k", built.root / "ADEChallengeData2016", "val")  # the inner folder works too
    for ref in src.list():
        exp = built.samples[ref.source]
        if exp.error:
            with pytest.raises(SampleError, match="missing annotation"):
                src.read(ref)
        else:
            raw = src.read(ref)
            assert raw.data == exp.data and raw.attachments == {"seg.png": exp.fields["seg.png"]}


@pytest.mark.parametrize("split", ["train", "val"])
def test_transcode_end_to_end(ade20k, split, tmp_path):
    built = ade20k[split]
    result = fx.transcode("ade20k", built, tmp_path, split=split, codecs=("jpeg:quality=30", "webp:quality=40"))
    records = fx.verify_run(result, built)  # checks .seg.png is byte-identical to the annotation file
    assert len(records["webp:quality=40,method=4"]) == len(built.ok)


def test_config_errors(tmp_path, ade20k):
    with pytest.raises(ConfigError, match="give --split"):
        make_source("ade20k", ade20k["train"].root, None)
    with pytest.raises(ConfigError, match="ADEChallengeData2016"):
        make_source("ade20k", tmp_path, "train").list()
    (tmp_path / "ADEChallengeData2016" / "images" / "training").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images"):
        make_source("ade20k", tmp_path, "train").list()
    with pytest.raises(ConfigError, match="not a folder"):
        make_source("ade20k", tmp_path, "val").list()

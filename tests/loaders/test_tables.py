"""Manifests joined across codec settings as pandas tables."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

import fixtures as fx
from pipeline.errors import ConfigError
from pipeline.loaders import manifests
from pipeline.codecs.spec import parse_spec

SETS = ("none", "jpeg:quality=5", "webp:quality=10")


@pytest.fixture(scope="module")
def out(tmp_path_factory, imagefolder_classes) -> Path:
    dest = tmp_path_factory.mktemp("tables")
    assert not fx.transcode("imagefolder", imagefolder_classes, dest, codecs=SETS, samples_per_shard=3).failed
    return dest


def rows(out: Path, spec: str) -> dict[str, dict]:
    folder = out / "imagefolder" / "all" / parse_spec(spec).tag
    return {r["key"]: r for r in pq.read_table(folder / "manifest.parquet").to_pylist()}


def test_long_form_is_every_manifest_with_its_tag(out, imagefolder_classes):
    df = manifests(out, "imagefolder", "all")
    assert len(df) == len(SETS) * len(imagefolder_classes.samples)
    assert sorted(set(df["tag"])) == sorted(parse_spec(s).tag for s in SETS)
    for spec in SETS:
        want = rows(out, spec)
        part = df[df["tag"] == parse_spec(spec).tag].set_index("key")
        assert sorted(part.index) == sorted(want)
        for key, r in want.items():
            assert part.loc[key, "bits"] == r["bits"] or r["status"] == "error"
            assert part.loc[key, "codec"] == parse_spec(spec).canonical


def test_wide_form_has_one_row_per_sample(out, imagefolder_classes):
    df = manifests(out, "imagefolder", "all", ["jpeg:quality=5", None], wide=True)
    assert len(df) == len(imagefolder_classes.samples)
    assert list(df["bpp"].columns) == ["jpeg-q5", "none"]
    jpeg, ref = rows(out, "jpeg:quality=5"), rows(out, "none")
    for key in df.index:
        assert df.loc[key, ("source", "")] == jpeg[key]["source"] == ref[key]["source"]
        if jpeg[key]["status"] == "ok":
            assert df.loc[key, ("bpp", "jpeg-q5")] == jpeg[key]["bpp"]
            assert df.loc[key, ("bits", "none")] == ref[key]["bits"]
    assert "label" in df.columns.get_level_values(0) and ("label", "") in df.columns  # shared, once
    with pytest.raises(ConfigError, match="index.json missing"):
        manifests(out, "imagefolder", "all", ["avif:quality=10"])

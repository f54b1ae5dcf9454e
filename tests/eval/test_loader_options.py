"""The two loader options evaluation relies on: ``shards=`` and a callable ``on_error``."""
from __future__ import annotations

import json

import pytest

from eval_fixtures import corrupt_member, fresh_copy
from pipeline.errors import ConfigError
from pipeline.loaders import load


def test_shards_reads_only_the_named_shards_whole_in_order(imagenet_out):
    index = json.loads((imagenet_out / "imagenet" / "val" / "none" / "index.json").read_text())
    names = [s["name"] for s in index["shards"]]
    every = [s["__key__"] for s in load(str(imagenet_out), "imagenet", "val", None)]
    second = [s["__key__"] for s in load(str(imagenet_out), "imagenet", "val", None, shards=[names[1]])]
    both = [s["__key__"] for s in load(str(imagenet_out), "imagenet", "val", None, shards=names[::-1])]
    assert second == every[index["shards"][0]["samples"]:]
    assert both == second + every[:index["shards"][0]["samples"]]
    with pytest.raises(ConfigError, match="are not in the set"):
        load(str(imagenet_out), "imagenet", "val", None, shards=["nope.tar"])
    for kw in ({"shuffle": True}, {"rank": 1, "world_size": 2}):
        with pytest.raises(ConfigError, match="no shuffle"):
            load(str(imagenet_out), "imagenet", "val", None, shards=names, **kw)


def test_callable_on_error_is_told_and_the_sample_skipped(imagenet_out, tmp_path):
    out = fresh_copy(imagenet_out, tmp_path / "out")
    corrupt_member(out / "imagenet" / "val" / "none" / "imagenet-val-none-000000.tar", "ILSVRC2012_val_00000002", "png")
    seen = []
    keys = [s["__key__"] for s in load(str(out), "imagenet", "val", None,
                                       on_error=lambda key, exc: seen.append((key, type(exc).__name__)))]
    assert keys == ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000003"]
    assert seen == [("ILSVRC2012_val_00000002", "SampleError")]

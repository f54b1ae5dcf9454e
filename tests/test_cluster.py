"""Dask at the edge: a LocalCluster run gives the same bytes as an in-process run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import TranscodeConfig
from pipeline.cluster import dask_executor
from pipeline.run import transcode


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tar"))}


def test_local_cluster_matches_in_process(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        arr = np.clip(rng.normal(128, 40, (40, 56, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(src / f"im{i}.png")
    specs = ["jpeg:quality=20", "webp:quality=30"]
    inline = transcode(TranscodeConfig.create("imagefolder", src, specs, out=tmp_path / "a", samples_per_shard=2))
    logs: list[str] = []
    with dask_executor(2, dashboard=":0", log=logs.append) as ex:
        dask = transcode(TranscodeConfig.create("imagefolder", src, specs, out=tmp_path / "b", samples_per_shard=2),
                         ex)
    assert "dashboard: http" in logs[0] and "2 workers" in logs[0]
    assert inline.shards_written == dask.shards_written == 6
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a and a == b

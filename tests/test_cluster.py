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


def test_existing_scheduler_address(tmp_path):
    """--scheduler: connect to a cluster someone else started (here a LocalCluster on loopback)."""
    from distributed import LocalCluster

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(src / f"x{i}.png")
    cfg = TranscodeConfig.create("imagefolder", src, ["jpeg:quality=30"], out=tmp_path / "o", samples_per_shard=1)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1") as cluster:
        logs: list[str] = []
        with dask_executor(scheduler=cluster.scheduler_address, log=logs.append) as ex:
            res = transcode(cfg, ex)
    assert cluster.scheduler_address in logs[0]
    assert res.shards_written == 3 and res.sets[0].ok == 3

"""Where everything goes: ``OUT/<dataset>/<split>/<tag>/`` with shards, stats, manifest and index."""
from __future__ import annotations

from pathlib import Path

from .spec import CodecSpec

FORMAT = "mpq-shards/1"


def set_dir(out: str | Path, dataset: str, split: str, spec: CodecSpec) -> Path:
    return Path(out) / dataset / split / spec.tag


def shard_name(dataset: str, split: str, spec: CodecSpec, index: int) -> str:
    return f"{dataset}-{split}-{spec.tag}-{index:06d}"


def tar_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.tar"


def stats_path(folder: Path, name: str) -> Path:
    return folder / f"{name}_stats.json"


MANIFEST = "manifest.parquet"
INDEX = "index.json"

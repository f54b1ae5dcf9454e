"""Where everything goes: ``OUT/<dataset>/<split>/<tag>/`` with shards, stats, manifest and index."""
from __future__ import annotations

from pathlib import Path

from ..codecs.spec import CodecSpec

#: the format of shards, their stats and plans (a set's index.json has its own: ``store.index.FORMAT``)
FORMAT = "mpq-shards/1"


def set_dir(out: str | Path, dataset: str, split: str, spec: CodecSpec) -> Path:
    return Path(out) / dataset / split / spec.tag


def shard_prefix(dataset: str, split: str, spec: CodecSpec) -> str:
    """What every shard name of one set starts with (for listing a set's files)."""
    return f"{dataset}-{split}-{spec.tag}-"


def shard_name(dataset: str, split: str, spec: CodecSpec, index: int) -> str:
    """``<dataset>-<split>-<tag>-<index, 6 digits>``: the one place shard names are made."""
    return f"{shard_prefix(dataset, split, spec)}{index:06d}"


#: opt-in shard compressions and their file extensions (None: plain ``.tar``, the default)
SHARD_COMPRESSIONS = {None: ".tar", "gzip": ".tar.gz"}
#: every extension a shard file can have, longest first (for stripping a suffix)
SHARD_EXTS = (".tar.gz", ".tar")
#: deterministic gzip: fixed level, no time and no file name in the header
GZIP_LEVEL = 6


def shard_ext(compression: str | None = None) -> str:
    """``.tar`` or ``.tar.gz``; raises ValueError for an unknown compression."""
    try:
        return SHARD_COMPRESSIONS[compression]
    except KeyError:
        raise ValueError(f"unknown shard compression {compression!r} (choose from: gzip)") from None


def strip_shard_ext(name: str) -> str:
    """A shard file name without its extension (``.tar.gz`` or ``.tar``); other names unchanged."""
    for ext in SHARD_EXTS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


#: a shard's stats file is ``<shard name>_stats.json``, written after its shard (resume reads it)
STATS_SUFFIX = "_stats.json"


def stats_name(name: str) -> str:
    return f"{name}{STATS_SUFFIX}"


def attempt_name(name: str) -> str:
    """The marker a running attempt of shard ``name``'s task leaves beside it (hidden: never a shard)."""
    return f".{name}.attempt"


MANIFEST = "manifest.parquet"
INDEX = "index.json"

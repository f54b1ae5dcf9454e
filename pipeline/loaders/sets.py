"""Codec sets as the loader sees them: ``OUT/<dataset>/<split>/<tag>/index.json`` and its shards.

Several sets (paired views, mixtures) are read in lockstep, shard by shard: every set of one
source listing cuts the samples into the same shards, so shard ``j`` of each set holds the same
keys, less the samples a codec failed on. The joined samples are those present in every set;
when some set recorded errors, ``manifest.parquet`` says which keys each shard holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..codecs.spec import CodecSpec
from ..errors import ConfigError
from ..store import layout
from ..store.index import SetIndex, ShardEntry, read_index
from .options import resolve_spec
from .storage import Storage


@dataclass(frozen=True)
class CodecSet:
    """One published codec setting: its spec, folder (relative to the root) and typed index."""

    spec: CodecSpec
    parts: tuple[str, ...]  # (dataset, split, tag)
    index: SetIndex

    @property
    def shards(self) -> tuple[ShardEntry, ...]:
        return self.index.shards

    @property
    def modality(self) -> str:
        return self.index.modality


def open_set(storage: Storage, dataset: str, split: str, codec: str | CodecSpec | None) -> CodecSet:
    """Read and check one set's index.json (either format); a missing set names the sets that exist."""
    spec = resolve_spec(codec)
    return CodecSet(spec, (dataset, split, spec.tag), read_index(storage, dataset, split, spec))


@dataclass(frozen=True)
class Join:
    """The samples every set holds, per shard: counts, and per set the sample indices inside its tar.

    ``members[s][j]`` is None when set ``s``'s shard ``j`` holds exactly the joined samples
    (sample ``i`` of the join is sample ``i`` of the tar), else an int array of tar sample indices.
    """

    counts: tuple[int, ...]
    members: tuple[tuple[np.ndarray | None, ...], ...]

    @property
    def total(self) -> int:
        return sum(self.counts)


def join_sets(storage: Storage, sets: Sequence[CodecSet]) -> Join:
    """Align several sets of one listing shard by shard (see the module doc)."""
    first = sets[0]
    if len(sets) == 1:
        return Join(tuple(s.samples for s in first.shards), ((None,) * len(first.shards),))
    for other in sets[1:]:
        for field in ("source", "samples_per_shard", "limit"):
            if getattr(other.index, field) != getattr(first.index, field):
                raise ConfigError(f"{other.spec.canonical} and {first.spec.canonical} were written from different "
                                  f"listings ({field} differs): paired views and mixtures need sets of one source "
                                  "listing and shard size")
        if len(other.shards) != len(first.shards):
            raise ConfigError(f"{other.spec.canonical} has {len(other.shards)} shards, "
                              f"{first.spec.canonical} {len(first.shards)}")
    n = len(first.shards)
    clean = [all(s.shards[j].errors == 0 for s in sets) and len({s.shards[j].samples for s in sets}) == 1
             for j in range(n)]
    if all(clean):
        return Join(tuple(s.samples for s in first.shards), tuple((None,) * n for _ in sets))
    keys = [_ok_keys_by_shard(storage, s) for s in sets]
    counts: list[int] = []
    members: list[list[np.ndarray | None]] = [[] for _ in sets]
    for j in range(n):
        if clean[j]:
            counts.append(first.shards[j].samples)
            for m in members:
                m.append(None)
            continue
        shard_keys = [k.get(s.shards[j].name, []) for k, s in zip(keys, sets)]
        common = set(shard_keys[0]).intersection(*shard_keys[1:])
        joined = [k for k in shard_keys[0] if k in common]
        counts.append(len(joined))
        for m, ks in zip(members, shard_keys):
            pos = {k: i for i, k in enumerate(ks)}
            m.append(np.array([pos[k] for k in joined], dtype=np.int64))
    return Join(tuple(counts), tuple(tuple(m) for m in members))


def _ok_keys_by_shard(storage: Storage, s: CodecSet) -> dict[str, list[str]]:
    """Keys of the samples each shard of a set holds, in tar order, from manifest.parquet."""
    import io

    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(storage.read_bytes(*s.parts, layout.MANIFEST)),
                          columns=["key", "shard", "status"])
    out: dict[str, list[str]] = {}
    for key, shard, status in zip(*(table.column(c).to_pylist() for c in ("key", "shard", "status"))):
        if status == "ok":
            out.setdefault(shard, []).append(key)
    for entry in s.shards:
        if len(out.get(entry.name, [])) != entry.samples:
            raise ConfigError(f"{storage.display(*s.parts)}: manifest and index.json disagree on {entry.name}")
    return out

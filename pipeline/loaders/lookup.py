"""Samples by key, lossless fields only: what an evaluation needs to count a failed sample.

A set missing some samples (a codec failed on them) is scored against the reference set's own
samples of those keys: their labels, transcripts and annotations, never their payload. This
reads only the ``.json`` record and the attachment members of the wanted keys, shard by shard,
parsing tar headers alone for the others (:func:`pipeline.loaders.storage.iter_members`).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

from ..errors import SampleError
from .decode import ViewDecoder
from .sets import open_set
from .storage import Storage, iter_members, read_span


def lossless_fields(root: str, dataset: str, split: str, codec: Any, keys_by_shard: Mapping[str, Iterable[str]], *,
                    image_format: str = "numpy") -> Iterator[tuple[str, dict[str, Any] | Exception]]:
    """(key, sample fields) for each wanted key, or (key, the error) when it cannot be read.

    ``keys_by_shard``: shard file name (as in index.json) -> keys it holds (the set's manifest
    says which). A sample has ``__key__`` and the fields :meth:`ViewDecoder.sample_fields` gives
    (label, transcript, segmentation, ...), in the types the loaders hand out.
    """
    storage = Storage(root)
    cset = open_set(storage, dataset, split, codec)
    entries = {e.name: e for e in cset.shards}
    decoder = ViewDecoder(cset.index, cset.spec, {}, image_format=image_format)
    exts = ("json", *decoder.sample_members)
    for shard, keys in keys_by_shard.items():
        wanted = set(keys)
        entry = entries.get(shard)
        if entry is None:
            lacking = SampleError(f"{dataset}/{split}/{cset.spec.tag} has no shard {shard}")
            yield from ((k, lacking) for k in sorted(wanted))
            continue
        try:
            yield from _read_shard(storage, (*cset.parts, shard), entry, wanted, exts, decoder)
        except SampleError as exc:  # the shard itself cannot be read: every key left says so
            yield from ((k, exc) for k in sorted(wanted))


def _read_shard(storage: Storage, parts: tuple[str, ...], entry: Any, wanted: set[str], exts: tuple[str, ...],
                decoder: ViewDecoder) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
    """The wanted keys of one shard, in shard order; found keys leave ``wanted``, so what is left was not there."""
    with storage.open_shard(parts, entry.bytes, entry.sha256) as fh:
        spans: dict[str, dict[str, tuple[int, int]]] = {}
        for member, offset, size in iter_members(fh, parts[-1]):
            key, dot, ext = member.partition(".")
            if dot and key in wanted and ext in exts:
                spans.setdefault(key, {})[ext] = (offset, size)
        for key, found in spans.items():
            wanted.discard(key)
            try:
                members = {e: read_span(fh, span, f"{parts[-1]}: {key}.{e}") for e, span in found.items()}
                yield key, {"__key__": key, **decoder.sample_fields(members)}
            except Exception as exc:  # noqa: BLE001 - one unreadable sample is that key's answer
                yield key, exc
    for key in sorted(wanted):
        yield key, SampleError(f"{parts[-1]} holds no sample {key!r}")
    wanted.clear()

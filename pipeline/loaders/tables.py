"""Manifests as tables for analysis, and shard lists for other readers (Hugging Face ``datasets``)."""
from __future__ import annotations

import io
from typing import Any, Iterable, Mapping

from ..store import layout
from ..errors import ConfigError
from ..store.index import read_index
from .sets import open_set
from .storage import Storage

#: What ``datasets.load_dataset("webdataset", ...)`` (datasets 2.19 to 5.x) does with each payload
#: extension we write: its builder picks a feature type from the member extension alone.
#: "image": decoded to a PIL image; "audio": a ``datasets.Audio`` column (decoding needs torchcodec);
#: "bytes": the raw payload (decode it with ``pipeline.loaders.DECODERS[ext]`` or the codec).
HF_WEBDATASET = {
    "jpg": "image", "png": "image", "webp": "image", "jp2": "image",
    "avif": "bytes", "jxl": "bytes", "qoi": "bytes", "heic": "bytes", "bin": "bytes",
    "flac": "audio", "mp3": "audio", "opus": "audio", "ogg": "audio", "wav": "audio",
    "m4a": "bytes", "ecdc": "bytes",
}

#: columns that identify a row rather than measure it
_ID = ("key",)


def _set_specs(storage: Storage, dataset: str, split: str, codecs: Iterable[Any] | None) -> list[Any]:
    if codecs is not None:
        return list(codecs)
    found = []
    for tag in storage.listdir(dataset, split):
        if storage.exists(dataset, split, tag, layout.INDEX):
            found.append(read_index(storage, dataset, split, tag=tag).codec)
    if not found:
        raise ConfigError(f"no complete codec set found under {storage.display(dataset, split)} "
                          "(a store that cannot list folders, such as HTTP, needs codecs=[...])")
    return found


def manifests(root: str, dataset: str, split: str, codecs: Iterable[Any] | None = None, *, wide: bool = False,
              storage_options: Mapping[str, Any] | None = None):
    """The manifests of several codec settings of one split, joined, as a pandas DataFrame.

    Long form (default): one row per (sample, setting), every manifest column plus ``tag``.
    ``wide=True``: one row per sample key; columns equal in every setting (source, label, size)
    appear once, the others as ``(column, tag)`` pairs, e.g. ``df["bpp"]["jpeg-q5"]``.
    ``codecs`` defaults to every complete set found (``None`` in the list: the reference set).
    """
    import pandas as pd
    import pyarrow.parquet as pq

    storage = Storage(root, storage_options=storage_options, cache_dir=False)
    frames = []
    for codec in _set_specs(storage, dataset, split, codecs):
        s = open_set(storage, dataset, split, codec)
        table = pq.read_table(io.BytesIO(storage.read_bytes(*s.parts, layout.MANIFEST)))
        df = table.to_pandas()
        df.insert(1, "tag", s.spec.tag)
        frames.append(df)
    long = pd.concat(frames, ignore_index=True, sort=False)
    if not wide:
        return long
    tags = list(dict.fromkeys(long["tag"]))
    values = [c for c in long.columns if c not in (*_ID, "tag")]
    grouped = long.groupby("key", sort=True)
    shared = [c for c in values if c != "codec" and int(grouped[c].nunique(dropna=False).max()) <= 1]
    per_set = [c for c in values if c not in shared]
    left = grouped[shared].first() if shared else pd.DataFrame(index=sorted(set(long["key"])))
    right = long.pivot(index="key", columns="tag", values=per_set).reindex(columns=tags, level="tag")
    left.columns = pd.MultiIndex.from_tuples([(c, "") for c in left.columns], names=[None, "tag"])
    out = pd.concat([left, right], axis=1)
    out.index.name = "key"
    return out


def hf_data_files(root: str, dataset: str, split: str, codec: Any = None, *,
                  storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The tar files of one codec set, in order, as paths or URLs for
    ``datasets.load_dataset("webdataset", data_files={"train": files})``."""
    storage = Storage(root, storage_options=storage_options, cache_dir=False)
    s = open_set(storage, dataset, split, codec)
    if storage.local:
        return [storage.url(*s.parts, e.name) for e in s.shards]
    return [storage.display(*s.parts, e.name) for e in s.shards]


def hf_features(root: str, dataset: str, split: str, codec: Any = None, *, audio: str = "binary",
                samples: int = 100, storage_options: Mapping[str, Any] | None = None):
    """``datasets.Features`` for loading a set with the webdataset builder without its guessing.

    Pass it as ``load_dataset("webdataset", data_files=..., features=...)``. Images Pillow reads
    become ``Image()``; audio payloads stay bytes (``audio="binary"``: datasets needs torchcodec
    even to store an ``Audio`` column) or become ``Audio()`` (``audio="decode"``); other payloads
    (AVIF, JPEG XL, HEIC, .bin, .m4a, .ecdc) are bytes. The ``json`` struct is inferred from the
    first ``samples`` records of the first shard (the builder looks at five).
    """
    import datasets
    import pyarrow as pa

    from .decoders import strict_json
    from .storage import iter_groups, read_span

    if audio not in ("binary", "decode"):
        raise ConfigError(f"audio must be 'binary' or 'decode', not {audio!r}")
    storage = Storage(root, storage_options=storage_options, cache_dir=False)
    s = open_set(storage, dataset, split, codec)
    if not s.shards:
        raise ConfigError(f"{storage.display(*s.parts)} has no shards")
    first = s.shards[0]
    exts: list[str] = []
    records: list[dict[str, Any]] = []
    with storage.open_shard((*s.parts, first.name), first.bytes, first.sha256) as fh:
        for _, _, spans in iter_groups(fh, range(min(samples, first.samples)), name=first.name):
            exts += [e for e in spans if e not in exts]
            if "json" in spans:
                records.append(strict_json(read_span(fh, spans["json"])))
    features: dict[str, Any] = {}
    declared = {f.ext: f.type for f in s.index.schema if f.ext}  # what the set index says each member is
    untyped = [ext for ext, t in declared.items() if t == "detection"]
    if untyped:  # HF parses the member as JSON, and Arrow has no one type for polygons and RLE in one field
        raise ConfigError(f"{dataset}: the .{untyped[0]} annotations (COCO segmentation: polygons or RLE) have no "
                          "Arrow type for Hugging Face's webdataset builder; read the set with "
                          "pipeline.loaders.load or webdataset (wds_sample_decoder)")
    for ext in exts:
        kind = HF_WEBDATASET.get(ext.rsplit(".", 1)[-1], "bytes")
        if ext == "json":
            struct = pa.Table.from_pylist([{"json": r} for r in records]).schema
            features["json"] = datasets.Features.from_arrow_schema(struct)["json"]
        elif declared.get(ext) == "int":
            features[ext] = datasets.Value("int64")
        elif declared.get(ext) == "text":
            features[ext] = datasets.Value("string")
        elif kind == "image":
            features[ext] = datasets.Image()
        elif kind == "audio" and audio == "decode":
            features[ext] = datasets.Audio()
        else:
            features[ext] = datasets.Value("binary")
    features["__key__"] = datasets.Value("string")
    features["__url__"] = datasets.Value("string")
    return datasets.Features(features)

"""Streaming loaders for the shards: torch datasets, safe decoders, manifests as tables.

``load(root, dataset, split, codec=...)`` is the entry point; torch is imported only when a
dataset is built, so :func:`manifests` and :func:`hf_data_files` work without it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .decoders import DECODERS, decoder_table
from .tables import hf_data_files, hf_features, manifests

if TYPE_CHECKING:
    from .dataset import Loader, ShardDataset


def load(root: str, dataset: str, split: str, codec: Any = None, *, paired: bool = False,
         shuffle: bool = False, seed: int = 0, buffer: int = 1000, resampled: bool = False,
         epoch_size: int | None = None, transform: Callable | None = None,
         sample_transform: Callable[[dict], Any] | None = None, image_format: str = "tensor",
         decoders: Mapping[str, Callable[[bytes], Any]] | None = None, decode_payload: bool = False,
         meta: bool = False, rank: int | None = None, world_size: int | None = None,
         cache_dir: str | None | bool = None, storage_options: Mapping[str, Any] | None = None,
         verify: bool = False,
         on_error: str | Callable[[str, Exception], None] = "raise",
         shards: Sequence[str] | None = None) -> "ShardDataset":
    """A torch ``IterableDataset`` over the shards of ``root/<dataset>/<split>/<tag>/``.

    ``codec``: a setting (``"jpeg:quality=5"``; ``None`` is the uncompressed reference set
    ``none``), a list with ``paired=True`` (each sample once with a view per setting, under
    ``sample["views"][tag]``), or ``{setting: weight}`` (a mixture: one setting per sample drawn
    from ``(seed, epoch, key)``).

    Samples are dicts: ``__key__``, the task's fields (``image`` as uint8 CHW tensor,
    ``label``, ``segmentation``, ...), ``bits`` and ``bpp``/``kbps``, and ``codec``.
    ``shuffle`` permutes shards and then samples through a ``buffer`` from ``seed`` and the
    epoch; without it every sample comes once per epoch in shard order. ``resampled`` draws
    shards with replacement, endlessly or ``epoch_size`` samples per rank and pass.
    ``transform`` gets the image (or audio), or every aligned input at once (views,
    segmentation as a ``tv_tensors.Mask``) so one torchvision v2 call crops them alike;
    ``sample_transform`` gets the whole dict. ``rank``/``world_size`` default to
    torch.distributed's when it is initialized. ``root`` may be any fsspec URL: shards are
    fetched once into ``cache_dir`` (``False`` streams them). ``verify`` re-hashes local shards
    against index.json. ``on_error``: ``raise``, ``skip`` or ``warn`` for a sample that does not
    decode, or a callable ``on_error(key, exc)`` called for it (the sample is skipped). ``shards``:
    read only these shard file names, whole and in the order given (no rank or worker split, no
    shuffle): the unit of work of ``mpq eval``. ``decoders`` adds entries to the safe decoder table (never for pickle-like members).
    """
    from .dataset import ShardDataset

    return ShardDataset(root, dataset, split, codec, paired=paired, shuffle=shuffle, seed=seed, buffer=buffer,
                        resampled=resampled, epoch_size=epoch_size, transform=transform,
                        sample_transform=sample_transform, image_format=image_format, decoders=decoders,
                        decode_payload=decode_payload, meta=meta, rank=rank, world_size=world_size,
                        cache_dir=cache_dir, storage_options=storage_options, verify=verify, on_error=on_error,
                        shards=shards)


def __getattr__(name: str) -> Any:
    if name in ("ShardDataset", "Loader"):
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(name)


__all__ = ["DECODERS", "Loader", "ShardDataset", "decoder_table", "hf_data_files", "hf_features", "load", "manifests"]

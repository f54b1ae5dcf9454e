"""After the store, streaming loaders for the shards into training and evaluation: torch datasets,
safe decoders, manifests as tables.

``load(root, dataset, split, codec=...)`` is the entry point; torch is imported only when a
dataset is built, so :func:`manifests` and :func:`hf_data_files` work without it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .decoders import DECODERS, decoder_table
from .detection import collate as detection_collate
from .options import LoadOptions
from .tables import hf_data_files, hf_features, manifests
from .train import TrainTransform
from .wds import wds_decoder, wds_sample_decoder

if TYPE_CHECKING:
    from .dataset import ShardDataset
    from .loader import Loader, train_loader  # noqa: F401 - resolved lazily by __getattr__


def load(root: str, dataset: str, split: str, codec: Any = None, options: LoadOptions | None = None,
         **kwargs: Any) -> "ShardDataset":
    """A torch ``IterableDataset`` over the shards of ``root/<dataset>/<split>/<tag>/``.

    ``codec``: a setting (``"jpeg:quality=5"``; ``None`` is the uncompressed reference set
    ``none``), a list with ``paired=True`` (each sample once with a view per setting, under
    ``sample["views"][tag]``), or ``{setting: weight}`` (a mixture: one setting per sample drawn
    from ``(seed, epoch, key)``). The other options are :class:`LoadOptions` fields, given as
    ``options=LoadOptions(...)`` or as keywords (keywords replace fields of ``options``).

    Samples are dicts: ``__key__``, the fields the set index's schema declares (``image`` as
    uint8 CHW tensor, ``label``, ``segmentation``, ...), ``bits`` and ``bpp``/``kbps``, and ``codec``.
    ``shuffle`` permutes shards and then samples through a ``buffer`` from ``seed`` and the
    epoch; without it every sample comes once per epoch in shard order. ``resampled`` draws
    shards with replacement, endlessly or ``epoch_size`` samples per rank and pass.
    ``transform`` gets the image (or audio), or every aligned input at once (views,
    segmentation as a ``tv_tensors.Mask``) so one torchvision v2 call crops them alike;
    ``sample_transform`` gets the whole dict. ``rank``/``world_size`` default to
    torch.distributed's when it is initialized. ``root`` may be any fsspec URL: shards are
    fetched once into ``cache_dir`` (``False`` streams them). ``verify`` re-hashes local shards
    against index.json. ``on_error``: ``raise``, ``skip``, ``warn`` or ``fn(key, exc)`` for a
    sample that does not decode (the sample is skipped after ``fn`` returns). ``decoders`` adds
    entries to the safe decoder table (never for pickle-like members). ``shards``: read only these
    shard files, whole and in the given order, with no shuffle and no rank or worker split.
    ``image_format`` (``tensor``, ``numpy``, ``pil``), ``decode_payload`` (decode a learned codec's
    payload rather than its stored decoded pixels), ``meta`` (the ``.json`` record as ``json``) and ``masks``
    (detection targets carry instance masks) say how samples are handed out. A detection set (``coco``, or ``hf`` with
    ``objects_column``) gives ``target``: torchvision's detection target (see :mod:`pipeline.loaders.detection`; batch
    with ``collate_fn=pipeline.loaders.detection_collate``). ``train`` (a :class:`TrainTransform`) is the opt-in
    training stage: each image becomes a random resized crop, flipped or not, drawn from ``(seed, epoch, key)``; batch
    with its ``collate`` or use :func:`train_loader`.
    """
    from .dataset import ShardDataset

    return ShardDataset(root, dataset, split, codec, options, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "ShardDataset":
        from .dataset import ShardDataset

        return ShardDataset
    if name == "coco_ground_truth":
        from .annotations import ground_truth

        return ground_truth
    if name in ("Loader", "train_loader"):
        from . import loader

        return getattr(loader, name)
    raise AttributeError(name)


__all__ = ["DECODERS", "LoadOptions", "Loader", "ShardDataset", "TrainTransform", "coco_ground_truth",
           "decoder_table", "detection_collate", "hf_data_files", "hf_features", "load", "manifests", "train_loader",
           "wds_decoder", "wds_sample_decoder"]

"""A detection set's annotation JSON rebuilt from its shards alone (no second copy of the dataset's JSON)."""
from __future__ import annotations

from typing import Any

from .detection import split_record


def ground_truth(root: str, dataset: str, split: str, codec: Any = None, field: str = "target",
                 **load_options: Any) -> dict[str, Any]:
    """The annotation JSON of a set rebuilt from its shards alone: ``images``, ``annotations`` (in shard order)
    and the ``categories`` (with ``info`` and ``licenses`` when the source kept them) of its set index."""
    from ..store.index import read_index
    from .dataset import ShardDataset
    from .storage import Storage

    index = read_index(Storage(root, cache_dir=False), dataset, split, codec)
    images: list[Any] = []
    anns_out: list[Any] = []
    for sample in ShardDataset(root, dataset, split, codec, image_format="numpy", **load_options):
        image, anns = split_record(sample[field]["coco"])
        images.append(image)
        anns_out.extend(anns)
    out = {k: index.source[k] for k in ("info", "licenses") if k in index.source}
    return {**out, "images": images, "annotations": anns_out, "categories": list(index.source.get("categories", []))}

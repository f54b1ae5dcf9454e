"""Object annotations (a ``detection`` field, such as COCO's ``.coco.json``) as torchvision detection targets.

A sample's member holds ``{"image": record, "annotations": [...]}`` exactly as the dataset's
JSON holds them. The loaders hand it out as the target torchvision's detection models take:
``boxes`` (N, 4) float32 in xyxy pixels (COCO's ``[x, y, w, h]`` plus the corner), ``labels``
(the dataset's category ids: torchvision's COCO detectors predict those ids, 1..90), ``iscrowd``,
``area``, ``image_id``, ``masks`` (N, H, W) uint8 when asked for (pycocotools rasterizes polygons
and RLE), and ``coco``: the record itself, untouched, from which :func:`ground_truth` rebuilds the
set's annotation JSON (:func:`pipeline.loaders.annotations.ground_truth`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import SampleError


def split_record(record: Any) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
    """(image record, annotations) of a detection member, checked to have that shape."""
    if not isinstance(record, Mapping) or not isinstance(record.get("image"), Mapping):
        raise SampleError("detection record lacks its image record")
    anns = record.get("annotations")
    if not isinstance(anns, list) or not all(isinstance(a, Mapping) for a in anns):
        raise SampleError("detection record's annotations are not a list of objects")
    return record["image"], anns


def instance_mask(segmentation: Any, height: int, width: int) -> Any:
    """One annotation's mask (H, W) uint8 from COCO polygons, uncompressed or compressed RLE (pycocotools)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: one or more parts, merged
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, Mapping) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(dict(segmentation), height, width)
    elif isinstance(segmentation, Mapping):
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise SampleError(f"segmentation of type {type(segmentation).__name__} is neither polygons nor RLE")
    return mask_utils.decode(rle)


def target(record: Any, image_format: str = "tensor", masks: bool = False) -> dict[str, Any]:
    """The detection target of one sample (numpy arrays for ``image_format="numpy"``, else tensors)."""
    import numpy as np

    image, anns = split_record(record)
    try:
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        out: dict[str, Any] = {
            "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32),
            "labels": np.array([a["category_id"] for a in anns], dtype=np.int64),
            "iscrowd": np.array([a.get("iscrowd", 0) for a in anns], dtype=np.int64),
            "area": np.array([a.get("area", 0.0) for a in anns], dtype=np.float32),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise SampleError(f"bad annotation: {type(exc).__name__}: {exc}") from None
    if masks:
        h, w = int(image["height"]), int(image["width"])
        out["masks"] = (np.stack([instance_mask(a.get("segmentation"), h, w) for a in anns]) if anns
                        else np.zeros((0, h, w), dtype=np.uint8))
    if image_format != "numpy":
        import torch

        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
    out["image_id"] = image.get("id")
    out["coco"] = record
    return out


def wrap(value: Mapping[str, Any], canvas: tuple[int, int]) -> dict[str, Any]:
    """A target whose boxes and masks torchvision v2 transforms move with the image (``canvas``: H, W)."""
    import torch
    from torchvision import tv_tensors

    out = dict(value)
    if isinstance(out.get("boxes"), torch.Tensor):
        out["boxes"] = tv_tensors.BoundingBoxes(out["boxes"], format="XYXY", canvas_size=canvas)
    if isinstance(out.get("masks"), torch.Tensor):
        out["masks"] = tv_tensors.Mask(out["masks"])
    return out


def unwrap(value: Mapping[str, Any]) -> dict[str, Any]:
    """Plain tensors again after a transform (collation and user code see ordinary tensors)."""
    import torch

    return {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) and type(v) is not torch.Tensor else v
            for k, v in value.items()}


def collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """``DataLoader(collate_fn=collate)``: each field as a list (images differ in size, targets in length).

    ``model(batch["image"], batch["target"])`` is what torchvision's detection models take in training
    (images as float tensors in [0, 1]: convert them in a transform).
    """
    if not batch:
        return {}
    return {k: [s[k] for s in batch] for k in batch[0]}


def drop_crowd(value: Mapping[str, Any]) -> dict[str, Any]:
    """A target without crowd regions and empty boxes, as torchvision's training recipes use (``coco`` kept)."""
    boxes = value["boxes"]
    keep = (value["iscrowd"] == 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {k: v[keep] if k in ("boxes", "labels", "iscrowd", "area", "masks") else v for k, v in value.items()}

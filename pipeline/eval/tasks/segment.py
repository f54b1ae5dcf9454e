"""Semantic segmentation (ADE20K convention): mIoU from the confusion summed over the whole set.

Annotation 0 is "other" and ignored; classes 1..150 are scored; model class c is label c + 1.
Each row keeps the sample's per-class intersection and union pixel counts, so the set's mIoU is
exactly recomputable from the rows (the mean of per-image IoUs is a different, biased figure).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from . import register_task
from .base import Task, as_numpy, counted_rows

NUM_CLASSES = 150  # scored labels 1..150; 0 is ignored


def confusion_counts(pred_labels: Any, annotation: Any, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """Per-class intersection and union (lists of ``num_classes``), correct and labelled pixel counts.

    ``pred_labels`` are labels (model class + 1); pixels whose annotation is 0 or above
    ``num_classes`` are ignored.
    """
    import numpy as np

    gt = np.asarray(annotation).astype(np.int64).ravel()
    pr = np.asarray(pred_labels).astype(np.int64).ravel()
    if gt.shape != pr.shape:
        raise ValueError(f"prediction has {pr.size} pixels, annotation {gt.size}")
    valid = (gt >= 1) & (gt <= num_classes)
    gt, pr = gt[valid], np.clip(pr[valid], 0, num_classes + 1)
    k = num_classes + 2
    conf = np.bincount(gt * k + pr, minlength=k * k).reshape(k, k)
    inter = np.diag(conf)[1:num_classes + 1]
    union = conf.sum(0)[1:num_classes + 1] + conf.sum(1)[1:num_classes + 1] - inter
    return {"intersection": inter.tolist(), "union": union.tolist(), "correct": int(inter.sum()),
            "labelled": int(valid.sum())}


def annotation(sample: Mapping[str, Any]) -> Any:
    """The sample's label map as an HxW array (a 3-channel or 1-channel PNG's first channel)."""
    seg = sample.get("segmentation")
    if seg is None:
        raise ValueError("no segmentation annotation")
    seg = as_numpy(seg)
    if seg.ndim == 3:
        seg = seg[..., 0] if seg.shape[-1] in (1, 3) else seg[0]
    return seg


@register_task
class Segment(Task):
    name = "segment"
    requires = ("image", "segmentation")
    default_model = None
    primary = "miou"
    definitions = {
        "miou": "mean over classes 1..150 with a non-zero union of IoU_c = sum(intersection_c) / sum(union_c), "
                "both summed over every counted sample of the set (annotation 0 ignored; model class c = label c+1); "
                "counted: ok samples, and failed or missing samples as if nothing were predicted (intersection 0, "
                "their labelled pixels in the union)",
        "pixel_accuracy": "sum of correctly labelled pixels / sum of pixels with annotation 1..150, over counted "
                          "samples (a failed or missing sample: none correct)",
    }

    @classmethod
    def columns(cls) -> list[tuple[str, Any]]:
        import pyarrow as pa

        return [("intersection", pa.list_(pa.int64())), ("union", pa.list_(pa.int64())),
                ("correct", pa.int64()), ("labelled", pa.int64())]

    def prepare(self, sample: Mapping[str, Any]) -> tuple[Any, Any]:
        seg = annotation(sample)
        image = as_numpy(sample["image"])
        if image.shape[:2] != seg.shape:
            raise ValueError(f"image {image.shape[:2]} and annotation {seg.shape} differ in size")
        return image, seg

    def run(self, model: Any, items: Sequence[tuple[Any, Any]]) -> list[dict[str, Any]]:
        classes = model.segment([im for im, _ in items])
        return [confusion_counts(c + 1, seg) for c, (_, seg) in zip(classes, items)]

    @classmethod
    def failure_row(cls, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Nothing predicted: every pixel gets label 0 ("other", never scored), so the intersection is 0
        for every class and the annotation's labelled pixels stay in the union."""
        import numpy as np

        seg = annotation(sample)
        return confusion_counts(np.zeros_like(seg), seg)

    @classmethod
    def aggregate(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import numpy as np

        good = counted_rows(rows, "union")
        if not good:
            return {"miou": None, "pixel_accuracy": None, "classes_scored": 0}
        inter = np.sum([np.asarray(r["intersection"], dtype=np.int64) for r in good], axis=0)
        union = np.sum([np.asarray(r["union"], dtype=np.int64) for r in good], axis=0)
        present = union > 0
        labelled = sum(int(r["labelled"]) for r in good)
        return {"miou": float(np.mean(inter[present] / union[present])) if present.any() else None,
                "pixel_accuracy": sum(int(r["correct"]) for r in good) / labelled if labelled else None,
                "classes_scored": int(present.sum())}

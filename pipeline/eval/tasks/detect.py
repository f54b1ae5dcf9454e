"""Object detection (COCO convention): AP and AR from ``pycocotools.COCOeval`` over the rows of a set.

Each row keeps the sample's ground truth exactly as its shard holds it (the ``.coco.json``
annotations, with the image's id and size) and every detection the model kept (``bbox`` as COCO
``[x, y, w, h]`` in pixels, ``scores``, ``category_ids``, ``masks`` as compressed RLE when the model
predicts masks), so the set's figures are recomputed from the rows alone by :meth:`Detect.aggregate`.
A failed or missing sample counts with its ground truth and no detections.
"""
from __future__ import annotations

import contextlib
import io
import json
from typing import Any, ClassVar, Mapping, Sequence

from . import register_task
from .base import OK, Task, as_numpy, counted_rows

#: COCOeval's ``stats`` in order (bbox and segm alike), as named in the figures
STATS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100", "ar_small",
         "ar_medium", "ar_large")
_AREAS = "areas: small < 32^2, medium 32^2..96^2, large > 96^2 pixels (the ground truth's own area)"


def _definitions() -> dict[str, str]:
    out = {
        "map": "COCOeval bbox AP: precision averaged over 101 recall points, IoU thresholds .50:.05:.95 and the "
               "categories with ground truth, at most 100 detections per image, over the counted rows (ok rows, "
               "and failed or missing samples as no detections); crowd regions are ignored matches",
        "ap50": "COCOeval bbox AP at IoU 0.50 (otherwise as map)",
        "ap75": "COCOeval bbox AP at IoU 0.75 (otherwise as map)",
        "ap_small": f"COCOeval bbox AP of ground truth of small area ({_AREAS})",
        "ap_medium": "COCOeval bbox AP of ground truth of medium area",
        "ap_large": "COCOeval bbox AP of ground truth of large area",
        "ar1": "COCOeval bbox recall averaged over IoU .50:.95 and categories, 1 detection per image",
        "ar10": "as ar1 with at most 10 detections per image",
        "ar100": "as ar1 with at most 100 detections per image",
        "ar_small": "ar100 of small ground truth", "ar_medium": "ar100 of medium ground truth",
        "ar_large": "ar100 of large ground truth",
        "images": "rows counted (images; an image without annotations counts its detections as false positives)",
    }
    for name in STATS:
        out[f"segm_{name}"] = (f"as {name}, with IoU between instance masks (COCOeval segm); None when the model "
                               "predicts no masks")
    return out


def _encode_masks(masks: Any) -> list[str]:
    """Instance masks (N, H, W) as compressed RLE counts (pycocotools), the rows' lossless mask form."""
    import numpy as np
    from pycocotools import mask as mask_utils

    arr = np.asarray(masks, dtype=np.uint8)
    if not len(arr):
        return []
    return [rle["counts"].decode("ascii") for rle in mask_utils.encode(np.asfortranarray(arr.transpose(1, 2, 0)))]


@register_task
class Detect(Task):
    name = "detect"
    requires = ("image", "target")
    default_model = None
    primary = "map"
    definitions = _definitions()
    #: model label name (lower case) -> dataset category id, for models that name their labels (hf)
    categories: ClassVar[Mapping[str, int]] = {}

    @classmethod
    def bind(cls, config: Any) -> type[Task]:
        """The task with the set's category table, to map a model's label names onto the dataset's ids."""
        from ..sets import find_sets

        table: list[Any] = []
        for s in find_sets(config.out, config.dataset, config.split, config.codecs):
            table = list((json.loads((s.folder / "index.json").read_text()).get("source") or {})
                         .get("categories") or [])
            break
        names = {str(c["name"]).strip().lower(): int(c["id"]) for c in table if "name" in c and "id" in c}
        return type(cls.__name__, (cls,), {"categories": names})

    @classmethod
    def columns(cls) -> list[tuple[str, Any]]:
        import pyarrow as pa

        return [("image_id", pa.int64()), ("width", pa.int64()), ("height", pa.int64()),
                ("ground_truth", pa.string()), ("bbox", pa.list_(pa.list_(pa.float64()))),
                ("scores", pa.list_(pa.float64())), ("category_ids", pa.list_(pa.int64())),
                ("masks", pa.list_(pa.string())), ("unmapped", pa.int64())]

    @staticmethod
    def truth(record: Mapping[str, Any]) -> dict[str, Any]:
        """The ground-truth columns of a sample's detection record (annotations kept as exact JSON text)."""
        image = record["image"]
        return {"image_id": int(image["id"]), "width": int(image["width"]), "height": int(image["height"]),
                "ground_truth": json.dumps(record["annotations"], separators=(",", ":"), ensure_ascii=False)}

    @classmethod
    def failure_row(cls, sample: Mapping[str, Any]) -> dict[str, Any] | None:
        """A failed or missing sample: its ground truth (from the reference set's sample), no detection."""
        return {**cls.truth(sample["target"]["coco"]), "bbox": [], "scores": [], "category_ids": [], "masks": None,
                "unmapped": 0}

    def prepare(self, sample: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        target = sample.get("target")
        if not isinstance(target, Mapping) or "coco" not in target:
            raise ValueError("no detection annotation")
        truth = self.truth(target["coco"])
        image = as_numpy(sample["image"])
        if image.shape[:2] != (truth["height"], truth["width"]):
            raise ValueError(f"image {image.shape[:2]} is not the annotated {truth['height']}x{truth['width']}")
        return image, truth

    def run(self, model: Any, items: Sequence[tuple[Any, dict[str, Any]]]) -> list[dict[str, Any]]:
        import numpy as np

        outs = model.detect([im for im, _ in items])
        names = getattr(model, "label_names", None)  # None: the model predicts the dataset's category ids
        rows = []
        for out, (_, truth) in zip(outs, items):
            labels = np.asarray(out["labels"]).astype(np.int64).reshape(-1)
            if names is None:
                cats = labels
            else:
                cats = np.array([self.categories.get(str(names.get(int(k), "")).strip().lower(), -1) for k in labels],
                                dtype=np.int64)
            keep = cats >= 0
            boxes = np.asarray(out["boxes"], dtype=np.float64).reshape(-1, 4)[keep]
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            masks = out.get("masks")
            rows.append({**truth, "bbox": xywh.tolist(),
                         "scores": np.asarray(out["scores"], dtype=np.float64).reshape(-1)[keep].tolist(),
                         "category_ids": cats[keep].tolist(),
                         "masks": None if masks is None else _encode_masks(np.asarray(masks)[keep]),
                         "unmapped": int((~keep).sum())})
        return rows

    @classmethod
    def aggregate(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """COCOeval over the rows that carry ground truth (ok rows; failed or missing ones count as no detections)."""
        counted = counted_rows(rows, "ground_truth")
        out: dict[str, Any] = {"images": len(counted)}
        with_masks = any(r.get("status") == OK and r.get("masks") is not None for r in counted)
        for prefix, iou in (("", "bbox"), ("segm_", "segm")):
            stats = coco_stats(counted, iou) if counted and (iou == "bbox" or with_masks) else None
            for i, name in enumerate(STATS):
                out[prefix + name] = None if stats is None or stats[i] < 0 else float(stats[i])
        return out


def coco_datasets(rows: Sequence[Mapping[str, Any]], iou: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(ground-truth dataset, detections) in pycocotools' formats, from rows alone.

    Ground-truth annotations are renumbered 1..N (pycocotools treats id 0 as "unmatched"); categories are
    those of the ground truth and detections (a category without ground truth is left out of every mean
    by COCOeval, so the dataset's full table gives the same figures). Detections of rows whose sample
    failed are not counted.
    """
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    cats: set[int] = set()
    seen: set[int] = set()
    for r in rows:
        image_id = int(r["image_id"])
        if image_id in seen:
            raise ValueError(f"image id {image_id} appears in two rows")
        seen.add(image_id)
        images.append({"id": image_id, "width": int(r["width"]), "height": int(r["height"])})
        for a in json.loads(r["ground_truth"]):
            anns.append({**a, "image_id": image_id, "id": len(anns) + 1})
            cats.add(int(a["category_id"]))
        if r.get("status") != OK:
            continue
        masks = r.get("masks") or []
        for j, (box, score, cat) in enumerate(zip(r["bbox"], r["scores"], r["category_ids"])):
            det: dict[str, Any] = {"image_id": image_id, "category_id": int(cat), "score": float(score)}
            if iou == "bbox":
                det["bbox"] = list(box)
            else:
                det["segmentation"] = {"size": [int(r["height"]), int(r["width"])], "counts": masks[j]}
            dets.append(det)
            cats.add(int(cat))
    return {"images": images, "annotations": anns, "categories": [{"id": c} for c in sorted(cats)]}, dets


def coco_stats(rows: Sequence[Mapping[str, Any]], iou: str) -> list[float]:
    """COCOeval's 12 summary numbers (-1 where undefined) for ``iou`` ``bbox`` or ``segm``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth, dets = coco_datasets(rows, iou)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        gt = COCO()
        gt.dataset = truth
        gt.createIndex()
        if dets:
            dt = gt.loadRes(dets)
        else:  # loadRes refuses an empty list: no detection at all is an empty result set
            dt = COCO()
            dt.dataset = {"images": truth["images"], "categories": truth["categories"], "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iou)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(x) for x in ev.stats]

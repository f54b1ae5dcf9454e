"""Image classification: top-1, top-5 and cross-entropy per sample, fractions and mean over the set."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from . import register_task
from .base import Task, as_numpy, counted_rows, ok_rows


@register_task
class Classify(Task):
    name = "classify"
    requires = ("image", "label")
    default_model = None
    primary = "top1"
    definitions = {
        "top1": "fraction of counted samples whose highest-scoring class is the label (mean of correct1); "
                "counted: ok samples, and failed or missing samples, which count as wrong",
        "top5": "fraction of counted samples whose label is among the 5 highest-scoring classes (mean of "
                "correct5); failed or missing samples count as wrong",
        "loss": "mean over ok samples of the cross-entropy of the model's logits against the label (nats); "
                "a failed sample has no loss and is not in this mean",
    }

    @classmethod
    def columns(cls) -> list[tuple[str, Any]]:
        import pyarrow as pa

        return [("label", pa.int64()), ("pred", pa.int64()), ("top5", pa.list_(pa.int64())),
                ("correct1", pa.bool_()), ("correct5", pa.bool_()), ("loss", pa.float64())]

    def prepare(self, sample: Mapping[str, Any]) -> tuple[Any, int]:
        label = sample.get("label")
        if label is None:
            raise ValueError("no label")
        image = as_numpy(sample["image"])
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
        return image, int(label)

    def run(self, model: Any, items: Sequence[tuple[Any, int]]) -> list[dict[str, Any]]:
        import torch
        import torch.nn.functional as F

        logits = model.logits([im for im, _ in items]).float().cpu()
        labels = torch.tensor([lab for _, lab in items], dtype=torch.long)
        if int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
            raise ValueError(f"a label is outside the model's {logits.shape[1]} classes")
        loss = F.cross_entropy(logits, labels, reduction="none")
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        rows = []
        for i, lab in enumerate(labels.tolist()):
            t5 = top[i].tolist()
            rows.append({"label": lab, "pred": t5[0], "top5": t5, "correct1": t5[0] == lab,
                         "correct5": lab in t5, "loss": float(loss[i])})
        return rows

    @classmethod
    def failure_row(cls, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Wrong for top-1 and top-5: the label, no prediction, no loss."""
        label = sample.get("label")
        if label is None:
            raise ValueError("the reference sample has no label")
        return {"label": int(label), "pred": None, "top5": None, "correct1": False, "correct5": False, "loss": None}

    @classmethod
    def aggregate(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        counted = counted_rows(rows, "correct1")
        losses = [float(r["loss"]) for r in ok_rows(rows)]
        n = len(counted)
        return {"top1": sum(bool(r["correct1"]) for r in counted) / n if n else None,
                "top5": sum(bool(r["correct5"]) for r in counted) / n if n else None,
                "loss": sum(losses) / len(losses) if losses else None}

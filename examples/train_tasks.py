"""The training recipes of the examples, one per task: the transform, the batches, the model, the loss.

Each returns a :class:`train_common.Recipe`; the loop, DDP, checkpoints and resume are in
``train_common.py``. The output of every recipe is a plain state dict that ``mpq eval --weights``
loads into the same architecture:

- ``classify``: ``torchvision:NAME`` (``torchvision.models.get_model(NAME, num_classes=N)``);
- ``segment``: ``torchvision:NAME`` (a torchvision segmentation model with ``num_classes=150``,
  class c = ADE20K label c + 1, label 0 ignored) or ``hf:NAME_OR_FOLDER``
  (``AutoModelForSemanticSegmentation``, e.g. SegFormer);
- ``detect``: ``torchvision:NAME`` (a torchvision detector; labels are COCO category ids).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from train_common import MEAN, STD, Recipe, make_loader

IGNORE = -1  # target value of pixels that are not scored (ADE20K label 0, "other")


def load_state(path: str) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------- classify


def classify_collate(samples: list[dict[str, Any]]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(keys, images, labels): only what training needs, so records of any shape batch."""
    keys = [s["__key__"] for s in samples]
    images = torch.stack([s["image"] for s in samples])
    labels = torch.tensor([int(s["label"]) for s in samples], dtype=torch.long)
    return keys, images, labels


def classify_model(args: argparse.Namespace) -> torch.nn.Module:
    from torchvision.models import get_model

    kind, _, name = args.model.partition(":")
    if kind != "torchvision":
        raise SystemExit(f"--model {args.model}: classification trains torchvision:NAME")
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    if getattr(args, "torchvision_weights", None):
        if args.num_classes != 1000:
            raise SystemExit("--torchvision-weights are 1000-class ImageNet weights; use --weights for others")
        model = get_model(name, weights=args.torchvision_weights)
    else:
        model = get_model(name, weights=None, num_classes=args.num_classes)
    if getattr(args, "weights", None):
        model.load_state_dict(load_state(args.weights))
    return model


def classify_recipe(args: argparse.Namespace, checkpoint_format: str) -> Recipe:
    """Random resized crops and flips (or resize and centre crop), cross-entropy with label smoothing."""
    from torchvision.transforms import v2

    crop = ([v2.RandomResizedCrop(args.size, antialias=True), v2.RandomHorizontalFlip()] if args.augment
            else [v2.Resize(args.size, antialias=True), v2.CenterCrop(args.size)])
    transform = v2.Compose([*crop, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    loader = make_loader(args, args.dataset, args.split, transform, classify_collate)
    ce = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    def loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ce(model(images), labels)

    return Recipe(loader, classify_model(args), loss, checkpoint_format)


# ----------------------------------------------------------------------------------------- segment


class SegmentCollate:
    """(keys, images, targets): targets are model classes (label - 1), IGNORE where the label is 0
    or above ``num_classes``, as ``mpq eval --task segment`` scores them."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, samples: list[dict[str, Any]]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        keys = [s["__key__"] for s in samples]
        images = torch.stack([s["image"] for s in samples])
        target = torch.stack([s["segmentation"] for s in samples]).long() - 1
        target[(target < 0) | (target >= self.num_classes)] = IGNORE
        return keys, images, target


def segment_transform(size: int, augment: bool, mean: Any, std: Any) -> Any:
    """Image and mask together (the loader hands both to one call): random rescale of the shorter
    side to 0.5-2x ``size``, a ``size`` crop (padding with ignored pixels), flip; or a plain resize."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    geometry = ([v2.RandomResize(size // 2, size * 2, antialias=True),
                 v2.RandomCrop(size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 0}),
                 v2.RandomHorizontalFlip()] if augment else [v2.Resize((size, size), antialias=True)])
    return v2.Compose([*geometry, v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                       v2.Normalize(mean, std)])


def segment_model(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, Any]:
    """The model with its input statistics: ``hf:`` from its folder or the Hugging Face cache,
    ``torchvision:`` built with ``num_classes`` (``--backbone-weights`` for an ImageNet backbone)."""
    kind, _, name = args.model.partition(":")
    torch.manual_seed(args.seed)
    if kind == "hf":
        import transformers

        local = bool(args.offline) or Path(name).is_dir()
        net = transformers.AutoModelForSemanticSegmentation.from_pretrained(name, num_labels=args.num_classes,
                                                                            local_files_only=local)
        proc = transformers.AutoImageProcessor.from_pretrained(name, local_files_only=local)
        mean, std = tuple(getattr(proc, "image_mean", MEAN)), tuple(getattr(proc, "image_std", STD))
    elif kind == "torchvision":
        from torchvision.models import get_model

        extra = {"aux_loss": True} if args.aux_loss else {}
        net = get_model(name, weights=None, weights_backbone=args.backbone_weights, num_classes=args.num_classes,
                        **extra)
        mean, std = MEAN, STD
    else:
        raise SystemExit(f"--model {args.model}: segmentation trains torchvision:NAME or hf:NAME")
    if args.weights:
        net.load_state_dict(load_state(args.weights))
    return net, mean, std


def segment_recipe(args: argparse.Namespace, checkpoint_format: str) -> Recipe:
    """Per-pixel cross-entropy at the label map's resolution (logits upsampled bilinearly, as
    ``mpq eval`` does), plus torchvision's auxiliary head at weight 0.5 when the model has one."""
    import torch.nn.functional as F

    net, mean, std = segment_model(args)
    loader = make_loader(args, args.dataset, args.split, segment_transform(args.size, args.augment, mean, std),
                         SegmentCollate(args.num_classes))
    ce = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    hf = args.model.startswith("hf:")

    def loss(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if hf:
            logits = model(pixel_values=images).logits
            return ce(F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False), target)
        out = model(images)
        total = ce(out["out"], target)
        return total + 0.5 * ce(out["aux"], target) if "aux" in out else total

    return Recipe(loader, net, loss, checkpoint_format)


# ------------------------------------------------------------------------------------------ detect


class DetectCollate:
    """(keys, images, targets) as torchvision's detectors take them in training: lists, since images
    differ in size; crowd regions and empty boxes dropped (torchvision's recipe), masks kept when loaded."""

    def __call__(self, samples: list[dict[str, Any]]) -> tuple[list[str], list[torch.Tensor], list[dict[str, Any]]]:
        from pipeline.loaders.detection import drop_crowd

        keys = [s["__key__"] for s in samples]
        targets = [{k: v for k, v in drop_crowd(s["target"]).items() if k in ("boxes", "labels", "masks")}
                   for s in samples]
        return keys, [s["image"] for s in samples], targets


def detect_model(args: argparse.Namespace) -> torch.nn.Module:
    """A torchvision detector: torchvision's COCO weights (``--torchvision-weights DEFAULT``), a state
    dict (``--weights``), or random weights with 91 outputs (COCO's category ids 1..90 and background)."""
    from torchvision.models import get_model

    kind, _, name = args.model.partition(":")
    if kind != "torchvision":
        raise SystemExit(f"--model {args.model}: detection trains torchvision:NAME")
    torch.manual_seed(args.seed)
    if args.torchvision_weights:
        net = get_model(name, weights=args.torchvision_weights)
    else:
        net = get_model(name, weights=None, weights_backbone=args.backbone_weights, num_classes=args.num_classes)
    if args.weights:
        net.load_state_dict(load_state(args.weights))
    return net


def detect_recipe(args: argparse.Namespace, checkpoint_format: str) -> Recipe:
    """Flips that move the boxes (and masks) with the image, then floats in [0, 1]: the detectors
    resize and normalize inside; the loss is the sum of the model's own losses."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    net = detect_model(args)
    masks = name_has_masks(args.model)
    flip = [v2.RandomHorizontalFlip()] if args.augment else []
    transform = v2.Compose([*flip, v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)])
    loader = make_loader(args, args.dataset, args.split, transform, DetectCollate(), masks=masks)

    def loss(model: torch.nn.Module, images: list[torch.Tensor], targets: list[dict[str, Any]]) -> torch.Tensor:
        return sum(model(images, targets).values())

    return Recipe(loader, net, loss, checkpoint_format)


def name_has_masks(model: str) -> bool:
    """Mask R-CNN trains on instance masks as well: the loader rasterizes them only then."""
    return model.partition(":")[2].startswith("maskrcnn")

"""The opt-in training stage: ImageNet's standard augmentation done where the loader decodes.

``load(..., train=TrainTransform())`` hands out each image as the uint8 ``(3, size, size)``
tensor of a random resized crop, flipped or not; :meth:`TrainTransform.collate` batches those
into one normalized float tensor (optionally ``channels_last``) and the label, and
:func:`~pipeline.loaders.loader.train_loader` wires both into a resumable ``Loader`` whose
batches land in pinned memory when a GPU is there. Evaluation and the metrics never use it (a
loader reading listed shards, as ``mpq eval`` does, refuses it).

Exactness where it is promised:

- the crop is drawn by torchvision's ``RandomResizedCrop`` algorithm (same scale and ratio
  sampling, ten tries, then the central fallback) and the flip as ``RandomHorizontalFlip``, from a
  torch generator seeded by ``(seed, epoch, key)``: a resumed run, any worker, any rank sees the
  same crop of a sample in a given epoch;
- the crop is resized with torchvision's own ``resized_crop`` (bilinear, antialiased) on the
  decoded uint8 pixels, and normalized as ``ToDtype(float32, scale=True)`` then ``Normalize`` do:
  for one seed the output equals torchvision's pipeline under ``torch.manual_seed`` of that
  sample's seed (tested).

``draft=True`` (off by default) is an approximation: a JPEG payload is decoded at a reduced DCT
scale (1/2, 1/4 or 1/8, Pillow's ``draft``) when the crop still has at least ``size`` pixels each
way at that scale, and the crop is resized by Pillow from there. Its pixels differ from the
exact path's (the DCT scaling is not a bilinear filter), so use it only where that is acceptable.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from ..errors import ConfigError
from .decoders import _check_size, _jpeg_size

#: ImageNet's channel statistics (torchvision's reference recipe)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Crop(NamedTuple):
    """A random resized crop's box (top, left, height, width in source pixels) and whether it is flipped."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def sample_seed(seed: int, epoch: int, key: str) -> int:
    """The 63-bit seed of one sample's draws: the same for ``(seed, epoch, key)`` in any process."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{int(epoch)}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclass(frozen=True)
class TrainTransform:
    """Random resized crop to ``size``, horizontal flip with probability ``flip``, normalized floats.

    ``scale`` and ``ratio`` are ``RandomResizedCrop``'s. ``channels_last`` batches in that memory
    format; ``draft`` decodes JPEG payloads at a reduced DCT scale (an approximation, see the module).
    """

    size: int | tuple[int, int] = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels_last: bool = False
    draft: bool = False

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(int(s) for s in self.size)
        if len(size) != 2 or min(size) < 1:
            raise ConfigError(f"TrainTransform: size must be a positive int or (height, width), not {self.size!r}")
        object.__setattr__(self, "size", size)
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"TrainTransform: scale {self.scale} must lie in (0, 1] and ratio {self.ratio} be "
                              f"positive, each (low, high)")
        if not 0 <= self.flip <= 1:
            raise ConfigError(f"TrainTransform: flip is a probability, not {self.flip}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(self.std):
            raise ConfigError("TrainTransform: mean and std take three values (RGB), std none zero")

    @property
    def out_size(self) -> tuple[int, int]:
        return self.size  # type: ignore[return-value]  # normalized to (height, width) in __post_init__

    # ------------------------------------------------------------------ the draws

    def crop(self, height: int, width: int, seed: int) -> Crop:
        """``RandomResizedCrop.make_params`` then ``RandomHorizontalFlip``'s draw, from a generator at ``seed``."""
        import torch

        g = torch.Generator().manual_seed(seed)
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=g).item()
            aspect = torch.exp(torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=g)).item()
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
                j = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
                break
        else:  # the central fallback
            in_ratio = width / height
            if in_ratio < min(self.ratio):
                w, h = width, int(round(width / min(self.ratio)))
            elif in_ratio > max(self.ratio):
                w, h = int(round(height * max(self.ratio))), height
            else:
                w, h = width, height
            i, j = (height - h) // 2, (width - w) // 2
        flipped = bool(torch.rand(1, generator=g).item() < self.flip)
        return Crop(i, j, h, w, flipped)

    # ------------------------------------------------------------------ pixels

    def apply(self, rgb: np.ndarray, crop: Crop) -> Any:
        """Decoded RGB uint8 (H, W, 3) -> the crop resized to ``size``, flipped as drawn: uint8 (3, h, w)."""
        import torch
        from torchvision.transforms.v2 import functional as F

        chw = torch.from_numpy(np.asarray(rgb)).permute(2, 0, 1)
        out = F.resized_crop(chw, crop.top, crop.left, crop.height, crop.width, list(self.out_size),
                             interpolation=F.InterpolationMode.BILINEAR, antialias=True)
        return out.flip(-1) if crop.flip else out

    def draft_factor(self, crop: Crop) -> int:
        """The largest DCT reduction (1, 2, 4, 8) that leaves the crop at least ``size`` pixels each way."""
        h, w = self.out_size
        for factor in (8, 4, 2):
            if crop.height >= factor * h and crop.width >= factor * w:
                return factor
        return 1

    def apply_draft(self, data: bytes, crop: Crop) -> Any:
        """A JPEG payload decoded at the crop's reduced DCT scale, then cropped and resized by Pillow."""
        import torch
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            _check_size(width, height)
            factor = self.draft_factor(crop)
            img.draft("RGB", (-(-width // factor), -(-height // factor)))
            img.load()
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            sx, sy = rgb.size[0] / width, rgb.size[1] / height  # the scale Pillow's draft chose
            box = (crop.left * sx, crop.top * sy, (crop.left + crop.width) * sx, (crop.top + crop.height) * sy)
            h, w = self.out_size
            out = rgb.resize((w, h), Image.Resampling.BILINEAR, box=box)
        if crop.flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1)

    # ------------------------------------------------------------------ batches

    def normalize(self, images: Any) -> Any:
        """uint8 (3, h, w) images (a sequence or an (N, 3, h, w) tensor) -> one float32 batch, as
        ``ToDtype(float32, scale=True)`` then ``Normalize`` compute it."""
        import torch

        h, w = self.out_size
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty((len(images), 3, h, w), dtype=torch.float32).contiguous(memory_format=fmt)
        mean, std = self._stats()
        for n, image in enumerate(images):
            if tuple(image.shape) != (3, h, w):
                raise ValueError(f"image {n} of the batch is {tuple(image.shape)}, not (3, {h}, {w})")
            _normalize_into(out[n], image, mean, std)
        return out

    def _stats(self) -> tuple[Any, Any]:
        import torch

        return (torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1),
                torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1))

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Samples of the training stage -> ``image`` (normalized float batch), ``label``, ``__key__`` and
        the other values as lists. DataLoader's ``pin_memory`` moves the batch into pinned memory."""
        import torch

        if not samples:
            raise ValueError("an empty batch")
        out: dict[str, Any] = {"image": self.normalize([s["image"] for s in samples])}
        for name in samples[0]:
            if name == "image":
                continue
            values = [s.get(name) for s in samples]
            out[name] = torch.tensor(values) if name == "label" and None not in values else values
        return out


def _normalize_into(out: Any, image: Any, mean: Any, std: Any) -> None:
    """One image's uint8 (3, h, w) into its float32 slot of the batch, with torchvision's operations in
    their order (hence its values bit for bit). Done per image, so that the four passes run over
    0.6 MB still in cache rather than over the whole batch: about 5x faster than per batch."""
    out.copy_(image).mul_(1.0 / 255).sub_(mean).div_(std)


class TrainStage:
    """The training stage of one loader: decodes a sample's payload into its crop, seeded per sample."""

    def __init__(self, transform: TrainTransform, seed: int):
        self.transform, self.seed = transform, int(seed)

    def payload(self, key: str, epoch: int) -> Callable[..., Any]:
        """The payload hook of :class:`~pipeline.loaders.decode.ViewDecoder` for this sample."""
        seed = sample_seed(self.seed, epoch, key)
        t = self.transform

        def decode(fn: Callable[[bytes], Any], data: bytes, *, ext: str) -> Any:
            size = _jpeg_size(data) if t.draft and ext in ("jpg", "jpeg") else None
            if size is not None:  # draft: only where the crop allows a reduced scale; else the exact path
                crop = t.crop(size[1], size[0], seed)
                if t.draft_factor(crop) > 1:
                    return t.apply_draft(data, crop)
            rgb = fn(data)
            if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
                raise ConfigError("train= takes image sets: the payload is not an RGB image")
            return t.apply(rgb, t.crop(rgb.shape[0], rgb.shape[1], seed))

        return decode


"""LPIPS (``lpips`` package) and DISTS (``DISTS_pytorch`` package) on 8-bit RGB pixels.

Inputs are uint8 ``(H, W, 3)`` arrays, reference and test of the same size; anything else is
refused, because the classic mistake is feeding 0-255 floats where LPIPS expects [-1, 1] (the
MPQ study did, which makes its LPIPS figures meaningless). Pairs of the same size are scored in
batches of ``batch_size``; no image is resized, except by DISTS as its authors prepare images.

- LPIPS v0.1 (Zhang et al. 2018): pixels scaled ``x / 127.5 - 1``; the linear heads are the ones
  shipped inside the ``lpips`` package, the backbone (AlexNet, VGG16 or SqueezeNet 1.1) is
  torchvision's ImageNet checkpoint from its cache.
- DISTS (Ding et al. 2020), the authors' ``DISTS_pytorch`` implementation: pixels scaled to
  [0, 1]; its alpha/beta weights ship inside that package, the VGG16 backbone is torchvision's
  checkpoint from its cache. (``piq.DISTS`` downloads its weights from GitHub at every new
  machine, so it cannot run offline.)
  ``dists`` prepares images as the authors do (``DISTS_pytorch.prepare_image(resize=True)``): when the
  shorter side is over 256 pixels, reference and test are each resized (torchvision's ``resize(img,
  256)`` on the PIL image: bilinear with Pillow's antialiasing, shorter side 256, longer side
  ``int(256 * long / short)``) before scoring; ``dists-full`` (column ``dists_full``) scores them at full size.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from .base import DeepMetric, WeightsFile, check_pairs, register, resolve

_BACKBONES = {"alex": ("alexnet", "AlexNet_Weights"), "vgg": ("vgg16", "VGG16_Weights"),
              "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights")}
_dists_lock = threading.Lock()


def backbone_file(net: str) -> WeightsFile:
    """torchvision's ImageNet checkpoint for an LPIPS/DISTS backbone (file name from torchvision itself)."""
    import torchvision.models as tvm

    arch, enum = _BACKBONES[net]
    url = getattr(tvm, enum).IMAGENET1K_V1.url
    return WeightsFile(url.rsplit("/", 1)[-1], url, f"{arch} backbone")


def backbone_state(net: str, path: str | Path) -> dict[str, Any]:
    """The checkpoint's tensors (never unpickled objects), checked against torchvision's architecture."""
    import torchvision.models as tvm

    from ...codecs.weights import load_state_dict

    state = load_state_dict(path)
    getattr(tvm, _BACKBONES[net][0])(weights=None).load_state_dict(state)  # raises on a wrong file
    return state


def load_features(module: Any, state: dict[str, Any]) -> None:
    """Copy torchvision's ``features.I.*`` tensors into a network holding layer I as ``<slice>.I.*``.

    LPIPS and DISTS both cut torchvision's ``features`` into slices that keep the layer index as
    the module name; layers they add themselves (DISTS' L2 pooling) have no counterpart and stay.
    """
    import torch

    own = module.state_dict()
    used = set()
    with torch.no_grad():
        for key, tensor in own.items():
            _, index, rest = key.split(".", 2)
            src = f"features.{index}.{rest}"
            if src in state:
                tensor.copy_(state[src])
                used.add(src)
    missing = sorted(k for k in state if k.startswith("features.") and k not in used)
    if missing:
        raise ValueError(f"backbone tensors not used: {missing[:3]}")


def same_size_batches(refs: Sequence[np.ndarray], tests: Sequence[np.ndarray],
                      batch_size: int) -> Iterator[list[int]]:
    """Indices of pairs grouped by image size, in chunks of ``batch_size`` (one tensor per chunk)."""
    check_pairs(refs, tests)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (r, t) in enumerate(zip(refs, tests)):
        for x in (r, t):
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
                got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
                raise ValueError(f"deep image metrics take uint8 (H, W, 3) pixels, got {got} (0-255 floats "
                                 f"are refused: they would be scored as out-of-range inputs)")
        if r.shape != t.shape:
            raise ValueError(f"pair {i}: reference {r.shape} and test {t.shape} differ in size")
        groups.setdefault(r.shape, []).append(i)
    for idx in groups.values():
        for k in range(0, len(idx), batch_size):
            yield idx[k: k + batch_size]


def to_tensor(images: Sequence[np.ndarray], device: str, low: float, high: float):
    """uint8 (H, W, 3) images -> float32 (N, 3, H, W) on ``device``, 0 -> ``low``, 255 -> ``high``."""
    import torch

    x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float()
    return x * ((high - low) / 255.0) + low


class _ImageMetric(DeepMetric):
    modality: ClassVar[str] = "image"
    low: ClassVar[float] = 0.0
    high: ClassVar[float] = 1.0
    min_side: ClassVar[int] = 1  # smaller images are too small for the network's pooling: NaN (as MS-SSIM)
    batch_size: int = 16

    def distances(self, refs: Sequence[np.ndarray], tests: Sequence[np.ndarray], *,
                  rate: int | None = None) -> list[float]:
        """One distance per (reference, test) pair of uint8 (H, W, 3) images, batched by size.

        Images whose shorter side is below ``min_side`` get NaN.
        """
        import torch

        out = [float("nan")] * len(refs)
        for idx in same_size_batches(refs, tests, self.batch_size):
            if min(refs[idx[0]].shape[:2]) < self.min_side:
                continue
            a = to_tensor([refs[i] for i in idx], self.device, self.low, self.high)
            b = to_tensor([tests[i] for i in idx], self.device, self.low, self.high)
            with torch.inference_mode():
                d = self.forward(a, b).reshape(-1).double().cpu().numpy()
            for i, v in zip(idx, d):
                out[i] = float(v)
        return out

    def forward(self, a: Any, b: Any) -> Any:
        return self.model(a, b)


class LPIPS(_ImageMetric):
    """LPIPS v0.1 with one backbone; inputs in [-1, 1]."""

    net: ClassVar[str]
    library = "lpips"
    low, high = -1.0, 1.0

    @classmethod
    def weights_files(cls) -> list[WeightsFile]:
        return [backbone_file(cls.net)]

    @classmethod
    def from_backbone(cls, state: dict[str, Any] | None, device: str = "cpu") -> "LPIPS":
        """The shipped linear heads on a backbone from ``state`` (None: random, for plumbing tests)."""
        import lpips

        with warnings.catch_warnings():  # lpips calls torchvision with its deprecated pretrained= argument
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(pretrained=True, net=cls.net, pnet_rand=True, verbose=False)
        if state is not None:
            load_features(model.net, state)
        return cls(model.eval().to(device), device)

    @classmethod
    def load(cls, device: str = "cpu", weights_dir: str | Path | None = None, offline: bool = False) -> "LPIPS":
        (path,) = resolve(cls.weights_files(), weights_dir, offline)
        return cls.from_backbone(backbone_state(cls.net, path), device)


@register
class LPIPSAlex(LPIPS):
    name, column, net = "lpips:alex", "lpips_alex", "alex"
    min_side = 31  # found by trying: smaller inputs pool to nothing


@register
class LPIPSVgg(LPIPS):
    name, column, net = "lpips:vgg", "lpips_vgg", "vgg"
    min_side = 16  # found by trying: smaller inputs pool to nothing


@register
class LPIPSSqueeze(LPIPS):
    name, column, net = "lpips:squeeze", "lpips_squeeze", "squeeze"
    min_side = 17  # found by trying: smaller inputs pool to nothing


DISTS_SIDE = 256  # the authors' preparation: shorter side resized to this when larger


def dists_prepare(image: np.ndarray, side: int = DISTS_SIDE) -> np.ndarray:
    """The authors' ``prepare_image(resize=True)``: shorter side to ``side`` when larger (PIL, bilinear)."""
    h, w = image.shape[:2]
    if min(h, w) <= side:
        return image
    from PIL import Image

    if w <= h:
        size = (side, int(side * h / w))
    else:
        size = (int(side * w / h), side)
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


@register
class DISTS(_ImageMetric):
    """DISTS with the authors' weights (``DISTS_pytorch``); inputs in [0, 1]; 0 for identical images.

    Images are prepared as the authors do (shorter side to 256 when larger, see :func:`dists_prepare`).
    """

    name, column, library = "dists", "dists", "DISTS_pytorch"
    batch_size = 8
    resize: ClassVar[bool] = True

    def distances(self, refs: Sequence[np.ndarray], tests: Sequence[np.ndarray], *,
                  rate: int | None = None) -> list[float]:
        if self.resize:  # a bad input (type, size mismatch) is refused by the base on the original arrays
            check_pairs(refs, tests)
            ok = all(isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3 for x in (*refs, *tests))
            if ok and all(r.shape == t.shape for r, t in zip(refs, tests)):
                refs, tests = [dists_prepare(r) for r in refs], [dists_prepare(t) for t in tests]
        return super().distances(refs, tests, rate=rate)

    @classmethod
    def weights_files(cls) -> list[WeightsFile]:
        return [backbone_file("vgg")]

    @classmethod
    def from_backbone(cls, state: dict[str, Any] | None, device: str = "cpu") -> "DISTS":
        """The package's alpha/beta on a VGG16 from ``state`` (None: random backbone)."""
        import types

        import torch
        import torchvision.models as tvm
        from DISTS_pytorch import DISTS_pt

        with _dists_lock:  # its constructor asks torchvision for pretrained VGG16 (a download): hand it a bare one
            real = DISTS_pt.models
            DISTS_pt.models = types.SimpleNamespace(vgg16=lambda **_: tvm.vgg16(weights=None))
            try:
                model = DISTS_pt.DISTS(load_weights=False)
            finally:
                DISTS_pt.models = real
        shipped = torch.load(Path(DISTS_pt.__file__).with_name("weights.pt"), map_location="cpu", weights_only=True)
        model.alpha.data, model.beta.data = shipped["alpha"], shipped["beta"]
        if state is not None:
            stages = torch.nn.ModuleDict({f"stage{k}": getattr(model, f"stage{k}") for k in range(1, 6)})
            load_features(stages, state)
        return cls(model.eval().to(device), device)

    @classmethod
    def load(cls, device: str = "cpu", weights_dir: str | Path | None = None, offline: bool = False) -> "DISTS":
        (path,) = resolve(cls.weights_files(), weights_dir, offline)
        return cls.from_backbone(backbone_state("vgg", path), device)

    def forward(self, a: Any, b: Any) -> Any:
        return self.model(a, b, batch_average=False)


@register
class DISTSFull(DISTS):
    """DISTS at full size (no resize): for images whose detail at full resolution matters."""

    name, column = "dists-full", "dists_full"
    resize = False


"""Image classifiers from torchvision and timm, torchvision's detectors and segmentation models, with their own
preprocessing."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ...errors import ConfigError
from . import register_model
from .base import ModelKind, Outputs, hub_fetch, load_state_dict, torch_device


def _num_classes(state: dict[str, Any]) -> int | None:
    """Output classes of a classifier state dict: rows of its last 2-D weight (the head)."""
    heads = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return int(heads[-1].shape[0]) if heads else None


def _state_outputs(path: str) -> Outputs:
    """The outputs of a ``--weights`` state dict: the rows of its head (no background class known)."""
    count = _num_classes(load_state_dict(path))
    if count is None:
        raise ConfigError(f"--weights {path}: no 2-D weight (classifier head) in this state dict")
    return Outputs(count, 0, f"the head of {Path(path).name}")


def _segmenter_outputs(path: str) -> Outputs:
    """The classes of a torchvision segmentation state dict: output channels of its last ``classifier.``
    convolution (the auxiliary head, when present, is not the model's output)."""
    state = load_state_dict(path)
    heads = [v for k, v in state.items() if k.startswith("classifier.") and k.endswith("weight")
             and getattr(v, "ndim", 0) == 4]
    if not heads:
        raise ConfigError(f"--weights {path}: no classifier convolution in this segmentation state dict")
    return Outputs(int(heads[-1].shape[0]), 0, f"the classifier of {Path(path).name}")


class Classifier:
    """Batches of HxWx3 uint8 images -> logits, through the model's own preprocessing.

    ``offset``: leading outputs that are no class (a background class), dropped from the logits.
    """

    def __init__(self, net: Any, preprocess: Callable[[Any], Any], device: str, offset: int = 0):
        import torch

        self.net = net.eval().to(device)
        self.preprocess = preprocess
        self.device = device
        self.offset = offset
        self.no_grad = torch.inference_mode

    def inputs(self, images: Sequence[Any]) -> Any:
        import torch

        return torch.stack([self.preprocess(im) for im in images])

    def logits(self, images: Sequence[Any]) -> Any:
        with self.no_grad():
            return self.net(self.inputs(images).to(self.device))[:, self.offset:]


class Detector:
    """Batches of HxWx3 uint8 images -> torchvision detections (the model resizes and normalizes inside).

    Its ``labels`` are the category ids the weights were trained on: torchvision's COCO detectors
    predict COCO's ids (1..90, their ``meta["categories"]`` index), so no mapping applies.
    """

    label_names = None

    def __init__(self, net: Any, preprocess: Callable[[Any], Any], device: str):
        import torch

        self.net = net.eval().to(device)
        self.preprocess = preprocess
        self.device = device
        self.no_grad = torch.inference_mode

    def detect(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        """Per image: ``boxes`` (N, 4) xyxy pixels, ``scores``, ``labels``, and ``masks`` (N, H, W) bool when
        the model predicts them (mask probabilities above 0.5, as torchvision's COCO evaluation does)."""
        import torch

        with self.no_grad():
            outs = self.net([self.preprocess(torch.from_numpy(im).permute(2, 0, 1)).to(self.device) for im in images])
        found = []
        for o in outs:
            d = {k: o[k].float().cpu().numpy() if k != "labels" else o[k].cpu().numpy()
                 for k in ("boxes", "scores", "labels")}
            if "masks" in o:
                d["masks"] = (o["masks"][:, 0] > 0.5).cpu().numpy()
            found.append(d)
        return found


class Segmenter:
    """HxWx3 uint8 images -> model classes per pixel at each image's own size (logits upsampled
    bilinearly, then argmax, as for ``hf:`` segmenters); one image per forward, as sizes differ."""

    def __init__(self, net: Any, preprocess: Callable[[Any], Any], device: str):
        import torch

        self.net = net.eval().to(device)
        self.preprocess = preprocess
        self.device = device
        self.no_grad = torch.inference_mode

    def segment(self, images: Sequence[Any]) -> list[Any]:
        import torch.nn.functional as F

        out = []
        with self.no_grad():
            for im in images:
                logits = self.net(self.preprocess(im)[None].to(self.device))["out"]
                up = F.interpolate(logits.float(), size=im.shape[:2], mode="bilinear", align_corners=False)
                out.append(up[0].argmax(0).cpu().numpy())
        return out


def _detector(name: str, default: Any, weights: str | None) -> Any:
    """A torchvision detector with its default weights, or with a state dict over the same architecture."""
    import torchvision

    if not weights:
        return torchvision.models.get_model(name, weights=default)
    state = load_state_dict(weights)
    classes = len(default.meta.get("categories") or ()) or 91
    net = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=classes)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"--weights {weights}: not a state dict of {name} with {classes} classes "
                          f"({str(exc).splitlines()[0]})") from None
    return net


@register_model
class TorchVision(ModelKind):
    """``torchvision:NAME``: ``torchvision.models.get_model``; default weights from the torch hub cache.

    Classifiers for ``classify``; detectors (``fasterrcnn_*``, ``retinanet_*``, ``fcos_*``, ``ssd*``,
    ``maskrcnn_*``) for ``detect``; segmentation models (``deeplabv3_*``, ``fcn_*``, ``lraspp_*``) for
    ``segment``, with ``--weights`` only: torchvision's own are for the 21 Pascal VOC classes, the segment
    task scores ADE20K's 150.
    """

    name = "torchvision"
    tasks = ("classify", "detect", "segment")
    library = "torchvision"

    @classmethod
    def _weights_enum(cls, config: Any) -> Any:
        import torchvision

        try:
            return torchvision.models.get_model_weights(config.model.name).DEFAULT
        except ValueError:
            raise ConfigError(f"torchvision has no model {config.model.name!r}") from None

    @classmethod
    def weights_file(cls, config: Any) -> Path | None:
        if config.weights:
            return Path(config.weights)
        return hub_fetch(cls._weights_enum(config).url, config.offline, config.model.canonical)

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        cls._weights_enum(config)
        detector = config.model.name in _detection_models()
        if detector != (config.task == "detect"):
            raise ConfigError(f"torchvision model {config.model.name} is {'a' if detector else 'no'} detector: "
                              f"task {config.task} {'needs' if config.task == 'detect' else 'takes'} "
                              f"{'one' if config.task == 'detect' else 'a classifier'}")
        if config.task == "segment":
            import torchvision

            if config.model.name not in torchvision.models.list_models(module=torchvision.models.segmentation):
                raise ConfigError(f"torchvision:{config.model.name} is not a segmentation model "
                                  "(torchvision.models.segmentation: deeplabv3_*, fcn_*, lraspp_*)")
            if not config.weights:
                raise ConfigError(f"torchvision:{config.model.name}: torchvision's segmentation weights are for the "
                                  "21 Pascal VOC classes; give --weights FILE with 150 ADE20K classes "
                                  "(examples/finetune.py --task segment writes one)")

    @classmethod
    def outputs(cls, config: Any) -> Outputs | None:
        if config.task == "segment":  # only with --weights (torchvision's own are VOC's 21 classes)
            return _segmenter_outputs(config.weights) if config.weights else None
        if config.weights:
            return _state_outputs(config.weights)
        default = cls._weights_enum(config)
        return Outputs(len(default.meta["categories"]), 0, f"{default} categories")

    @classmethod
    def load(cls, config: Any) -> Classifier | Detector | Segmenter:
        import torch
        import torchvision

        name, default = config.model.name, cls._weights_enum(config)
        if config.task == "segment":
            return cls._segmenter(config, default)
        if config.task == "detect":
            return Detector(_detector(name, default, config.weights), default.transforms(), torch_device(config))
        if config.weights:
            state = load_state_dict(config.weights)
            net = torchvision.models.get_model(name, weights=None, num_classes=_num_classes(state) or 1000)
            net.load_state_dict(state)
        else:
            net = torchvision.models.get_model(name, weights=default)
        transform = default.transforms()  # resize, centre crop, scale to [0, 1], normalize

        def preprocess(image: Any) -> Any:
            return transform(torch.from_numpy(image).permute(2, 0, 1))

        return Classifier(net, preprocess, torch_device(config))


    @classmethod
    def _segmenter(cls, config: Any, default: Any) -> Segmenter:
        """The architecture with the segment task's 150 classes (and the auxiliary head when the state
        dict has one), strictly loaded; preprocessing from torchvision's weights (resize, normalize)."""
        import torch
        import torchvision

        from ..tasks.segment import NUM_CLASSES

        state = load_state_dict(config.weights)
        extra = {"aux_loss": True} if any(k.startswith("aux_classifier.") for k in state) else {}
        net = torchvision.models.get_model(config.model.name, weights=None, weights_backbone=None,
                                           num_classes=NUM_CLASSES, **extra)
        net.load_state_dict(state)
        transform = default.transforms()

        def preprocess(image: Any) -> Any:
            return transform(torch.from_numpy(image).permute(2, 0, 1))

        return Segmenter(net, preprocess, torch_device(config))


@register_model
class Timm(ModelKind):
    """``timm:NAME``: ``timm.create_model`` (pretrained weights from the Hugging Face cache)."""

    name = "timm"
    tasks = ("classify",)
    library = "timm"

    @classmethod
    def weights_file(cls, config: Any) -> Path | None:
        if config.weights:
            return Path(config.weights)
        import timm

        if not timm.is_model(config.model.name):
            raise ConfigError(f"timm has no model {config.model.name!r}")
        cfg = timm.models.get_pretrained_cfg(config.model.name)
        hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if hub:
            from .hf import cached_file

            return cached_file(hub, "model.safetensors", config.offline, config.model.canonical)
        return None

    @classmethod
    def outputs(cls, config: Any) -> Outputs | None:
        if config.weights:
            return _state_outputs(config.weights)
        import timm

        cfg = timm.models.get_pretrained_cfg(config.model.name)
        if cfg is None or not cfg.num_classes:
            return None
        return Outputs(int(cfg.num_classes), int(cfg.label_offset or 0), "timm's pretrained_cfg")

    @classmethod
    def load(cls, config: Any) -> Classifier:
        import timm
        from timm.data import create_transform, resolve_data_config

        if config.weights:
            state = load_state_dict(config.weights)
            net = timm.create_model(config.model.name, pretrained=False, num_classes=_num_classes(state) or 1000)
            net.load_state_dict(state)
        else:
            net = timm.create_model(config.model.name, pretrained=True)
        transform = create_transform(**resolve_data_config({}, model=net))
        outputs = None if config.weights else cls.outputs(config)  # a state dict declares no background class

        def preprocess(image: Any) -> Any:
            from PIL import Image

            return transform(Image.fromarray(image))

        return Classifier(net, preprocess, torch_device(config), outputs.offset if outputs else 0)


def _detection_models() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models.detection))

"""Learned image codecs of CompressAI's model zoo: Ballé 2018 (factorized, hyperprior), Minnen 2018
(mean-scale, joint autoregressive), Cheng 2020 (anchor, attention), at the zoo's qualities and metrics.

The zoo's own tables give the architecture, its configuration per quality and the checkpoint URL;
weights are fetched into torch hub's cache (or ``$MPQ_WEIGHTS_DIR``), hash-checked as the zoo names
them, and loaded as tensors only (see :mod:`pipeline.codecs.weights`). CompressAI's ``zoo.<model>(pretrained=True)``
is not called because it unpickles checkpoints without ``weights_only``.

Images are padded on the right and bottom (edge pixels repeated) to the model's stride, encoded
with ``model.compress`` and cropped back after ``model.decompress``. The payload is a ``.bin``
(:mod:`pipeline.codecs.bitstream`): every entropy-coded string plus the spec and image size, all of it
counted in ``bits``.
"""
from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import bitstream, devices, weights
from ..errors import ConfigError
from . import params
from .params import Param
from .spec import CodecSpec
from . import target
from . import register
from .base import Encoded, ImageCodec

#: models kept in memory per process (a sweep over qualities reuses them shard after shard)
MODEL_CACHE_SIZE = 8

_models: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_models_lock = threading.Lock()


def _versions() -> dict[str, str]:
    import compressai
    import torch

    return {"torch": torch.__version__, "compressai": compressai.__version__}


class ZooCodec(devices.LazyDevice, ImageCodec):
    """One CompressAI zoo architecture; subclasses set ``name`` (the zoo's name) and the quality range."""

    extension: ClassVar[str] = bitstream.EXTENSION
    library: ClassVar[str] = "CompressAI"
    needs_gpu: ClassVar[bool] = True
    uses_torch: ClassVar[bool] = True
    reconstruction: ClassVar[bool] = True
    groups: ClassVar[int] = 2  # entropy-coded string groups per image (y and z)
    qualities: ClassVar[int] = 8  # the zoo's qualities 1..N; parameters and rate knob follow from it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.params = _params(cls.qualities)
        cls.rate_knob = params.RateKnob("quality", "bpp", 1, cls.qualities, default=3)

    def __init__(self, spec: CodecSpec, *, device: str | None = None):
        super().__init__(spec)
        self._set_device_request(device)

    def at_spec(self, spec: CodecSpec) -> "ZooCodec":
        return type(self)(spec, device=self._requested)

    # ------------------------------------------------------------------ registry hooks

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import compressai.zoo.image as zoo
        except ImportError as exc:
            return f"CompressAI is not installed (pip install compressai): {exc}"
        if cls.name not in zoo.model_urls:
            return f"this CompressAI has no {cls.name} in its zoo"
        return None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return _versions()

    @classmethod
    def checkpoint_url(cls, spec: CodecSpec) -> str:
        """The URL CompressAI's zoo publishes for this setting (its file name carries the hash)."""
        from compressai.zoo.image import model_urls

        try:
            return model_urls[cls.name][spec["metric"]][spec["quality"]]
        except KeyError:
            raise ConfigError(f"CompressAI's zoo has no weights for {spec.canonical}") from None

    @classmethod
    def weights_folder(cls) -> Path:
        return weights.weights_dir_override() or weights.torch_hub_checkpoints()

    @classmethod
    def checkpoint(cls, spec: CodecSpec) -> Path:
        """The checked local checkpoint for ``spec``, downloaded if missing and allowed."""
        return weights.fetch(cls.checkpoint_url(spec), cls.weights_folder(), what=spec.canonical)

    @classmethod
    def preflight(cls, spec: CodecSpec) -> None:
        knob = cls.rate_knob
        if knob is not None and spec.get(knob.target) is not None:  # a target may choose any quality
            for q in knob.order():
                cls.checkpoint(target.knob_spec(spec, q))
            return
        cls.checkpoint(spec)

    # ------------------------------------------------------------------ model and device

    def environment(self) -> dict[str, str]:
        """What the ``.json`` records and a decoder compares: device, its name, library versions."""
        return {"device": self.device.split(":")[0], "device_name": devices.device_name(self.device), **_versions()}

    def _model(self) -> Any:
        path = self.checkpoint(self.spec)
        st = path.stat()
        key = (self.name, self.spec["metric"], self.spec["quality"], str(path), st.st_size, st.st_mtime_ns,
               self.device)
        with _models_lock:
            if key in _models:
                _models.move_to_end(key)
                return _models[key]
            model = self._load(path)
            _models[key] = model
            while len(_models) > MODEL_CACHE_SIZE:
                _models.popitem(last=False)
            return model

    def _load(self, path: Path) -> Any:
        from compressai.zoo.image import model_architectures
        from compressai.zoo.pretrained import load_pretrained

        state = load_pretrained(weights.load_state_dict(path))  # the zoo's key renames
        try:
            model = model_architectures[self.name].from_state_dict(state)
        except (RuntimeError, KeyError, IndexError) as exc:
            raise ConfigError(f"checkpoint {path} does not fit {self.name}: {str(exc).splitlines()[0]}") from None
        # zoo checkpoints carry their CDF tables; compute them only when missing, on the CPU, before
        # moving to the device, so tables never depend on where the model runs
        model.update(force=False)
        model.eval().requires_grad_(False)
        return model.to(self.device)

    # ------------------------------------------------------------------ coding

    def _stride(self, model: Any) -> int:
        return int(model.downsampling_factor)

    def encode(self, rgb: np.ndarray) -> Encoded:
        import torch
        import torch.nn.functional as F

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected RGB uint8 (H, W, 3), got {rgb.shape} {rgb.dtype}")
        model = self._model()
        h, w = rgb.shape[:2]
        stride = self._stride(model)
        ph, pw = -h % stride, -w % stride
        x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Inference on GPU is not recommended")
            out = model.compress(x.to(self.device))
        expected = ((h + ph) // stride, (w + pw) // stride)
        if tuple(int(v) for v in out["shape"]) != expected:
            raise RuntimeError(f"{self.name}: latent shape {tuple(out['shape'])} is not {expected}, which the "
                               f"decoder derives from the image size")
        groups = [[bytes(s) for s in group] for group in out["strings"]]
        payload = bitstream.pack(self.spec.canonical, (h, w), groups)
        return Encoded(payload, self.extension, info=self.environment())

    @classmethod
    def stream_spec(cls, payload: bytes) -> str | None:
        return bitstream.unpack(payload).spec  # the .bin header names its setting

    def decode(self, payload: bytes) -> np.ndarray:
        import torch

        stream = bitstream.unpack(payload)
        if stream.spec != self.spec.canonical:
            chosen = target.member_of(self, stream.spec)  # a target set's stream names the quality chosen
            if chosen is not None:
                return chosen.decode(payload)
            raise bitstream.BitstreamError(f"stream was encoded with {stream.spec}, not {self.spec.canonical}")
        if len(stream.groups) != self.groups or any(len(g) != 1 for g in stream.groups):
            raise bitstream.BitstreamError(f"{self.name} expects {self.groups} groups of one string each, "
                                           f"the stream has {[len(g) for g in stream.groups]}")
        model = self._model()
        stride = self._stride(model)
        h, w = stream.height, stream.width
        shape = (-(-h // stride), -(-w // stride))
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Inference on GPU is not recommended")
            x_hat = model.decompress([list(g) for g in stream.groups], shape)["x_hat"]
        x_hat = x_hat[0, :, :h, :w].float().cpu()  # rounding on the CPU: the same for every device
        return x_hat.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _params(max_quality: int) -> tuple[Param, ...]:
    return (
        Param("quality", int, None, f"zoo quality 1 (smallest) to {max_quality} (3 when no bpp target is given)",
              short="q", minimum=1, maximum=max_quality, in_tag=True),
        Param("metric", str, "mse", "what the model was trained for: mse or ms-ssim", short="m",
              choices=("mse", "ms-ssim")),
        params.bpp_param(),
    )


@register
class BMSHJ2018Factorized(ZooCodec):
    name = "bmshj2018-factorized"
    summary = "Ballé et al. 2018 factorized prior (CompressAI zoo)"
    groups = 1


@register
class BMSHJ2018Hyperprior(ZooCodec):
    name = "bmshj2018-hyperprior"
    summary = "Ballé et al. 2018 scale hyperprior (CompressAI zoo)"


@register
class MBT2018Mean(ZooCodec):
    name = "mbt2018-mean"
    summary = "Minnen et al. 2018 mean-scale hyperprior (CompressAI zoo)"


@register
class MBT2018(ZooCodec):
    name = "mbt2018"
    summary = "Minnen et al. 2018 joint autoregressive and hierarchical priors (CompressAI zoo)"


@register
class Cheng2020Anchor(ZooCodec):
    name = "cheng2020-anchor"
    summary = "Cheng et al. 2020 anchor: residual blocks, autoregressive context (CompressAI zoo)"
    qualities = 6


@register
class Cheng2020Attention(ZooCodec):
    name = "cheng2020-attn"
    summary = "Cheng et al. 2020 with attention modules (CompressAI zoo)"
    qualities = 6

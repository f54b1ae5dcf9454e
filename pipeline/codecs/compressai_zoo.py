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
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, ClassVar, Hashable

import numpy as np

from . import batching, bitstream, devices, weights
from ..errors import ConfigError
from . import params
from .params import Param
from .spec import CodecSpec
from . import target
from . import register
from .base import ImageCodec

#: models kept in memory per process (a sweep over qualities reuses them shard after shard)
MODEL_CACHE_SIZE = 8


class ModelCache:
    """Models kept in memory by one process, the least recently used dropped first; room is made before
    a model is built, since a large one may not fit twice. One cache per codec family, with its size."""

    def __init__(self, size: int):
        self.size = size
        self._models: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The model under ``key``, built by ``build()`` (under the lock: one build per key) when absent."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            while len(self._models) >= self.size:
                self._models.popitem(last=False)
            model = self._models[key] = build()
            return model


_MODELS = ModelCache(MODEL_CACHE_SIZE)


def _versions() -> dict[str, str]:
    import compressai
    import torch

    return {"torch": torch.__version__, "compressai": compressai.__version__}


class CompressAIModel(batching.CompressAIBatching, devices.LazyDevice, ImageCodec):
    """A CompressAI model run on one device: ``.bin`` streams, batched coding; subclasses give ``_model()``."""

    extension: ClassVar[str] = bitstream.EXTENSION
    library: ClassVar[str] = "CompressAI"
    needs_gpu: ClassVar[bool] = True
    uses_torch: ClassVar[bool] = True
    reconstruction: ClassVar[bool] = True
    groups: ClassVar[int | None] = 2  # entropy-coded string groups per image (y and z); None: unchecked

    def __init__(self, spec: CodecSpec, *, device: str | None = None):
        super().__init__(spec)
        self._set_device_request(device)

    def at_spec(self, spec: CodecSpec) -> "CompressAIModel":
        return type(self)(spec, device=self._requested)

    @classmethod
    def versions(cls) -> dict[str, str]:
        return _versions()

    def environment(self) -> dict[str, str]:
        """What the ``.json`` records and a decoder compares: device, its name, library versions."""
        return {"device": self.device.split(":")[0], "device_name": devices.device_name(self.device), **_versions()}

    # ------------------------------------------------------------------ coding (see batching.CompressAIBatching)

    def _stride(self, model: Any) -> int:
        return int(model.downsampling_factor)

    def _stream_name(self) -> str:
        """The setting the ``.bin`` header names (what a decoder builds the model from)."""
        return self.spec.canonical

    def _member(self, name: str) -> "CompressAIModel | None":
        """The fixed setting of this target setting that wrote a stream naming ``name``, else None."""
        return target.member_of(self, name)

    @classmethod
    def stream_spec(cls, payload: bytes) -> str | None:
        return bitstream.unpack(payload).spec  # the .bin header names its setting

    def decode(self, payload: bytes) -> np.ndarray:
        stream = bitstream.unpack(payload)
        if stream.spec != self._stream_name():
            chosen = self._member(stream.spec)  # a target set's stream names the quality chosen
            if chosen is not None:
                return chosen.decode(payload)
        self._check_stream(stream)
        return self.decode_streams([stream])[0]


class ZooCodec(CompressAIModel):
    """One CompressAI zoo architecture; subclasses set ``name`` (the zoo's name) and the quality range."""

    qualities: ClassVar[int] = 8  # the zoo's qualities 1..N; parameters and rate knob follow from it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.params = _params(cls.qualities)
        cls.rate_knob = params.RateKnob("quality", "bpp", 1, cls.qualities, default=3)

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

    def _model(self) -> Any:
        path = self.checkpoint(self.spec)
        st = path.stat()
        key = (self.name, self.spec["metric"], self.spec["quality"], str(path), st.st_size, st.st_mtime_ns,
               self.device)
        return _MODELS.get(key, lambda: self._load(path))

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

"""Music source separation: open-unmix (``umxhq``, ``umxl``) and demucs (``htdemucs``) from the torch hub cache.

``--weights FILE`` loads a state dict into the same architecture built without pretrained weights
(a model trained on lossy stems, or random weights in tests).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from . import register_model
from .base import ModelKind, hub_checkpoint, hub_fetch, load_state_dict, missing, torch_device

STEMS = ("drums", "bass", "other", "vocals")
HTDEMUCS_SIG = "955717e8"  # demucs/remote/htdemucs.yaml: the single model of the htdemucs bag


class _Separator:
    """(channels, n) mixture at any rate -> {stem: (channels, n)} at that rate."""

    def __init__(self, net: Any, rate: int, device: str, run: Any):
        self.net, self.rate, self.device, self.run = net.eval().to(device), rate, device, run

    def separate(self, mixture: Any, rate: int) -> dict[str, Any]:
        import numpy as np
        import soxr
        import torch

        x = np.asarray(mixture, dtype=np.float32)
        if x.shape[0] == 1:
            x = np.concatenate([x, x])  # the models take stereo
        n = x.shape[1]
        if rate != self.rate:
            x = soxr.resample(x.T, rate, self.rate).T
        with torch.inference_mode():
            est = self.run(self.net, torch.from_numpy(np.ascontiguousarray(x))[None].to(self.device))
        out = {}
        for stem, y in est.items():
            y = y.float().cpu().numpy()
            if rate != self.rate:
                y = soxr.resample(y.T, self.rate, rate).T
            y = y[:, :n]
            out[stem] = np.pad(y, ((0, 0), (0, n - y.shape[1])))
        return out


class _OpenUnmix(ModelKind):
    tasks = ("separate",)
    named = False
    library = "openunmix"

    @classmethod
    def _urls(cls) -> list[str]:
        """The checkpoint URLs open-unmix downloads (read from its own source: one table, not a copy)."""
        import inspect

        import openunmix

        src = inspect.getsource(getattr(openunmix, f"{cls.name}_spec"))
        return re.findall(r'"(https://[^"]+\.pth)"', src)

    @classmethod
    def weights_file(cls, config: Any) -> Path | None:
        if config.weights:
            return Path(config.weights)
        files = [hub_fetch(u, config.offline, cls.name) for u in cls._urls()]
        return files[-1] if files else None  # the vocals model stands for the set

    @classmethod
    def load(cls, config: Any) -> _Separator:
        import openunmix

        net = getattr(openunmix, cls.name)(targets=list(STEMS), pretrained=not config.weights, device="cpu")
        if config.weights:
            net.load_state_dict(load_state_dict(config.weights))

        def run(model: Any, x: Any) -> dict[str, Any]:
            y = model(x)[0]  # (targets, channels, n)
            return dict(zip(model.target_models.keys(), y))

        return _Separator(net, int(net.sample_rate), torch_device(config), run)


@register_model
class UMXHQ(_OpenUnmix):
    name = "umxhq"


@register_model
class UMXL(_OpenUnmix):
    name = "umxl"


@register_model
class HTDemucs(ModelKind):
    name = "htdemucs"
    tasks = ("separate",)
    named = False
    library = "demucs"

    @classmethod
    def weights_file(cls, config: Any) -> Path | None:
        if config.weights:
            return Path(config.weights)
        from demucs.pretrained import ROOT_URL

        path = hub_checkpoint(f"{ROOT_URL}{_demucs_file()}")
        if config.offline and not path.is_file():
            raise missing(path, cls.name)
        return path

    @classmethod
    def load(cls, config: Any) -> _Separator:
        from demucs.apply import apply_model

        if config.weights:
            from demucs.htdemucs import HTDemucs as Net

            net = Net(sources=list(STEMS))
            net.load_state_dict(load_state_dict(config.weights))
        else:
            from demucs.pretrained import get_model

            net = get_model("htdemucs")

        def run(model: Any, x: Any) -> dict[str, Any]:
            y = apply_model(model, x, device=x.device, progress=False)[0]
            return dict(zip(model.sources, y))

        return _Separator(net, int(net.samplerate), torch_device(config), run)


def _demucs_file() -> str:
    """The htdemucs checkpoint file name, from demucs's own list of remote files."""
    from importlib import resources

    names = resources.files("demucs").joinpath("remote/files.txt").read_text().split()
    for n in names:
        if n.startswith(HTDEMUCS_SIG):
            return n
    raise ConfigError(f"demucs lists no checkpoint {HTDEMUCS_SIG}-*.th")

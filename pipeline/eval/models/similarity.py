"""Deep similarity metrics as models of the ``similarity`` task: ``lpips:alex|vgg|squeeze``, ``dists``, ``cdpam``.

The kinds are derived from the deep-metric registry (:mod:`pipeline.metrics.deep`), the single
source of those names: a metric ``lpips:alex`` gives the kind ``lpips`` (named: ``lpips:NAME``), a
metric ``dists`` the kind ``dists`` (no name). The network is the one transcode's ``--lpips``,
``--dists`` and ``--cdpam`` load, so the numbers are the same either way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...metrics import deep
from . import register_model
from .base import ModelKind, torch_device


class DeepMetricModel(ModelKind):
    """One deep-metric family: backbones checked (or fetched) before any work, loaded once per worker."""

    tasks = ("similarity",)

    @classmethod
    def metric(cls, config: Any) -> type[deep.DeepMetric]:
        return deep.get_metric(config.model.canonical)  # an unknown name raises, naming the known ones

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if config.weights is not None:
            raise ConfigError(f"--weights does not apply to {config.model.canonical}: its backbone is read from "
                              "torchvision's cache ($TORCH_HOME/hub/checkpoints)")
        cls.metric(config)

    @classmethod
    def weights_file(cls, config: Any) -> Path | None:
        """The backbone (or CDPAM's packaged checkpoint); a missing one stops here, naming file and folder."""
        paths = cls.metric(config).check(None, config.offline)
        return paths[0] if paths else None

    @classmethod
    def load(cls, config: Any) -> deep.DeepMetric:
        return cls.metric(config).load(torch_device(config), None, config.offline)


def _register_kinds() -> None:
    """One model kind per family of registered deep metrics."""
    families: dict[str, list[type[deep.DeepMetric]]] = {}
    for name in deep.metric_names():
        families.setdefault(name.partition(":")[0], []).append(deep.get_metric(name))
    for kind, metrics in families.items():
        named = any(":" in m.name for m in metrics)
        register_model(type(f"{kind.capitalize()}Model", (DeepMetricModel,),
                            {"name": kind, "named": named, "library": metrics[0].library, "__module__": __name__}))


_register_kinds()

"""Deep similarity metrics, decoded payload against the source: LPIPS and DISTS (:mod:`.image`), CDPAM (:mod:`.audio`).

Use :func:`get_metric` (``lpips:alex``, ``lpips:vgg``, ``lpips:squeeze``, ``dists``, ``cdpam``) then
``load(device, weights_dir=None, offline=False)`` and ``distances(refs, tests)``, or :func:`cached`
for one loaded network per process. Heavy libraries (torch, lpips, DISTS_pytorch, cdpam's model)
are imported only when a metric is loaded.
"""
from __future__ import annotations

from .base import (DeepMetric, WeightsFile, cached, checkpoint_folder, columns, get_metric, measure, metric_names,
                   register, resolve)
from . import audio as _audio  # noqa: F401 - registers cdpam
from . import image as _image  # noqa: F401 - registers lpips:*, dists

__all__ = ["DeepMetric", "WeightsFile", "cached", "checkpoint_folder", "columns", "get_metric", "measure",
           "metric_names", "register", "resolve"]

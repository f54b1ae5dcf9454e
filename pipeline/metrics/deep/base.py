"""The deep-metric registry, and where their backbone weights are found.

Every deep similarity metric is a registered class with a ``name`` (what users type: ``lpips:alex``,
``dists``, ``cdpam``), a ``column`` (the manifest and ``.json`` field: ``lpips_alex``, ...) and a
``modality``. ``load(device, weights_dir, offline)`` first makes sure every weights file it needs is
present (checked before any work, downloaded only when ``offline`` is False) and then builds the
network; ``distances(refs, tests)`` scores a batch of pairs.

Backbones come from torchvision's checkpoint cache (``$TORCH_HOME/hub/checkpoints``, or
``weights_dir``), under the names torchvision gives them, and are loaded as tensors only
(``torch.load(weights_only=True)``); their names carry a SHA-256 prefix that is checked.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ...errors import ConfigError, MissingWeightsError

_REGISTRY: dict[str, type["DeepMetric"]] = {}
_COLUMNS: dict[str, str] = {}
_cache: dict[tuple[str, str, str | None, bool], "DeepMetric"] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class WeightsFile:
    """A file a metric needs: its name, the URL it is published at (None: shipped in a package)."""

    filename: str
    url: str | None
    what: str


def register(cls: type["DeepMetric"]) -> type["DeepMetric"]:
    """Class decorator: add a metric under its ``name``; a duplicate name or column raises."""
    if cls.name in _REGISTRY:
        raise ValueError(f"deep metric {cls.name!r} is registered twice")
    if cls.column in _COLUMNS:
        raise ValueError(f"column {cls.column!r} is used by {_COLUMNS[cls.column]!r} already")
    _REGISTRY[cls.name] = cls
    _COLUMNS[cls.column] = cls.name
    return cls


def metric_names(modality: str | None = None) -> list[str]:
    """Registered metric names, optionally only those for one modality (``image``, ``audio``)."""
    return sorted(n for n, c in _REGISTRY.items() if modality in (None, c.modality))


def get_metric(name: str) -> type["DeepMetric"]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown deep metric {name!r}; known: {', '.join(metric_names())}") from None


def columns(modality: str | None = None) -> list[str]:
    """Manifest columns of the registered metrics (for one modality, or all)."""
    return [_REGISTRY[n].column for n in metric_names(modality)]


def checkpoint_folder(weights_dir: str | Path | None) -> Path:
    """``weights_dir`` when given, else torchvision's cache ``$TORCH_HOME/hub/checkpoints``."""
    if weights_dir:
        return Path(weights_dir).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve(files: Sequence[WeightsFile], weights_dir: str | Path | None, offline: bool) -> list[Path]:
    """Local, hash-checked paths of ``files``; raises MissingWeightsError naming file and folder.

    A missing file is downloaded only when ``offline`` is False (into the same folder, under a
    temporary name, then checked and renamed: :func:`pipeline.codecs.weights.fetch`).
    """
    from ...codecs.weights import fetch, hash_prefix, verify

    folder = checkpoint_folder(weights_dir)
    paths = []
    for f in files:
        path = folder / f.filename
        if path.is_file():
            verify(path, hash_prefix(f.filename))
        elif offline or f.url is None:
            raise MissingWeightsError(
                f"{f.what}: weights file {f.filename} is not in {folder} and downloads are off (--offline). "
                f"Download {f.url} on a machine with internet access and put it at {path} (or into the folder "
                f"given by --weights-dir)")
        else:
            path = fetch(f.url, folder, what=f.what)
        paths.append(path)
    return paths


class DeepMetric:
    """A network that scores (reference, test) pairs; lower is more similar, 0 for identical inputs."""

    name: ClassVar[str]
    column: ClassVar[str]
    modality: ClassVar[str]
    library: ClassVar[str]  # the package that implements it (recorded with results)

    def __init__(self, model: Any, device: str):
        self.model, self.device = model, device

    @classmethod
    def weights_files(cls) -> list[WeightsFile]:
        """Files from outside the installed packages that :meth:`load` needs (backbones)."""
        return []

    @classmethod
    def check(cls, weights_dir: str | Path | None = None, offline: bool = False) -> list[Path]:
        """Everything :meth:`load` needs is present (or downloaded): run before any work."""
        return resolve(cls.weights_files(), weights_dir, offline)

    @classmethod
    def load(cls, device: str = "cpu", weights_dir: str | Path | None = None,
             offline: bool = False) -> "DeepMetric":
        raise NotImplementedError

    def distances(self, refs: Sequence[Any], tests: Sequence[Any], *, rate: int | None = None) -> list[float]:
        raise NotImplementedError


def cached(name: str, device: str, weights_dir: str | Path | None = None, offline: bool = False) -> DeepMetric:
    """One loaded metric per (name, device, weights folder) and process: workers load each network once."""
    key = (name, device, str(weights_dir) if weights_dir else None, bool(offline))
    with _cache_lock:
        metric = _cache.get(key)
        if metric is None:
            metric = _cache[key] = get_metric(name).load(device, weights_dir, offline)
    return metric


def check_pairs(refs: Sequence[Any], tests: Sequence[Any]) -> None:
    if len(refs) != len(tests):
        raise ValueError(f"{len(refs)} references but {len(tests)} tests")


def measure(options: dict[str, Any], reference: Any, test: Any, *, rate: int | None = None) -> dict[str, float]:
    """The deep metrics a transcode asked for (``options["deep"]``) on one pair, as ``{column: value}``.

    Networks are loaded once per process (:func:`cached`) on the device
    :func:`pipeline.codecs.devices.choose_device` picks (a GPU when the worker has one), from the
    run's weights folder and offline setting (:func:`pipeline.codecs.runtime.current`, applied around
    each task), so they travel with the run as the learned codecs' do and stay out of the plan.
    """
    names = options.get("deep") or ()
    if not names:
        return {}
    from ...codecs.devices import choose_device, configure_torch
    from ...codecs.runtime import current

    device = choose_device()
    configure_torch(device)
    runtime = current()
    out = {}
    for name in names:
        metric = cached(name, device, runtime.weights_dir, runtime.offline)
        out[metric.column] = metric.distances([reference], [test], rate=rate)[0]
    return out

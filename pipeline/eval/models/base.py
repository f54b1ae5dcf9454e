"""What a model kind provides: weights checks before work, a predictor per task, a description."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from ...errors import ConfigError, MissingWeightsError


class ModelKind:
    """One family of models. ``tasks``: the tasks it can do; ``named``: the spec needs ``:NAME``.

    Predictors offer, by task: ``logits(images) -> (N, C) tensor`` (classify),
    ``segment(images) -> [HxW model classes]`` (segment), ``detect(images) -> [{boxes (N, 4) xyxy, scores,
    labels, masks (N, H, W) bool when predicted}]`` with ``label_names`` (None: labels are the dataset's
    category ids; else id -> name, mapped by name) (detect), ``transcribe([(audio, rate)]) -> [str]``
    (asr), ``separate(mixture, rate) -> {stem: (channels, n)}`` (separate). Images are HxWx3
    uint8 numpy arrays, audio float32 numpy arrays.
    """

    name: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ()
    named: ClassVar[bool] = True
    library: ClassVar[str] = ""
    uses_torch: ClassVar[bool] = True  # a torch model: on a GPU when --device cuda (Dask resource GPU)

    @classmethod
    def check(cls, config: Any) -> None:
        """Refuse a spec this kind cannot take (a task it cannot do, a missing or extra name)."""
        spec = config.model
        if config.task not in cls.tasks:
            raise ConfigError(f"model {spec.canonical} cannot do task {config.task} "
                              f"(it does: {', '.join(cls.tasks)})")
        if cls.named and not spec.name:
            raise ConfigError(f"model kind {cls.name} needs a name: {cls.name}:NAME")
        if not cls.named and spec.name:
            raise ConfigError(f"model {cls.name} takes no name (got {spec.canonical})")
        if config.weights is not None and not Path(config.weights).is_file():
            raise MissingWeightsError(f"--weights {config.weights}: no such file in "
                                      f"{Path(config.weights).resolve().parent}")

    @classmethod
    def weights_file(cls, config: Any) -> Path | None:
        """The file whose SHA-256 identifies the weights (raises MissingWeightsError offline)."""
        return Path(config.weights) if config.weights else None

    @classmethod
    def preflight(cls, config: Any) -> dict[str, Any]:
        """Check everything before work; returns the model's description for the result JSON."""
        cls.check(config)
        path = cls.weights_file(config)
        from ...codecs.weights import sha256_file

        return {"name": config.model.canonical, "kind": cls.name, "library": cls.library,
                "version": cls.version(), "weights": str(path) if path else None,
                "weights_sha256": sha256_file(path) if path and path.is_file() else None}

    @classmethod
    def version(cls) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(cls.library)
        except PackageNotFoundError:
            return "unknown"

    @classmethod
    def load(cls, config: Any) -> Any:
        raise NotImplementedError


def missing(path: Path, what: str) -> MissingWeightsError:
    """One line naming the file and the folder it is expected in."""
    return MissingWeightsError(f"weights for {what} not found: {path.name} is expected in {path.parent} "
                               "(--offline never downloads; copy the file there or drop --offline)")


def hub_checkpoint(url: str) -> Path:
    """Where torch.hub keeps the file of ``url`` (``$TORCH_HOME/hub/checkpoints/<name>``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def hub_fetch(url: str, offline: bool, what: str) -> Path:
    """The torch hub file of ``url``: downloaded once here, before any work, unless ``offline``.

    Fetching in the client means workers find the file (on a shared home) instead of each
    downloading it, and the result records the hash of the weights actually used.
    """
    import torch

    path = hub_checkpoint(url)
    if not path.is_file():
        if offline:
            raise missing(path, what)
        try:
            torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True)
        except Exception as exc:  # noqa: BLE001 - no network, a proxy, a bad file: one line, before any work
            raise ConfigError(f"cannot download the weights for {what} from {url} into {path.parent}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return path


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """A state dict of tensors only (``weights_only=True``: nothing is unpickled)."""
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return state


def torch_device(config: Any) -> str:
    """The torch device; ``cuda`` without a GPU stops with one line."""
    import torch

    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no GPU visible here")
    return config.device

"""CDPAM (Manocha et al. 2021, ``cdpam`` package) on decoded audio against the source.

CDPAM was trained on 22,050 Hz mono clips loaded with librosa and scaled to 16-bit integer
values (``round(x * 32768)``, as ``cdpam.load_audio`` does). Here each signal (float32
``(n, channels)`` at ``rate``, full scale 1.0) is averaged to mono, resampled to 22,050 Hz with
soxr (:func:`pipeline.media.audio.resample`; librosa's default loader uses soxr too) and scaled
the same way, then fed to the network directly: the package's own loader uses ``np.float``,
which current NumPy removed, and ``import cdpam`` pulls in librosa and resampy, so only its
``models.py`` is loaded.

The encoder averages over time, so zero padding would change a clip's score: pairs are batched
only with pairs of the same length (the reference and test of a pair always have the same
length), ``batch_size`` at a time. Identical signals score exactly 0.
"""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import DeepMetric, check_pairs, register

CDPAM_RATE = 22050
CHECKPOINT = "CDPAM_trained/scratchJNDdefault_best_model.pth"
_ARCH = {"encoder_layers": 16, "encoder_filters": 64, "ndim": [16, 6], "classif_dp": 0.05, "classif_BN": 0,
         "classif_act": "no", "input_size": 512}  # what cdpam.CDPAM builds around the shipped checkpoint


def package_dir() -> Path:
    """Where the ``cdpam`` package is installed, found without importing it."""
    spec = importlib.util.find_spec("cdpam")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the cdpam package is not installed: pip install 'mpq-pipeline[similarity]'")
    return Path(list(spec.submodule_search_locations)[0])


def _models_module() -> Any:
    """``cdpam/models.py`` on its own (torch only), without running ``cdpam/__init__``."""
    spec = importlib.util.spec_from_file_location("_mpq_cdpam_models", package_dir() / "models.py")
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"cannot load {package_dir() / 'models.py'} as a module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def to_cdpam_input(samples: np.ndarray, rate: int) -> np.ndarray:
    """float (n, channels) at ``rate`` -> float32 (m,) mono at 22,050 Hz in 16-bit integer units."""
    from ...media.audio import resample

    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"audio must be (n, channels), got {x.shape}")
    mono = np.ascontiguousarray(x.mean(axis=1, keepdims=True), dtype=np.float32)
    if rate != CDPAM_RATE:
        mono = resample(mono, rate, CDPAM_RATE)
    return np.round(mono[:, 0].astype(np.float64) * 32768.0).astype(np.float32)


@register
class CDPAM(DeepMetric):
    """CDPAM distance with the checkpoint shipped in the ``cdpam`` wheel."""

    name, column, modality, library = "cdpam", "cdpam", "audio", "cdpam"
    batch_size = 4
    REFERENCE_CACHE = 8  # reference embeddings kept per instance

    def __init__(self, model: Any, device: str):
        super().__init__(model, device)
        self._refs: dict[bytes, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def check(cls, weights_dir: str | Path | None = None, offline: bool = False) -> list[Path]:
        """The checkpoint inside the installed package (``weights_dir``/``offline`` do not apply)."""
        path = package_dir() / CHECKPOINT
        if not path.is_file():
            from ...errors import MissingWeightsError

            raise MissingWeightsError(f"cdpam: weights file {path.name} is not in {path.parent} (reinstall cdpam)")
        return [path]

    @classmethod
    def load(cls, device: str = "cpu", weights_dir: str | Path | None = None, offline: bool = False) -> "CDPAM":
        """Build the network from the package's checkpoint (``weights_dir``/``offline`` do not apply).

        The checkpoint is in torch's legacy pickle format, which ``weights_only=True`` cannot read.
        It is part of the installed ``cdpam`` package, the same trust as that package's code, so it
        is loaded with ``weights_only=False`` from the package's own folder and from nowhere else.
        """
        import torch

        (path,) = cls.check()
        model = _models_module().FINnet(dev=torch.device(device), **_ARCH)
        state = torch.load(path, map_location="cpu", weights_only=False)["state"]  # see the docstring
        model.load_state_dict(state)
        return cls(model.eval().to(device), device)

    def embed(self, clips: Sequence[np.ndarray]) -> Any:
        """Normalized 'acoustic' embeddings of equal-length 22,050 Hz clips (what CDPAM compares)."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.stack(clips)).to(self.device).unsqueeze(1)
        _, acoustic, _ = self.model.base_encoder(x)
        return F.normalize(acoustic, dim=1)

    def distances(self, refs: Sequence[np.ndarray], tests: Sequence[np.ndarray], *,
                  rate: int | Sequence[int] | None = None) -> list[float]:
        """One distance per pair of float (n, channels) signals at ``rate`` Hz (one rate, or one per pair).

        A reference's embedding is remembered (by content, the last few): a transcode that scores
        several settings of one sample, one call each, embeds the source once.
        """
        import torch

        check_pairs(refs, tests)
        if rate is None:
            raise ValueError("cdpam needs the sample rate of the signals")
        rates = [rate] * len(refs) if isinstance(rate, (int, np.integer)) else list(rate)
        a = [to_cdpam_input(r, sr) for r, sr in zip(refs, rates)]
        b = [to_cdpam_input(t, sr) for t, sr in zip(tests, rates)]
        groups: dict[int, list[int]] = {}
        for i, (x, y) in enumerate(zip(a, b)):
            if x.shape != y.shape:
                raise ValueError(f"pair {i}: reference and test differ in length ({x.size} vs {y.size})")
            groups.setdefault(x.size, []).append(i)
        out = [float("nan")] * len(refs)
        with torch.inference_mode():
            for idx in groups.values():
                for k in range(0, len(idx), self.batch_size):
                    chunk = idx[k: k + self.batch_size]
                    ea = self._reference_embeddings([a[i] for i in chunk])
                    eb = self.embed([b[i] for i in chunk])
                    d = self.model.model_dist(ea, eb).reshape(-1).double().cpu().numpy()
                    for i, v in zip(chunk, d):
                        out[i] = float(v)
        return out

    def _reference_embeddings(self, clips: list[np.ndarray]) -> Any:
        """Embeddings of equal-length references, from the small per-instance cache where possible."""
        import hashlib

        import torch

        keys = [hashlib.sha1(c.tobytes()).digest() + c.size.to_bytes(8, "little") for c in clips]
        with self._lock:  # one worker's threads share the loaded metric
            found = {key: self._refs[key] for key in keys if key in self._refs}
        todo = [j for j, key in enumerate(keys) if key not in found]
        if todo:
            fresh = self.embed([clips[j] for j in todo])
            for row, j in enumerate(todo):
                found[keys[j]] = fresh[row]
            with self._lock:
                self._refs.update((keys[j], found[keys[j]]) for j in todo)
                while len(self._refs) > self.REFERENCE_CACHE:
                    self._refs.pop(next(iter(self._refs)))
        return torch.stack([found[key] for key in keys])

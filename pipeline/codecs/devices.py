"""Where learned codecs run (CPU or one GPU) and how many threads they use.

One device per process: a Dask worker started for a GPU sees that GPU as ``cuda`` (the cluster
sets ``CUDA_VISIBLE_DEVICES`` per worker and gives the worker the resource ``GPU=1``), others use
the CPU. The run's device (``auto``, ``cpu``, ``cuda``, ``cuda:N``) overrides the choice, and its
inference threads the number of intra-op threads (torch and TensorFlow); both travel with the run
(:mod:`pipeline.codecs.runtime`; defaults ``$MPQ_DEVICE`` and ``$MPQ_INFERENCE_THREADS`` on the client).

Numerics are pinned for reproducible entropy coding: TF32 off and deterministic cuDNN on GPUs,
since an entropy decoder must recompute the encoder's probability tables to the last bit.
"""
from __future__ import annotations

import os
import platform
import threading
from typing import ClassVar

from ..errors import ConfigError
from .runtime import DEVICE_ENV, current, device_request
from .runtime import THREADS_ENV as THREADS_ENV  # re-exported: where the variable was named before


_lock = threading.Lock()
_configured: set[str] = set()


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_available(framework: str = "torch") -> bool:
    """Whether ``framework`` (``torch`` or ``tensorflow``) sees a GPU."""
    if framework == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    import torch

    return bool(torch.cuda.is_available())


def choose_device(requested: str | None = None, *, framework: str = "torch") -> str:
    """``requested``, else the run's device (``$MPQ_DEVICE`` outside a run), else ``cuda`` when the framework
    sees a GPU, else ``cpu``."""
    want = device_request(requested or current().device)
    if want == "cpu":
        return "cpu"
    if want == "auto":
        return "cuda" if gpu_available(framework) else "cpu"
    if not gpu_available(framework):
        raise ConfigError(f"device {want!r} was asked for (the run's device, ${DEVICE_ENV} or --device) but "
                          f"{framework} sees no GPU")
    return want


def inference_threads() -> int | None:
    """The run's intra-op threads (``$MPQ_INFERENCE_THREADS`` outside a run), or None to keep the process's
    setting (torch's default, or what a Dask worker's set-up chose: one thread per single-threaded worker)."""
    return current().inference_threads


def configure_torch(device: str) -> None:
    """Set threads and deterministic numerics once per process and device; inference only."""
    import torch

    kind = device.split(":")[0]
    with _lock:
        if kind in _configured:
            return
        n = inference_threads()
        if n is not None and torch.get_num_threads() != n:
            torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(1)  # allowed once, before any parallel work
        except RuntimeError:
            pass
        if kind == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = False  # autotuning may pick different kernels per run
            torch.backends.cudnn.deterministic = True
        _configured.add(kind)


def configure_tensorflow() -> None:
    """Threads and full-precision float32 (no TF32) for TensorFlow, once per process.

    Op determinism is not forced: it makes TensorFlow refuse ops without a deterministic GPU kernel,
    which could stop a published graph from running at all."""
    import tensorflow as tf

    with _lock:
        if "tensorflow" in _configured:
            return
        n = inference_threads()
        try:
            if n is not None:
                tf.config.threading.set_intra_op_parallelism_threads(n)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            tf.config.experimental.enable_tensor_float_32_execution(False)
        except RuntimeError:  # TF already initialised by the caller: keep its settings
            pass
        _configured.add("tensorflow")


def tf_device(device: str) -> str:
    """TensorFlow's name for one of our device strings: ``cpu`` -> ``/CPU:0``, ``cuda:1`` -> ``/GPU:1``."""
    if device == "cpu":
        return "/CPU:0"
    return f"/GPU:{device.partition(':')[2] or 0}"


def device_name(device: str, *, framework: str = "torch") -> str:
    """What the recorded ``device_name`` says: the GPU model, or the CPU architecture."""
    if not device.startswith("cuda"):
        return platform.machine() or "cpu"
    if framework == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        index = int(device.partition(":")[2] or 0)
        details = tf.config.experimental.get_device_details(gpus[index]) if index < len(gpus) else {}
        return str(details.get("device_name", "GPU"))
    import torch

    return torch.cuda.get_device_name(torch.device(device))


class LazyDevice:
    """Mixin for learned codecs: the device is chosen (and its framework configured) on first use,
    in the worker process that runs the codec, not where the codec object was built."""

    framework: ClassVar[str] = "torch"
    _requested: str | None = None
    _device: str | None = None

    def _set_device_request(self, device: str | None) -> None:
        self._requested, self._device = device, None

    @property
    def device(self) -> str:
        if self._device is None:
            if self.framework == "tensorflow":
                configure_tensorflow()
                self._device = choose_device(self._requested, framework="tensorflow")
            else:
                self._device = choose_device(self._requested)
                configure_torch(self._device)
        return self._device

"""Test-only codecs for fault and deployment tests: real PNG coding (Pillow) plus one misbehaviour.

Importing this module registers them; tests import it inside a fixture and unregister them after
(see ``registered`` below), so the registry-driven tests and README tables never see them. Worker
processes import it by module name (``ShardTask.modules``), so it must be on their ``sys.path``:
LocalCluster workers inherit the test process's path, ``dask worker`` processes get ``PYTHONPATH``.

A sample is *poison* when its image is exactly ``POISON_SHAPE`` (height, width): tests make one
such image among ordinary ones.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import time

import numpy as np
from PIL import Image

from pipeline.codecs import register
from pipeline.codecs.base import Encoded, ImageCodec

POISON_SHAPE = (17, 23)
SLOW_ENV = "MPQ_TEST_SLOW_S"  # seconds the slow codec sleeps per sample


def is_poison(rgb: np.ndarray) -> bool:
    return tuple(rgb.shape[:2]) == POISON_SHAPE


def on_gpu_worker() -> bool | None:
    """Whether this runs in a Dask worker that declares a GPU (None outside Dask)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    return bool(worker.state.total_resources.get("GPU"))


class _PngBase(ImageCodec):
    extension = "png"
    library = "Pillow (zlib), test only"
    lossless = True

    def _png(self, rgb: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def encode(self, rgb: np.ndarray) -> Encoded:
        return Encoded(self._png(rgb), self.extension)

    def decode(self, payload: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(payload)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


@register
class CrashPng(_PngBase):
    """Ends its process without a word on the poison sample (as a library calling exit() or abort() would)."""

    name = "test-crash-png"
    summary = "test: os._exit on the poison sample"

    def encode(self, rgb: np.ndarray) -> Encoded:
        if is_poison(rgb):
            sys.stderr.flush()
            os._exit(86)
        return super().encode(rgb)


@register
class SegfaultPng(_PngBase):
    """A real segmentation fault (a read of address 0) on the poison sample."""

    name = "test-segv-png"
    summary = "test: SIGSEGV on the poison sample"

    def encode(self, rgb: np.ndarray) -> Encoded:
        if is_poison(rgb):
            import faulthandler

            faulthandler.disable()  # no traceback dump: just the crash
            ctypes.string_at(0)
        return super().encode(rgb)


@register
class RaisePng(_PngBase):
    """Raises an ordinary exception on the poison sample."""

    name = "test-raise-png"
    summary = "test: raises on the poison sample"

    def encode(self, rgb: np.ndarray) -> Encoded:
        if is_poison(rgb):
            raise RuntimeError("test codec refuses the poison sample")
        return super().encode(rgb)


@register
class SlowPng(_PngBase):
    """Sleeps ``$MPQ_TEST_SLOW_S`` per sample, so a run lasts long enough to be interrupted."""

    name = "test-slow-png"
    summary = "test: PNG after a sleep"

    def encode(self, rgb: np.ndarray) -> Encoded:
        time.sleep(float(os.environ.get(SLOW_ENV, "0.05")))
        return super().encode(rgb)


@register
class WherePng(_PngBase):
    """Records whether its worker declares a GPU (in the manifest and the sample's .json)."""

    name = "test-where-png"
    summary = "test: PNG that says where it ran"

    def encode(self, rgb: np.ndarray) -> Encoded:
        time.sleep(float(os.environ.get(SLOW_ENV, "0.05")))
        return Encoded(self._png(rgb), self.extension, info={"on_gpu_worker": on_gpu_worker()})


@register
class GpuPng(WherePng):
    """Declares that it needs a GPU (as learned codecs do) and records whether its worker has one."""

    name = "test-gpu-png"
    summary = "test: routed like a learned codec"
    needs_gpu = True


NAMES = ("test-crash-png", "test-segv-png", "test-raise-png", "test-slow-png", "test-where-png", "test-gpu-png")


def registered() -> contextlib.AbstractContextManager[object]:
    """This module imported (codecs registered) for the duration; unregistered afterwards."""
    import fixtures

    return fixtures.registered_codecs(__name__, NAMES)

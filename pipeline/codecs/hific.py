"""HiFiC (Mentzer et al. 2020), the generative codec of the MPQ study, through tensorflow-compression's
published models.

An optional extra (``pip install 'mpq-pipeline[hific]'``: tensorflow 2.14 and tensorflow-compression
2.14, which exist for Python 3.9 to 3.11 only). The three published operating points are the
metagraphs ``hific-lo``, ``hific-mi`` and ``hific-hi``, used as tensorflow-compression's ``tfci``
tool does: the metagraph's ``sender`` signature turns an image into tensors, packed with
``tfc.PackedTensors``; its ``receiver`` signature turns them back into an image.

Weights: ``<name>.metagraph`` in ``$MPQ_WEIGHTS_DIR`` when set, else in
``${XDG_CACHE_HOME:-~/.cache}/mpq-pipeline/tfc_metagraphs``; a missing file is downloaded from
tensorflow-compression's model storage unless ``MPQ_OFFLINE=1``. These files carry no published
hash, so none is checked. A metagraph is a protobuf, not a pickle, but it is a program: only use
files from that storage.

The payload is a ``.bin`` (:mod:`pipeline.codecs.bitstream`) holding one string, the packed tensors.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import bitstream, devices, weights
from ..errors import ConfigError
from .params import Param
from .spec import CodecSpec
from . import register
from .base import Encoded, ImageCodec

URL_PREFIX = "https://storage.googleapis.com/tensorflow_compression/metagraphs"
INSTALL_HINT = "pip install 'mpq-pipeline[hific]' (tensorflow and tensorflow-compression 2.14, Python 3.9-3.11)"
#: the image is padded to a multiple of this (the synthesis transform's 16 times the hyperprior's 4)
STRIDE = 64

_signatures: dict[tuple[Any, ...], Any] = {}
_signatures_lock = threading.Lock()


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
    except PackageNotFoundError:
        return False
    return True


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mpq-pipeline" / "tfc_metagraphs"


@register
class HiFiC(devices.LazyDevice, ImageCodec):
    name = "hific"
    extension = bitstream.EXTENSION
    library = "tensorflow-compression"
    summary = "HiFiC generative compression (Mentzer et al. 2020), tensorflow-compression's published models"
    needs_gpu = True
    reconstruction = True
    params = (
        Param("level", str, "mi", "published operating point: lo, mi or hi (bitrate)", short="l",
              choices=("lo", "mi", "hi"), in_tag=True),
    )
    framework: ClassVar[str] = "tensorflow"

    def __init__(self, spec: CodecSpec, *, device: str | None = None):
        super().__init__(spec)
        self._set_device_request(device)

    # ------------------------------------------------------------------ registry hooks

    @classmethod
    def unavailable(cls) -> str | None:
        missing = [m for m in ("tensorflow", "tensorflow_compression") if importlib.util.find_spec(m) is None]
        if missing:
            return f"{' and '.join(missing)} not installed: {INSTALL_HINT}"
        return None

    @classmethod
    def versions(cls) -> dict[str, str]:
        from importlib.metadata import version

        return {"tensorflow": version("tensorflow") if _installed("tensorflow") else version("tensorflow-cpu"),
                "tensorflow-compression": version("tensorflow-compression")}

    @classmethod
    def model_name(cls, spec: CodecSpec) -> str:
        return f"hific-{spec['level']}"

    @classmethod
    def checkpoint(cls, spec: CodecSpec) -> Path:
        url = f"{URL_PREFIX}/{cls.model_name(spec)}.metagraph"
        folder = weights.weights_dir_override() or default_cache()
        return weights.fetch(url, folder, what=spec.canonical, check_hash=False)

    @classmethod
    def preflight(cls, spec: CodecSpec) -> None:
        cls.checkpoint(spec)

    # ------------------------------------------------------------------ model and device

    def environment(self) -> dict[str, str]:
        """What the ``.json`` records and a decoder compares: device, its name, library versions."""
        return {"device": self.device.split(":")[0],
                "device_name": devices.device_name(self.device, framework=self.framework), **self.versions()}

    def _signature(self, which: str) -> Any:
        """The metagraph's ``sender`` or ``receiver`` signature as a callable (cached per process)."""
        path = self.checkpoint(self.spec)
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, which)
        with _signatures_lock:
            if key not in _signatures:
                _signatures[key] = self._import(path, which)
            return _signatures[key]

    @staticmethod
    def _import(path: Path, which: str) -> Any:
        import tensorflow as tf
        import tensorflow_compression  # noqa: F401 - registers the range-coding ops the graphs use
        from google.protobuf.message import DecodeError

        metagraph = tf.compat.v1.MetaGraphDef()
        try:
            metagraph.ParseFromString(path.read_bytes())
        except DecodeError as exc:
            raise ConfigError(f"{path} is not a TensorFlow metagraph: {exc}") from None
        if which not in metagraph.signature_def:
            raise ConfigError(f"{path} has no {which!r} signature (has: {', '.join(metagraph.signature_def)})")
        wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.train.import_meta_graph(metagraph), [])
        sig = metagraph.signature_def[which]
        inputs = [wrapped.graph.as_graph_element(sig.inputs[k].name) for k in sorted(sig.inputs)]
        outputs = [wrapped.graph.as_graph_element(sig.outputs[k].name) for k in sorted(sig.outputs)]
        return wrapped.prune(inputs, outputs)

    # ------------------------------------------------------------------ coding

    def encode(self, rgb: np.ndarray) -> Encoded:
        import tensorflow as tf
        import tensorflow_compression as tfc

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected RGB uint8 (H, W, 3), got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        padded = np.pad(rgb, ((0, -h % STRIDE), (0, -w % STRIDE), (0, 0)), mode="edge")
        sender = self._signature("sender")
        with tf.device(devices.tf_device(self.device)):
            tensors = sender(tf.constant(padded[None]))
        packed = tfc.PackedTensors()  # no model id inside: the .bin header names the setting
        packed.pack(tensors)
        payload = bitstream.pack(self.spec.canonical, (h, w), [[packed.string]])
        return Encoded(payload, self.extension, info=self.environment())

    @classmethod
    def stream_spec(cls, payload: bytes) -> str | None:
        return bitstream.unpack(payload).spec  # the .bin header names its setting

    def decode(self, payload: bytes) -> np.ndarray:
        import tensorflow as tf
        import tensorflow_compression as tfc

        stream = bitstream.unpack(payload)
        if stream.spec != self.spec.canonical:
            raise bitstream.BitstreamError(f"stream was encoded with {stream.spec}, not {self.spec.canonical}")
        if len(stream.groups) != 1 or len(stream.groups[0]) != 1:
            raise bitstream.BitstreamError("a HiFiC stream holds exactly one string (the packed tensors)")
        receiver = self._signature("receiver")
        packed = tfc.PackedTensors(stream.groups[0][0])
        with tf.device(devices.tf_device(self.device)):
            outputs = receiver(*packed.unpack([t.dtype for t in receiver.inputs]))
        image = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        arr = np.asarray(image.numpy())
        if arr.ndim == 4:
            arr = arr[0]
        if arr.shape[0] < stream.height or arr.shape[1] < stream.width or arr.shape[2] != 3:
            raise bitstream.BitstreamError(f"receiver gave {arr.shape}, smaller than the image "
                                           f"{stream.height}x{stream.width}")
        arr = arr[: stream.height, : stream.width]
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.rint(arr)
        return np.clip(arr, 0, 255).astype(np.uint8)

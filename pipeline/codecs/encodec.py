"""EnCodec (Défossez et al. 2022) through Meta's ``encodec`` package, in its own ``.ecdc`` format.

* Models: ``24khz`` (mono, causal, 1.5-24 kbit/s) and ``48khz`` (stereo, 3-24 kbit/s, coded in
  1 s segments, each with its own scale). The audio modality resamples to the model's rate with
  soxr and averages or copies channels, and converts back after decoding.
* Payload: what ``encodec.compress.compress`` writes: the ``ECDC`` magic, a JSON header (model,
  length, codebooks, lm), per-segment scales and the codes, bit-packed or, with ``lm=true``,
  arithmetic-coded with EnCodec's language model (20-30% smaller, much slower). ``bits`` counts
  the whole file, header included; decoding is ``encodec.compress.decompress`` on that file.
* Weights: EnCodec's published checkpoints (model and language model), looked for in
  ``$MPQ_WEIGHTS_DIR`` or else torch hub's cache (``$TORCH_HOME/hub/checkpoints``, where
  ``encodec`` itself downloads them), fetched from EnCodec's URL when missing unless
  ``MPQ_OFFLINE=1``, refused when their SHA-256 does not start with the hash in their name, and
  loaded as tensors only (:mod:`pipeline.codecs.weights`). The architecture comes from encodec's own
  factories (``EncodecModel.encodec_model_24khz(pretrained=False)``, the language model as
  ``EncodecModel.get_lm_model`` builds it); ``pretrained=True`` is not used because its loaders
  unpickle without ``weights_only`` and the language model's loader has no folder option.
* Device: a GPU when torch sees one (``$MPQ_DEVICE`` overrides, see :mod:`pipeline.codecs.devices`);
  on a GPU that runs out of memory the sample is coded on the CPU instead (recorded in ``device``).
* Memory: the 48 kHz model encodes and decodes one 1 s segment at a time. The 24 kHz format holds
  ONE frame of codes for the whole signal, which the model would compute in one pass over the
  whole track (about 18 MB per second of audio on the CPU); here its causal network runs over
  chunks of ten seconds instead (:mod:`pipeline.codecs.encodec_stream`), carrying from one chunk to the
  next what each layer needs (the last input samples of every convolution, the LSTM state, the
  overlapping tail of every transposed convolution), so memory is bounded and the file is still
  one frame in EnCodec's own format. Results are the one-pass computation's up to float rounding
  (about 1e-7: torch's convolution kernels sum in an order that depends on the length), which
  leaves the codes equal unless an embedding lies that close to a tie between two codewords. A
  signal no longer than one chunk runs as one chunk: the very operations of the one-pass model.
"""
from __future__ import annotations

import contextlib
import io
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from . import devices, weights
from ..errors import ConfigError, SampleError
from .params import Param
from .spec import CodecSpec, build_spec
from . import register
from .base import AudioCodec, Encoded
from .encodec_stream import ChunkedModel

ROOT_URL = "https://dl.fbaipublicfiles.com/encodec/v0/"  # encodec.model.ROOT_URL
#: model -> (encodec's model name, sample rate, channels, bandwidths in kbit/s)
MODELS: dict[str, tuple[str, int, int, tuple[float, ...]]] = {
    "24khz": ("encodec_24khz", 24000, 1, (1.5, 3.0, 6.0, 12.0, 24.0)),
    "48khz": ("encodec_48khz", 48000, 2, (3.0, 6.0, 12.0, 24.0)),
}
#: checkpoint file names as EnCodec publishes them ("<name>-<sha256 prefix>.th")
CHECKPOINTS: dict[str, str] = {"24khz": "encodec_24khz-d7cc33bc.th", "48khz": "encodec_48khz-7e698e3e.th"}
LM_CHECKPOINTS: dict[str, str] = {"24khz": "encodec_lm_24khz-1608e3c0.th", "48khz": "encodec_lm_48khz-7add9fc3.th"}

_models: dict[tuple[Any, ...], Any] = {}
_lock = threading.RLock()  # one EnCodec call at a time per process: models are shared and stateful


def weights_folder() -> Path:
    return weights.weights_dir_override() or weights.torch_hub_checkpoints()


def checkpoint(filename: str, what: str) -> Path:
    """The checked local path of one EnCodec checkpoint, downloaded if missing and allowed."""
    return weights.fetch(ROOT_URL + filename, weights_folder(), what=what)


def _build(model: str, path: Path, lm_path: Path | None, device: str) -> Any:
    """EnCodec's architecture from its own factory, our checked weights, and its language model if asked."""
    from encodec.model import EncodecModel, LMModel

    factory = {"24khz": EncodecModel.encodec_model_24khz, "48khz": EncodecModel.encodec_model_48khz}[model]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*")
        net = factory(pretrained=False)
    try:
        net.load_state_dict(weights.load_state_dict(path))
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {path} does not fit EnCodec {model}: {str(exc).splitlines()[0]}") from None
    net.name = MODELS[model][0]  # what pretrained=True sets; the .ecdc header names the model
    net.eval().requires_grad_(False)
    if lm_path is not None:
        # the language model exactly as EncodecModel.get_lm_model builds it
        lm = LMModel(net.quantizer.n_q, net.quantizer.bins, num_layers=5, dim=200,
                     past_context=int(3.5 * net.frame_rate))
        try:
            lm.load_state_dict(weights.load_state_dict(lm_path))
        except RuntimeError as exc:
            raise ConfigError(f"checkpoint {lm_path} does not fit EnCodec's {model} language model: "
                              f"{str(exc).splitlines()[0]}") from None
        lm.eval().requires_grad_(False)
        lm = lm.to(device)
        net.get_lm_model = lambda: lm  # what compress/decompress call for lm=true
    return net.to(device)


@contextlib.contextmanager
def _as_encodec_model(net: Any) -> Iterator[None]:
    """Let ``encodec.compress.decompress`` find ``net`` under its model name (it builds models itself)."""
    import importlib

    ec = importlib.import_module("encodec.compress")  # the module (encodec.compress is also a function)
    saved = dict(ec.MODELS)
    ec.MODELS[net.name] = lambda: net
    try:
        yield
    finally:
        ec.MODELS.clear()
        ec.MODELS.update(saved)


@register
class EnCodec(devices.LazyDevice, AudioCodec):
    name = "encodec"
    extension = "ecdc"
    library = "encodec (Meta), PyTorch"
    needs_gpu = True
    uses_torch = True
    summary = "EnCodec neural audio codec (24 kHz mono or 48 kHz stereo), its .ecdc format, optional LM coding"
    params = (
        Param("model", str, "24khz", "24khz (mono) or 48khz (stereo)", short="m", choices=tuple(MODELS),
              in_tag=True),
        Param("kbps", float, 6.0, "bandwidth: 1.5 (24khz only), 3, 6, 12 or 24 kbit/s", short="k",
              choices=(1.5, 3.0, 6.0, 12.0, 24.0), in_tag=True),
        Param("lm", bool, False, "entropy-code with EnCodec's language model (20-30% smaller, much slower)",
              short="lm"),
    )
    channel_counts: ClassVar[tuple[int, ...]] = (1, 2)

    def __init__(self, spec: CodecSpec, *, device: str | None = None):
        super().__init__(spec)
        self._set_device_request(device)

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, Any]:
        allowed = MODELS[values["model"]][3]
        if values["kbps"] not in allowed:
            raise ConfigError(f"encodec: the {values['model']} model codes at {', '.join(map(str, allowed))} "
                              f"kbit/s, not {values['kbps']}")
        return values

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import encodec  # noqa: F401
            import torch  # noqa: F401
        except ImportError as exc:
            return f"encodec is not installed (pip install encodec torch): {exc}"
        return None

    @classmethod
    def versions(cls) -> dict[str, str]:
        from importlib.metadata import version

        import torch

        return {"encodec": version("encodec"), "torch": torch.__version__}

    @classmethod
    def checkpoints(cls, spec: CodecSpec) -> tuple[Path, Path | None]:
        model = spec["model"]
        path = checkpoint(CHECKPOINTS[model], f"{spec.canonical} (EnCodec {model} model)")
        lm = checkpoint(LM_CHECKPOINTS[model], f"{spec.canonical} (EnCodec {model} language model)") \
            if spec["lm"] else None
        return path, lm

    @classmethod
    def preflight(cls, spec: CodecSpec) -> None:
        cls.checkpoints(spec)

    @classmethod
    def stream_spec(cls, payload: bytes) -> str | None:
        """The model (and LM coding) an ``.ecdc`` stream's header names, read by encodec's own reader."""
        from encodec import binary

        try:
            meta = binary.read_ecdc_header(io.BytesIO(payload))
        except (ValueError, EOFError) as exc:  # bad magic or version, truncated, not JSON
            raise SampleError(f"not an EnCodec .ecdc stream (version 0): {exc}") from None
        if not isinstance(meta, dict) or "m" not in meta:
            raise SampleError("the .ecdc header names no model")
        model = str(meta["m"]).removeprefix("encodec_")
        return build_spec(cls.name, {"model": model, "lm": bool(meta.get("lm"))}).canonical

    def codec_format(self, rate: int, channels: int) -> tuple[int, int]:
        _, model_rate, model_channels, _ = MODELS[self.spec["model"]]
        return model_rate, model_channels

    def _model(self, device: str) -> Any:
        path, lm_path = self.checkpoints(self.spec)
        key = (self.spec["model"], str(path), path.stat().st_mtime_ns, str(lm_path), device)
        with _lock:
            if key not in _models:
                _models[key] = _build(self.spec["model"], path, lm_path, device)
            return _models[key]

    def _run(self, fn, *args: Any) -> tuple[Any, str]:
        """``fn(model, device, *args)`` on the chosen device; a GPU out of memory retries on the CPU."""
        import torch

        device = self.device
        try:
            with _lock:
                return fn(self._model(device), device, *args), device
        except torch.cuda.OutOfMemoryError:
            if device == "cpu":
                raise
            torch.cuda.empty_cache()
            with _lock:
                return fn(self._model("cpu"), "cpu", *args), "cpu"

    def encode(self, samples: np.ndarray, rate: int) -> Encoded:
        import torch
        from encodec import binary
        from encodec.compress import compress

        _, model_rate, model_channels, _ = MODELS[self.spec["model"]]
        if rate != model_rate or samples.shape[1] != model_channels:
            raise SampleError(f"EnCodec {self.spec['model']} takes {model_channels} channel(s) at {model_rate} Hz, "
                              f"got {samples.shape[1]} at {rate} Hz")

        def run(net: Any, device: str, x: np.ndarray) -> tuple[bytes, int]:
            net.set_target_bandwidth(float(self.spec["kbps"]))
            wav = torch.from_numpy(np.ascontiguousarray(x.T, dtype=np.float32)).to(device)
            with torch.inference_mode():
                # ChunkedModel stands in for the EncodecModel: it has every method compress() calls
                payload = compress(ChunkedModel(net), wav, use_lm=bool(self.spec["lm"]))  # type: ignore[arg-type]
            segments = len(range(0, x.shape[0], net.segment_stride or x.shape[0]))
            return payload, segments

        (payload, segments), device = self._run(run, samples)
        fo = io.BytesIO(payload)
        header = binary.read_ecdc_header(fo)
        if header.get("al") != samples.shape[0]:
            raise SampleError(f"EnCodec wrote a stream of {header.get('al')} samples for {samples.shape[0]}")
        info = {"container_bytes": len(payload), "setup_bytes": fo.tell(), "packets": segments,
                "device": device.split(":")[0], "device_name": devices.device_name(device)}
        return Encoded(payload, self.extension, bits=8 * len(payload), info=info)

    def decode(self, payload: bytes) -> tuple[np.ndarray, int]:
        import torch
        from encodec.compress import decompress

        def run(net: Any, device: str, data: bytes) -> tuple[np.ndarray, int]:
            with _as_encodec_model(ChunkedModel(net)), torch.inference_mode():
                try:
                    wav, sr = decompress(data, device=device)
                except (EOFError, ValueError, KeyError, AssertionError, RuntimeError) as exc:
                    if isinstance(exc, torch.cuda.OutOfMemoryError):
                        raise
                    raise SampleError(f"EnCodec cannot decode the stream: {type(exc).__name__}: {exc}") from None
            return np.ascontiguousarray(wav.float().cpu().numpy().T), int(sr)

        (samples, sr), _ = self._run(run, payload)
        return samples, sr

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
  chunks of :data:`CHUNK_SECONDS` instead (:class:`ChunkedModel`), carrying from one chunk to the
  next what each layer needs (the last input samples of every convolution, the LSTM state, the
  overlapping tail of every transposed convolution), so memory is bounded and the file is still
  one frame in EnCodec's own format. Results are the one-pass computation's up to float rounding
  (about 1e-7: torch's convolution kernels sum in an order that depends on the length), which
  leaves the codes equal unless an embedding lies that close to a tie between two codewords. A
  signal no longer than one chunk runs as one chunk: the very operations of the one-pass model.
"""
from __future__ import annotations

import contextlib
import functools
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

ROOT_URL = "https://dl.fbaipublicfiles.com/encodec/v0/"  # encodec.model.ROOT_URL
#: length of the chunks the 24 kHz model runs over (rounded to whole frames of 320 samples)
CHUNK_SECONDS = 10.0
#: fewest frames in a chunk: the first chunk must be longer than every layer's left padding (6)
MIN_CHUNK_FRAMES = 8
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


def _hop(net: Any) -> int:
    """Samples per frame of codes (320 at 24 kHz): the product of the encoder's strides."""
    return int(np.prod(net.encoder.ratios))


def chunk_samples(net: Any, seconds: float | None = None) -> int:
    """Samples per chunk: ``seconds`` (default :data:`CHUNK_SECONDS`) in whole frames of the model's hop."""
    seconds = CHUNK_SECONDS if seconds is None else seconds
    return _hop(net) * max(MIN_CHUNK_FRAMES, round(seconds * net.sample_rate / _hop(net)))


def streamable(net: Any) -> bool:
    """Whether ``net`` codes the whole signal as one frame with a causal network that can run in chunks.

    True for the 24 kHz model. The 48 kHz model is segmented already, normalises each segment by its
    volume, and its convolutions are neither causal nor free of normalisation over time.
    """
    from torch import nn
    from encodec.modules.conv import SConv1d, SConvTranspose1d

    if net.segment is not None or net.normalize:
        return False
    for m in [*net.encoder.modules(), *net.decoder.modules()]:
        if isinstance(m, SConv1d) and not (m.causal and isinstance(m.conv.norm, nn.Identity)):
            return False
        if isinstance(m, SConvTranspose1d) and not (m.causal and m.trim_right_ratio == 1.0
                                                    and isinstance(m.convtr.norm, nn.Identity)):
            return False
    return True


class _Stream:
    """One signal through a causal SEANet encoder or decoder, chunk after chunk, with state carried over.

    While :meth:`installed`, encodec's own modules inside ``net`` compute each chunk as the one-pass
    network would compute that stretch of the signal:

    * ``SConv1d``: its ``forward`` is replaced by :meth:`_conv`, which gives the inner convolution
      the layer's last ``padding_total`` input samples from the previous chunk where the module
      pads on the left (reflecting, on the first chunk, as the module does), and pads on the right
      only in the last chunk, to complete the last frame as the module does.
    * ``SConvTranspose1d``: a hook on its inner transposed convolution adds the previous chunk's
      overlapping tail (``kernel - stride`` samples, without the bias, which is then added once)
      to the start of this chunk's raw output and keeps this chunk's tail; the module then trims
      that tail as it always does (all on the right, ``trim_right_ratio=1``).
    * ``SLSTM``: hooks on its inner LSTM pass in the ``(h, c)`` state the previous chunk left.

    Every chunk but the last must be a whole number of frames (a multiple of every stride). The
    modules are changed while installed, so the model codes one signal at a time (the codec holds
    its lock around every call).
    """

    def __init__(self, net: Any):
        self.net = net
        self.last = False
        self.state: dict[Any, Any] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator["_Stream"]:
        from encodec.modules.conv import SConv1d, SConvTranspose1d
        from encodec.modules.lstm import SLSTM

        patched: list[Any] = []
        handles: list[Any] = []
        try:
            for m in self.net.modules():
                if isinstance(m, SConv1d):
                    # per-instance patch for chunked streaming, undone in the finally below
                    m.forward = functools.partial(self._conv, m)  # type: ignore[method-assign]
                    patched.append(m)
                elif isinstance(m, SConvTranspose1d):
                    handles.append(m.convtr.register_forward_hook(functools.partial(self._overlap_add, m)))
                elif isinstance(m, SLSTM):
                    handles.append(m.lstm.register_forward_pre_hook(self._lstm_state_in))
                    handles.append(m.lstm.register_forward_hook(self._lstm_state_out))
            yield self
        finally:
            for m in patched:
                del m.forward  # the class's forward again
            for h in handles:
                h.remove()
            self.state.clear()

    def __call__(self, x: Any, *, last: bool) -> Any:
        self.last = last
        return self.net(x)

    def _conv(self, m: Any, x: Any) -> Any:
        import torch
        from encodec.modules.conv import get_extra_padding_for_conv1d, pad1d

        conv = m.conv.conv
        kernel, stride, dilation = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        context = (kernel - 1) * dilation - (stride - 1)  # the module's padding_total
        # right padding as the module computes it on the whole signal: every earlier chunk is whole frames
        extra = get_extra_padding_for_conv1d(x, kernel, stride, context)
        if not self.last and extra:
            raise RuntimeError(f"EnCodec chunk of {x.shape[-1]} samples is not a multiple of a stride of {stride}")
        past = self.state.get(m)
        if past is None:  # first chunk: exactly the module's padding
            if not self.last and x.shape[-1] <= context:
                raise RuntimeError(f"EnCodec's first chunk is too short ({x.shape[-1]} <= {context} samples)")
            x = pad1d(x, (context, extra), mode=m.pad_mode)
        else:
            x = torch.cat([past, x], dim=-1)
            if extra:
                x = pad1d(x, (0, extra), mode=m.pad_mode)
        if not self.last and context:
            self.state[m] = x[..., x.shape[-1] - context:].clone()  # a copy: the chunk itself is freed
        return m.conv(x)

    def _overlap_add(self, m: Any, inner: Any, args: Any, y: Any) -> Any:
        overlap = m.convtr.convtr.kernel_size[0] - m.convtr.convtr.stride[0]
        tail = self.state.pop(m, None)
        if tail is not None:
            y[..., :overlap] += tail
        if not self.last:
            bias = m.convtr.convtr.bias
            kept = y[..., y.shape[-1] - overlap:]
            self.state[m] = kept - bias[:, None] if bias is not None else kept.clone()
        return y

    def _lstm_state_in(self, lstm: Any, args: Any) -> Any:
        return (args[0], self.state.get(lstm))

    def _lstm_state_out(self, lstm: Any, args: Any, out: Any) -> None:
        self.state[lstm] = out[1]


class ChunkedModel:
    """An EnCodec model as ``encodec.compress.compress``/``decompress`` use it, run chunk by chunk.

    ``encode`` and ``decode`` give one frame for the whole signal, as the model's own do, but run
    the network over chunks of ``chunk`` samples (default :func:`chunk_samples`) so memory does not
    grow with the length; the residual quantizer works frame by frame, so each chunk's embeddings are
    quantized on their own and the codes concatenated (a few kB per minute). Models that cannot run
    in chunks (:func:`streamable`) run as they are. Everything else is the wrapped model's.
    """

    def __init__(self, net: Any, *, chunk: int | None = None):
        if chunk is not None and (chunk % _hop(net) or chunk < MIN_CHUNK_FRAMES * _hop(net)):
            raise ValueError(f"an EnCodec chunk must be a whole number of frames of {_hop(net)} samples, "
                             f"at least {MIN_CHUNK_FRAMES}, not {chunk} samples")
        self._net = net
        self._chunk = chunk

    def __getattr__(self, name: str) -> Any:
        if name == "_net":  # not set yet (copy, unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self._net, name)

    def to(self, device: Any) -> "ChunkedModel":  # decompress moves "its" model to the device asked
        self._net.to(device)
        return self

    @property
    def chunk(self) -> int:
        return self._chunk or chunk_samples(self._net)

    def encode(self, x: Any) -> list[tuple[Any, Any]]:
        import torch

        net = self._net
        length = x.shape[-1]
        if not streamable(net) or length == 0:
            return net.encode(x)
        chunk = self.chunk
        codes = []
        with torch.no_grad(), _Stream(net.encoder).installed() as stream:
            for start in range(0, length, chunk):
                emb = stream(x[..., start:start + chunk], last=start + chunk >= length)
                codes.append(net.quantizer.encode(emb, net.frame_rate, net.bandwidth))  # [K, B, T]
        return [(torch.cat(codes, dim=-1).transpose(0, 1), None)]

    def decode(self, frames: list[tuple[Any, Any]]) -> Any:
        import torch

        net = self._net
        if not streamable(net) or len(frames) != 1:
            return net.decode(frames)
        (codes, scale), = frames
        step = self.chunk // _hop(net)  # frames per chunk
        total = codes.shape[-1]
        out = []
        with torch.no_grad(), _Stream(net.decoder).installed() as stream:
            for start in range(0, total, step):
                emb = net.quantizer.decode(codes[:, :, start:start + step].transpose(0, 1))
                out.append(stream(emb, last=start + step >= total))
        wav = torch.cat(out, dim=-1) if out else net.decode(frames)
        return wav if scale is None else wav * scale.view(-1, 1, 1)


@register
class EnCodec(devices.LazyDevice, AudioCodec):
    name = "encodec"
    extension = "ecdc"
    library = "encodec (Meta), PyTorch"
    needs_gpu = True
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

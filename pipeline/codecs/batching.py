"""Learned image codecs at throughput: the network batched over images of one padded size, checked exact.

The interface a codec implements to be batched (:class:`BatchImageCodec`) is three methods:
``batch_key(rgb)`` (images with equal keys go through the network together; None: code this one
alone), ``encode_batch(rgbs)`` and ``decode_batch(payloads)``, each giving per image exactly what
``encode`` / ``decode`` give for it alone. :class:`CompressAIBatching` implements them for any model
with CompressAI's ``compress(x) -> {"strings": [[per image] per group], "shape"}`` and
``decompress(strings, shape) -> {"x_hat"}`` (the zoo, a researcher's own checkpoint, MS-ILLM); a
host class gives the model, its stride and the stream's header.

Exactness first. A convolution's float result may depend on the batch it runs in (the library
picks kernels by shape), and one flipped rounding changes a bitstream, or makes a decoder that runs
one image (``mpq decode``) compute other probabilities than the encoder did. So the first batch of
every (model, device, padded size, batch size) in a process is also coded image by image, with a
hook on every module of the network: the batch path is used for that key only when every module's
output (each layer's floats, hashed image by image), every string and every decoded float is
identical; otherwise that key is coded one image at a time for the rest of the process (a warning
says so). Comparing the layers, not only the bytes, matters: a float difference flips a rounding
only now and then, so equal bytes on one batch would not show that the kernels differ.
Batch sizes are powers of two, so few keys need the check. The check is evidence, not proof: it
shows the kernels chosen for that shape agree on one batch of real images, which is what makes a
float differ (kernels, not data); a library that picked kernels by value would escape it.

A model whose ``compress``/``decompress`` speak another dialect (other output keys, a batch of
streams given otherwise) overrides :meth:`CompressAIBatching._compress` (batch in, per image its
strings per group) and :meth:`CompressAIBatching._decompress` (streams in, float ``x_hat`` batch out);
everything else, the check included, stays.

Kept latents: a transcode decodes what it just encoded. :meth:`CompressAIBatching.encode_batch` keeps
each image's quantized latent ``y_hat`` with its encoding (where the model's dialect allows, see
:mod:`pipeline.codecs.latents`) and :meth:`CompressAIBatching.decode_encoded` synthesises the pixels
from it, skipping the entropy decoding; the same check (:func:`verified`) decides per key, against the
bytes decoded one image at a time, whether that path gives every ``y_hat`` and every float of ``x_hat``
identically (else :class:`KeptLatentInexactWarning`, and the bytes for that key).

Overlap: :func:`run_chunks` keeps two batches in flight on a small thread pool, so the entropy
coding of one (Python and C++ on the CPU, holding the GIL) runs while the network of the next runs
(torch releases the GIL in its kernels, and a GPU runs asynchronously).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, ClassVar, Hashable, Iterator, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np

from . import bitstream, latents
from .base import Encoded

#: batches in flight at once: one in the network while the previous one is entropy coded
IN_FLIGHT = 2

T = TypeVar("T")


#: decode what this process just encoded from the latents its encoder kept, where checked exact
#: (:mod:`pipeline.codecs.latents`); False: always from the bytes
KEEP_LATENTS = True


class BatchInexactWarning(RuntimeWarning):
    """Batching a network changed a float on this device for one size: those images are coded alone."""


class KeptLatentInexactWarning(RuntimeWarning):
    """The synthesis from the encoder's kept latents differed from decoding the bytes: decoded from the bytes."""


@runtime_checkable
class BatchImageCodec(Protocol):
    """What the batch path needs from a codec; each method agrees image by image with encode/decode."""

    max_batch: int

    def batch_key(self, rgb: np.ndarray) -> Hashable | None: ...

    def encode_batch(self, rgbs: Sequence[np.ndarray]) -> list[Encoded]: ...

    def decode_batch(self, payloads: Sequence[bytes]) -> list[np.ndarray]: ...


def batchable(codec: Any) -> bool:
    """Whether ``codec`` takes the batch path (it implements the interface and allows more than one)."""
    return isinstance(codec, BatchImageCodec) and int(getattr(codec, "max_batch", 1)) > 1


def decode_encoded(codec: Any, encs: Sequence[Encoded]) -> tuple[list[np.ndarray], str | None]:
    """Pixels of what ``codec`` just encoded in this process, and where a codec that keeps its latents
    took them from (``"latent"`` or ``"bytes"``; see :meth:`CompressAIBatching.decode_encoded`); other
    codecs decode the payloads (None)."""
    own = getattr(codec, "decode_encoded", None)
    if callable(own):
        pixels, source = own(encs)
        return pixels, source
    if len(encs) == 1:
        return [codec.decode(encs[0].payload)], None
    return codec.decode_batch([e.payload for e in encs]), None


def chunks(keys: Sequence[Hashable | None], max_batch: int) -> list[list[int]]:
    """Indices grouped by key (first appearance order), cut into power-of-two batches of at most ``max_batch``."""
    groups: dict[Hashable, list[int]] = {}
    out: list[list[int]] = []
    for i, key in enumerate(keys):
        if key is None:
            out.append([i])
        else:
            groups.setdefault(key, []).append(i)
    top = 1 << max(0, int(max_batch).bit_length() - 1)  # the largest power of two <= max_batch
    for members in groups.values():
        pos = 0
        while pos < len(members):
            size = top
            while size > len(members) - pos:
                size //= 2
            out.append(members[pos: pos + size])
            pos += size
    return out


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="mpq-batch")
        return _pool


def run_chunks(work: Callable[[list[int]], T], parts: Sequence[list[int]]) -> list[T]:
    """``work(part)`` for every part, at most :data:`IN_FLIGHT` at once, results in order.

    The caller's runtime settings (weights folder, device: context variables) are copied into each job.
    """
    import contextvars

    if len(parts) < 2:
        return [work(p) for p in parts]
    pool = _executor()
    futures = [pool.submit(contextvars.copy_context().run, work, p) for p in parts]
    return [f.result() for f in futures]


# ------------------------------------------------------------------------------ exactness checks

_exact: OrderedDict[tuple[Any, ...], bool] = OrderedDict()
_tokens = itertools.count()
_probe_lock = threading.RLock()  # a probe's reference path may run another key's probe
_exact_lock = threading.Lock()
_MAX_KEYS = 4096


def model_token(model: Any) -> int:
    """A number naming this model object for the process's life (an ``id`` may be reused after it is freed)."""
    with _exact_lock:
        token = model.__dict__.get("_mpq_batch_token")
        if token is None:
            token = model.__dict__["_mpq_batch_token"] = next(_tokens)
        return int(token)


def _known(key: tuple[Any, ...]) -> bool | None:
    with _exact_lock:
        return _exact.get(key)


def _learn(key: tuple[Any, ...], exact: bool, warning: RuntimeWarning) -> None:
    with _exact_lock:
        _exact[key] = exact
        while len(_exact) > _MAX_KEYS:
            _exact.popitem(last=False)
    if not exact:
        warnings.warn(warning, stacklevel=4)


def verified(key: tuple[Any, ...], fast: Callable[[], T], reference: Callable[[], T],
             probe: Callable[[], tuple[T, bool]], warning: Callable[[], RuntimeWarning]) -> tuple[T, bool]:
    """``fast()`` where it was found to give ``reference()``'s result for ``key``, else ``reference()``;
    and whether ``fast`` was used.

    The first time a key is met, ``probe()`` computes both, compares them and gives (the result, exact);
    the verdict holds for the rest of the process, and an inexact one warns once (``warning()``).
    """
    known = _known(key)
    if known is False:
        return reference(), False
    if known is not None:
        return fast(), True
    with _probe_lock:  # one probe at a time: its hooks see only its own thread's work
        known = _known(key)  # another batch in flight may have probed this key while this one waited
        if known is None:
            out, exact = probe()
            _learn(key, exact, warning())
            return out, exact
    return (fast(), True) if known else (reference(), False)


class _Trace:
    """Fingerprints of every module output of ``model`` computed by this thread while active.

    Each tensor output is cut along its first dimension (the batch) and each slice hashed, so a batch
    run can be compared image by image, layer by layer, with one-image runs: a float difference
    anywhere in the network is seen even when it flipped no rounding in this batch's bitstream.
    """

    def __init__(self, model: Any):
        self.model, self.calls, self.handles = model, [], []  # type: ignore[var-annotated]
        self.thread = threading.get_ident()

    def hook(self, module: Any, args: Any, output: Any) -> None:
        import torch

        if threading.get_ident() != self.thread:
            return
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                t = t.detach().cpu().contiguous()
                rows = [t] if t.dim() == 0 else list(t)
                self.calls.append([hashlib.blake2b(r.numpy().tobytes(), digest_size=16).digest() for r in rows])

    def __enter__(self) -> "_Trace":
        self.handles = [m.register_forward_hook(self.hook) for m in self.model.modules()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()


class _Inputs:
    """The first input of every call of ``module`` made by this thread while active (``y_hat`` into a synthesis)."""

    def __init__(self, module: Any):
        self.module, self.seen, self.handle = module, [], None  # type: ignore[var-annotated]
        self.thread = threading.get_ident()

    def hook(self, module: Any, args: Any) -> None:
        if threading.get_ident() == self.thread and args:
            self.seen.append(args[0].detach().cpu().clone())

    def __enter__(self) -> "_Inputs":
        self.handle = self.module.register_forward_pre_hook(self.hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.remove()


def _same_tensor(a: Any, b: Any) -> bool:
    import torch

    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))


def _same_layers(batch: list[list[bytes]], single: list[list[bytes]], i: int, n: int) -> bool:
    if len(batch) != len(single):
        return False
    for b, s in zip(batch, single):
        if len(b) == n and len(s) == 1:  # an activation: image i of the batch against the image alone
            if b[i] != s[0]:
                return False
        elif b != s:  # no batch dimension (a reparametrised weight): the whole output
            return False
    return True


def checked(key: tuple[Any, ...], batched: Callable[[], list[T]], alone: Callable[[int], T],
            same: Callable[[T, T], bool], n: int, what: str, model: Any = None, *,
            then: str = "those images are coded one at a time") -> list[T]:
    """The batch result where batching was found exact for ``key``, else the one-image results.

    The first time a key is met both are computed and compared: the results with ``same``, and when
    ``model`` is given every module output of the batch, image by image, with the one-image runs'.
    """
    if n == 1:
        return [alone(0)]

    def probe() -> tuple[list[T], bool]:
        with _Trace(model) if model is not None else contextlib.nullcontext() as trace:
            out = batched()
        singles: list[T] = []
        layers: list[Any] = []
        for i in range(n):
            with _Trace(model) if model is not None else contextlib.nullcontext() as one:
                singles.append(alone(i))
            layers.append(one.calls if one is not None else None)
        exact = all(same(a, b) for a, b in zip(out, singles))
        if trace is not None:
            exact = exact and all(_same_layers(trace.calls, layers[i], i, n) for i in range(n))
        return (out if exact else singles), exact

    return verified(key, batched, lambda: [alone(i) for i in range(n)], probe,
                    lambda: BatchInexactWarning(f"{what}: batching changes the result on this device for {key[2:]} "
                                                f"(shape, batch); {then}"))[0]


@contextlib.contextmanager
def _inference() -> Iterator[None]:
    """No autograd; and quiet about CompressAI's "Inference on GPU is not recommended" (its entropy coder
    can differ between devices; the batch and kept-latent checks compare against one-image decoding)."""
    import torch

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Inference on GPU is not recommended")
        yield


def batch_exact(key: tuple[Any, ...]) -> bool | None:
    """What the check found for ``key`` in this process (None: not checked yet)."""
    return _known(key)


# ------------------------------------------------------------------------------ CompressAI-style models


class CompressAIBatching:
    """``batch_key``/``encode_batch``/``decode_batch`` (and one-image ``encode``) for CompressAI-style models.

    The host class provides ``_model()``, ``_stride(model)``, ``_stream_name()`` (the spec written in the
    ``.bin`` header), ``environment()``, ``device``, ``name`` and ``extension``.
    """

    #: images per batch through the network on a GPU
    gpu_batch: int = 8
    #: on the CPU one: there a batch of 4 at 512x768 cost 5-7 % more CPU time per image than one image
    #: at a time (measured, torch 2.11, 1 thread), so CPU workers code one image at a time
    cpu_batch: int = 1

    @property
    def max_batch(self) -> int:
        return self.cpu_batch if str(self.device).startswith("cpu") else self.gpu_batch

    # host hooks (typed here for mypy; the host class defines them)
    name: ClassVar[str]
    extension: ClassVar[str]
    device: Any

    def _model(self) -> Any:
        raise NotImplementedError

    def _stride(self, model: Any) -> int:
        raise NotImplementedError

    def _stream_name(self) -> str:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        raise NotImplementedError

    def batch_key(self, rgb: np.ndarray) -> Hashable | None:
        stride = self._stride(self._model())
        return (-(-rgb.shape[0] // stride) * stride, -(-rgb.shape[1] // stride) * stride)

    def _input(self, rgb: np.ndarray, stride: int) -> Any:
        import torch
        import torch.nn.functional as F

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected RGB uint8 (H, W, 3), got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        ph, pw = -h % stride, -w % stride
        x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x

    def _compress(self, model: Any, x: Any) -> list[list[bytes]]:
        """Per image of the batch ``x``, its string of every group; checks the latent shape."""
        with _inference():
            out = model.compress(x.to(self.device))
        self._check_shape(model, x, out)
        return [[bytes(group[i]) for group in out["strings"]] for i in range(x.shape[0])]

    def _check_shape(self, model: Any, x: Any, out: dict[str, Any]) -> None:
        stride = self._stride(model)
        expected = (x.shape[2] // stride, x.shape[3] // stride)
        if tuple(int(v) for v in out["shape"]) != expected:
            raise RuntimeError(f"{self.name}: latent shape {tuple(out['shape'])} is not {expected}, which the "
                               f"decoder derives from the image size")

    def _dialect(self, model: Any) -> latents.Dialect | None:
        """How ``model`` keeps its latent; None: decode from the bytes (switched off, an unknown model, or a
        host that speaks its own dialect through :meth:`_compress` / :meth:`_decompress`)."""
        cls = type(self)
        if (not KEEP_LATENTS or cls._compress is not CompressAIBatching._compress
                or cls._decompress is not CompressAIBatching._decompress):
            return None
        return latents.dialect(model)

    def _compress_kept(self, model: Any, x: Any, dialect: latents.Dialect | None) -> list[tuple[list[bytes], Any]]:
        """Per image of the batch ``x``, its strings and, with a ``dialect``, its ``y_hat`` (else None)."""
        if dialect is None:
            return [(groups, None) for groups in self._compress(model, x)]
        with _inference():
            out, y_hat = dialect.compress(model, x.to(self.device))
        self._check_shape(model, x, out)
        return [([bytes(group[i]) for group in out["strings"]], y_hat[i: i + 1]) for i in range(x.shape[0])]

    def encode_batch(self, rgbs: Sequence[np.ndarray]) -> list[Encoded]:
        """The ``.bin`` of each image; each also keeps its ``y_hat`` where the model's dialect allows
        (``Encoded.kept``, for :meth:`decode_encoded` in this process; never stored)."""
        import torch

        model = self._model()
        stride = self._stride(model)
        xs = [self._input(rgb, stride) for rgb in rgbs]
        if len({tuple(x.shape) for x in xs}) != 1:
            raise ValueError("a batch holds images of one padded size (see batch_key)")
        dialect, token = self._dialect(model), model_token(model)
        key = ("encode", token, self.device, tuple(xs[0].shape[2:]), len(xs))
        coded = checked(key, lambda: self._compress_kept(model, torch.cat(xs), dialect),
                        lambda i: self._compress_kept(model, xs[i], dialect)[0],
                        lambda a, b: a[0] == b[0] and _same_tensor(a[1], b[1]), len(xs), self.name, model)
        env, name = self.environment(), self._stream_name()
        return [Encoded(bitstream.pack(name, (rgb.shape[0], rgb.shape[1]), [[s] for s in groups]), self.extension,
                        info=env, kept=None if y_hat is None else latents.Kept(token, y_hat))
                for rgb, (groups, y_hat) in zip(rgbs, coded)]

    def encode(self, rgb: np.ndarray) -> Encoded:
        return self.encode_batch([rgb])[0]

    def _check_stream(self, stream: bitstream.Bitstream) -> None:
        groups = getattr(self, "groups", None)
        if stream.spec != self._stream_name():
            raise bitstream.BitstreamError(f"stream was encoded with {stream.spec}, not {self._stream_name()}")
        if (groups is not None and len(stream.groups) != groups) or any(len(g) != 1 for g in stream.groups):
            raise bitstream.BitstreamError(f"{self.name} expects {groups} groups of one string each, "
                                           f"the stream has {[len(g) for g in stream.groups]}")

    def _decompress(self, model: Any, streams: Sequence[bitstream.Bitstream], shape: tuple[int, int]) -> Any:
        strings = [[s.groups[g][0] for s in streams] for g in range(len(streams[0].groups))]
        with _inference():
            return model.decompress(strings, shape)["x_hat"].float().cpu()

    def _latent_shape(self, model: Any, streams: Sequence[bitstream.Bitstream]) -> tuple[int, int]:
        stride = self._stride(model)
        shapes = {(-(-s.height // stride), -(-s.width // stride)) for s in streams}
        if len(shapes) != 1:
            raise ValueError("a batch holds streams of one padded size (see batch_key)")
        return shapes.pop()

    def _x_hats(self, model: Any, streams: Sequence[bitstream.Bitstream]) -> list[Any]:
        """The decoded floats of each stream, from its bytes (batched where checked exact)."""
        import torch

        shape = self._latent_shape(model, streams)
        key = ("decode", model_token(model), self.device, shape, len(streams))
        return checked(key, lambda: list(self._decompress(model, streams, shape).unbind(0)),
                       lambda i: self._decompress(model, streams[i: i + 1], shape)[0],
                       lambda a, b: bool(torch.equal(a, b)), len(streams), self.name, model)

    @staticmethod
    def _pixels(x_hats: Sequence[Any], streams: Sequence[bitstream.Bitstream]) -> list[np.ndarray]:
        import torch

        # rounding on the CPU: the same for every device
        return [x[:, : s.height, : s.width].mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
                .permute(1, 2, 0).contiguous().numpy() for x, s in zip(x_hats, streams)]

    def decode_streams(self, streams: Sequence[bitstream.Bitstream]) -> list[np.ndarray]:
        """Pixels of streams of this setting and one latent shape, through the network together."""
        return self._pixels(self._x_hats(self._model(), streams), streams)

    def decode_batch(self, payloads: Sequence[bytes]) -> list[np.ndarray]:
        streams = [bitstream.unpack(p) for p in payloads]
        for s in streams:
            self._check_stream(s)
        return self.decode_streams(streams)

    def decode_encoded(self, encs: Sequence[Encoded]) -> tuple[list[np.ndarray], str]:
        """Pixels of what :meth:`encode_batch` just gave in this process, and where they came from.

        ``"latent"``: synthesised from the ``y_hat`` each encoding kept, skipping the entropy decoding;
        ``"bytes"``: decoded from the payloads, as ``mpq decode`` does. Two checks, each once per key
        and process. The kept latents: the first images of a (model, device, latent size) are also
        decoded from their bytes one at a time, and the kept path is taken only where every ``y_hat``
        (captured where decompress feeds the synthesis) and every decoded float was identical;
        otherwise that key decodes the bytes (a :class:`KeptLatentInexactWarning` says so). The
        batch: several kept latents go through the synthesis together only where a batch of that size
        gave, layer by layer, the floats of one latent at a time (:func:`checked`); otherwise they are
        synthesised one at a time, still from the kept latents.
        """
        import torch

        if not encs:
            return [], "bytes"
        model = self._model()
        dialect, token = self._dialect(model), model_token(model)
        streams = [bitstream.unpack(e.payload) for e in encs]
        kept = [e.kept for e in encs]
        if (dialect is None or any(s.spec != self._stream_name() for s in streams)
                or not all(isinstance(k, latents.Kept) and k.token == token for k in kept)):
            return self.decode_batch([e.payload for e in encs]), "bytes"
        for s in streams:
            self._check_stream(s)
        shape = self._latent_shape(model, streams)
        n = len(encs)
        synthesis = getattr(model, dialect.synthesis_module)

        def synthesize(y_hat: Any) -> list[Any]:
            with _inference():
                return list(dialect.synthesize(model, y_hat).float().cpu().unbind(0))

        def one(i: int) -> Any:
            return synthesize(kept[i].y_hat)[0]

        def synthesized() -> list[Any]:
            return checked(("synthesis", token, self.device, shape, n),
                           lambda: synthesize(torch.cat([k.y_hat for k in kept])), one, _same_tensor, n,
                           f"{self.name}: the synthesis from kept latents", synthesis,
                           then="those latents are synthesised one at a time")

        def probe() -> tuple[list[Any], bool]:
            fast, singles, seen = [], [], []
            for i in range(n):  # what a one-image decoder (mpq decode) computes, and the y_hat it feeds its synthesis
                with _Inputs(synthesis) as inputs:
                    singles.append(self._decompress(model, streams[i: i + 1], shape)[0])
                seen.append(inputs.seen)
                fast.append(one(i))
            exact = (all(_same_tensor(a, b) for a, b in zip(fast, singles))
                     and all(len(s) == 1 and _same_tensor(s[0], k.y_hat) for s, k in zip(seen, kept)))
            return (fast if exact else singles), exact

        key = ("kept", token, self.device, shape)
        x_hats, from_latent = verified(
            key, synthesized, lambda: self._x_hats(model, streams), probe,
            lambda: KeptLatentInexactWarning(f"{self.name}: the synthesis from the encoder's latents differs from "
                                             f"decoding the bytes on this device for latent size {shape}; "
                                             f"those images are decoded from their bytes"))
        return self._pixels(x_hats, streams), "latent" if from_latent else "bytes"

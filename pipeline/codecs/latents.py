"""The quantized latent a CompressAI-style model's ``compress`` computes, kept so that the process that
encoded a stream can decode it without entropy decoding.

A transcode decodes every stream right after encoding it (the stored pixels and the metrics come from
that decode). Decoding is entropy decoding (CompressAI's range-ANS, symbol by symbol), which recovers
the quantized latent ``y_hat``, then the synthesis transform. The encoder had ``y_hat`` already, in
the form the decoder rebuilds it: ``decompress`` computes ``y_hat = dequantize(symbols, means)`` with
means predicted from the hyper-latent decoded from its own strings, and ``compress`` decodes that
hyper-latent too before coding ``y`` (so that both index the coder alike). The same call in the
encoder, on the same symbols (``quantize(y, "symbols", means)``, what the coder was given) and the same
means, gives the decoder's ``y_hat`` bit for bit; the synthesis then runs from it.
:class:`~pipeline.codecs.batching.CompressAIBatching` checks that per model, device and latent size
(the first time, against the bytes decoded one image at a time) before relying on it, and a batch's
synthesis per batch size against one latent at a time.

A model's dialect is recognised by the functions its class runs, not by ``isinstance``: a subclass
that overrides ``compress`` or ``decompress`` is not assumed to agree, and is decoded from its bytes.

* A model that defines ``compress_kept(x) -> (what compress returns, y_hat)``, ``synthesize(y_hat) ->
  x_hat`` and ``synthesis_module`` (the attribute name of the module ``decompress`` feeds ``y_hat``),
  in the class that defines its ``compress`` and ``decompress``
  (:class:`pipeline.codecs.msillm_net.HiFiCAutoencoder`).
* CompressAI's ``FactorizedPrior`` (bmshj2018-factorized): ``y`` through the entropy bottleneck,
  ``y_hat`` = symbols + the bottleneck's medians.
* ``ScaleHyperprior`` (bmshj2018-hyperprior): ``y_hat`` = the symbols (a zero-mean conditional).
* ``MeanScaleHyperprior`` (mbt2018-mean): ``y_hat`` = symbols + the means predicted from ``z_hat``.

Not the autoregressive context models (``JointAutoregressiveHierarchicalPriors`` and Cheng 2020:
mbt2018, cheng2020-anchor, cheng2020-attn): their ``compress`` builds ``y_hat`` position by position
inside its own loop through the context model and returns nothing of it; keeping it would mean
rewriting that loop here, so they decode from their bytes (serially, as their decoder must).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Dialect:
    """How one model family's encoder keeps ``y_hat`` and its decoder synthesises from it."""

    name: str
    #: ``(model, x) -> (compress's output, y_hat)``: the strings exactly as ``model.compress(x)`` gives them
    compress: Callable[[Any, Any], tuple[dict[str, Any], Any]]
    #: ``(model, y_hat) -> x_hat``: what ``decompress`` does once it has ``y_hat``
    synthesize: Callable[[Any, Any], Any]
    #: attribute name of the module whose input is ``y_hat`` in ``decompress`` (the check captures it)
    synthesis_module: str


@dataclass(frozen=True)
class Kept:
    """One image's ``y_hat`` as its encoder computed it, and which model object (``model_token``) did."""

    token: int
    y_hat: Any  # (1, C, h, w) tensor on the model's device


def _owner(cls: type, name: str) -> type | None:
    return next((c for c in cls.__mro__ if name in c.__dict__), None)


def _own(model: Any) -> Dialect | None:
    cls = type(model)
    names = ("compress_kept", "synthesize", "synthesis_module", "compress", "decompress")
    owners = {_owner(cls, n) for n in names}
    if len(owners) != 1 or None in owners:
        return None
    return Dialect(cls.__name__, lambda m, x: m.compress_kept(x), lambda m, y: m.synthesize(y),
                   str(cls.synthesis_module))


def _factorized(model: Any, x: Any) -> tuple[dict[str, Any], Any]:
    eb = model.entropy_bottleneck
    y = model.g_a(x)
    strings = eb.compress(y)
    # the medians as EntropyBottleneck.compress and .decompress extend them
    medians = eb._extend_ndims(eb._get_medians().detach(), y.dim() - 2).expand(y.size(0), *([-1] * (y.dim() - 1)))
    y_hat = eb.dequantize(eb.quantize(y, "symbols", medians), medians)
    return {"strings": [strings], "shape": y.size()[-2:]}, y_hat


def _scale(model: Any, x: Any) -> tuple[dict[str, Any], Any]:
    import torch

    gc = model.gaussian_conditional
    y = model.g_a(x)
    z = model.h_a(torch.abs(y))
    z_strings = model.entropy_bottleneck.compress(z)
    z_hat = model.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
    indexes = gc.build_indexes(model.h_s(z_hat))
    y_strings = gc.compress(y, indexes)
    y_hat = gc.dequantize(gc.quantize(y, "symbols"), None, z_hat.dtype)  # decompress's dtype: z_hat's
    return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}, y_hat


def _mean_scale(model: Any, x: Any) -> tuple[dict[str, Any], Any]:
    gc = model.gaussian_conditional
    y = model.g_a(x)
    z = model.h_a(y)
    z_strings = model.entropy_bottleneck.compress(z)
    z_hat = model.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
    scales_hat, means_hat = model.h_s(z_hat).chunk(2, 1)
    indexes = gc.build_indexes(scales_hat)
    y_strings = gc.compress(y, indexes, means=means_hat)
    y_hat = gc.dequantize(gc.quantize(y, "symbols", means_hat), means_hat)
    return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}, y_hat


def _g_s(model: Any, y_hat: Any) -> Any:
    return model.g_s(y_hat).clamp_(0, 1)


#: 16 hex digits of the SHA-256 of the source of ``compress`` + ``decompress`` each dialect above restates
#: (CompressAI 1.2.8). Another library version whose methods read otherwise gets no dialect: its streams
#: come from its own ``compress`` and are decoded from their bytes, never from a restatement that may differ.
_CHECKED_SOURCES = {"FactorizedPrior": "197c879244e0b303", "ScaleHyperprior": "ddbe5fa456986087",
                    "MeanScaleHyperprior": "ba70919036b9bfbe"}


def _source_hash(cls: type) -> str | None:
    import hashlib
    import inspect

    try:
        text = inspect.getsource(cls.compress) + inspect.getsource(cls.decompress)  # type: ignore[attr-defined]
    except (OSError, TypeError):  # no source shipped: not checkable
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _compressai() -> dict[tuple[Any, Any], Dialect]:
    from compressai.models.google import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior

    return {(c.compress, c.decompress): Dialect(c.__name__, f, _g_s, "g_s")
            for c, f in ((FactorizedPrior, _factorized), (ScaleHyperprior, _scale),
                         (MeanScaleHyperprior, _mean_scale))
            if _source_hash(c) == _CHECKED_SOURCES[c.__name__]}


def dialect(model: Any) -> Dialect | None:
    """How ``model`` keeps its latent, or None: decoded from its bytes (see the module docstring)."""
    own = _own(model)
    if own is not None:
        return own
    try:
        known = _compressai()
    except ImportError:
        return None
    cls = type(model)
    return known.get((getattr(cls, "compress", None), getattr(cls, "decompress", None)))

"""A researcher's own trained CompressAI model as a codec: ``compressai:arch=mbt2018-mean,checkpoint=PATH``.

Any CompressAI image model class (a zoo name such as ``mbt2018-mean`` or a class name such as
``MeanScaleHyperprior``) with a state dict the researcher trained. The architecture's ``N``/``M`` come
from the state dict's shapes (the class's ``from_state_dict``) or from ``n=``/``m=``.

Everything about the checkpoints is shared with ``msillm-own`` (:mod:`pipeline.codecs.own`): weights-only
loading, entropy tables rebuilt when the file lacks them, ``sha256=`` filled in from the files and 10 hex
digits of it in the folder tag (``compressai-ambt2018mmean-q1-h1a2b3c4d5e``), several checkpoints for
``quality=K`` / ``bpp=X``, and the ``.bin`` header naming the architecture and 16 hex digits of the
checkpoint's SHA-256 (``compressai:arch=mbt2018-mean,sha256=1a2b...``), never a path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from . import register, weights
from .compressai_zoo import MODEL_CACHE_SIZE, ModelCache
from .own import OwnCheckpoint, fill_missing_tables, own_params
from .params import Param
from .spec import CodecSpec
from ..errors import ConfigError


def architectures() -> dict[str, Any]:
    """CompressAI image model classes by zoo name and by class name."""
    import compressai.models as cm
    from compressai.zoo.image import model_architectures

    out: dict[str, Any] = dict(model_architectures)
    for attr in dir(cm):
        obj = getattr(cm, attr)
        if (isinstance(obj, type) and issubclass(obj, cm.CompressionModel) and obj is not cm.CompressionModel
                and callable(getattr(obj, "compress", None)) and hasattr(obj, "downsampling_factor")):
            out.setdefault(attr, obj)
    return out


def _params() -> tuple[Param, ...]:
    return own_params(
        before=(Param("arch", str, None, "CompressAI model: a zoo name (mbt2018-mean) or a class name "
                      "(MeanScaleHyperprior)", short="a", in_tag=True),),
        after=(Param("n", int, None, "the architecture's N (default: read from the state dict)", minimum=1),
               Param("m", int, None, "the architecture's M (default: read from the state dict)", minimum=1)),
    )


@register
class CompressAICheckpoint(OwnCheckpoint):
    """A CompressAI architecture with the researcher's own weights (see the module docstring)."""

    name = "compressai"
    summary = "any CompressAI image model with your own trained weights (checkpoint=PATH, | for several)"
    params: ClassVar[tuple[Param, ...]] = _params()
    groups: ClassVar[int | None] = None  # per architecture; CompressAI's decompress checks
    models: ClassVar[ModelCache] = ModelCache(MODEL_CACHE_SIZE)

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import compressai  # noqa: F401
        except ImportError as exc:
            return f"CompressAI is not installed (pip install compressai): {exc}"
        return None

    @classmethod
    def _check_model_params(cls, values: dict[str, Any]) -> dict[str, Any]:
        if values["arch"] is None:
            raise ConfigError("compressai: give arch= (a CompressAI model, e.g. mbt2018-mean)")
        known = architectures()
        if values["arch"] not in known:
            raise ConfigError(f"compressai: unknown arch {values['arch']!r} (known: {', '.join(sorted(known))})")
        return values

    def _stream_params(self) -> list[str]:
        return [f"arch={self.spec['arch']}", *(f"{k}={self.spec[k]}" for k in ("n", "m") if self.spec[k] is not None)]

    @classmethod
    def _build(cls, spec: CodecSpec, path: Path) -> Any:
        from compressai.zoo.pretrained import load_pretrained

        arch = architectures()[spec["arch"]]
        state = load_pretrained(weights.load_state_dict(path))  # CompressAI's renames of older key names
        rebuild = fill_missing_tables(state)
        if spec["n"] is None and spec["m"] is None and not hasattr(arch, "from_state_dict"):
            raise ConfigError(f"compressai: {spec['arch']} cannot read N and M from a state dict: give n= and m=")
        try:
            if spec["n"] is not None or spec["m"] is not None:
                model = arch(**{k.upper(): spec[k] for k in ("n", "m") if spec[k] is not None})
                model.load_state_dict(state)
            else:
                model = arch.from_state_dict(state)
        except (RuntimeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise ConfigError(f"checkpoint {path} does not fit {spec['arch']}: "
                              f"{str(exc).splitlines()[0][:300]}") from None
        # tables the file lacks are computed here, on the CPU, before any device: the same for every device
        model.update(force=rebuild)
        return model.eval().requires_grad_(False)

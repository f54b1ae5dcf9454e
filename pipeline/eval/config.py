"""The settings of one evaluation run: a parsed model spec and a frozen config shipped with every task."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

DEFAULT_BATCH_SIZE = 16
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class ModelSpec:
    """``torchvision:resnet50`` -> kind ``torchvision``, name ``resnet50``; ``pocketsphinx`` has no name."""

    kind: str
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        text = str(text).strip()
        kind, sep, name = text.partition(":")
        if not kind or (sep and not name):
            raise ConfigError(f"bad model {text!r}: expected KIND or KIND:NAME (e.g. torchvision:resnet50)")
        from .models import get_model_kind

        get_model_kind(kind)  # unknown kinds raise here, naming the known ones
        return cls(kind, name)

    @property
    def canonical(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind

    @property
    def tag(self) -> str:
        """A filesystem-safe form: ``hf:google/vit-base`` -> ``hf_google_vit-base``."""
        return re.sub(r"[^A-Za-z0-9.-]+", "_", self.canonical).strip("_.") or "model"


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how; travels with each per-shard task (never through the environment)."""

    out: str
    dataset: str
    split: str
    task: str
    model: ModelSpec
    codecs: tuple[str, ...] = ()  # empty: every finished set
    weights: str | None = None  # a state dict (torchvision, timm, separators)
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "cpu"
    limit: int | None = None  # the first N reference keys (ok in none, in shard order), in every set
    offline: bool = False
    normalizer: str = "basic"  # asr: how texts are normalized before counting word errors (basic, whisper)
    language: str | None = None  # asr with Whisper: the spoken language (None: English); always transcribe

    @classmethod
    def create(cls, out: str, dataset: str, split: str, task: str, model: str | ModelSpec, *,
               codecs: Sequence[str] = (), weights: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
               device: str = "cpu", limit: int | None = None, offline: bool = False, normalizer: str = "basic",
               language: str | None = None) -> EvalConfig:
        """Validate the values that can be checked without reading any set."""
        from .tasks import get_task

        get_task(task)
        spec = model if isinstance(model, ModelSpec) else ModelSpec.parse(model)
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, not {batch_size}")
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit must be at least 1, not {limit}")
        if device.split(":")[0] not in DEVICES:
            raise ConfigError(f"--device must be cpu, cuda or cuda:N, not {device!r}")
        from .tasks.asr import NORMALIZERS

        if normalizer not in NORMALIZERS:
            raise ConfigError(f"--normalizer must be one of {', '.join(NORMALIZERS)}, not {normalizer!r}")
        if task != "asr" and (normalizer != "basic" or language is not None):
            raise ConfigError("--normalizer and --language apply to the asr task only")
        if language is not None and spec.kind != "hf":
            raise ConfigError("--language applies to Whisper models (hf:...) only")
        if language is not None and not re.fullmatch(r"[A-Za-z][A-Za-z -]*", language):
            raise ConfigError(f"--language takes a language name or code (en, english, de, ...), not {language!r}")
        return cls(str(out), dataset, split, task, spec, tuple(codecs), weights, int(batch_size), device,
                   limit, bool(offline), normalizer, language.lower() if language else None)

    @property
    def name(self) -> str:
        """``<task>-<model-tag>``: the stem of the result files (``-norm_whisper``, ``-lang_de`` where they
        are not the defaults, so results under other conventions never overwrite each other)."""
        extra = (f"-norm_{self.normalizer}" if self.normalizer != "basic" else "") + \
            (f"-lang_{re.sub(r'[^a-z]+', '_', self.language)}" if self.language else "")
        return f"{self.task}-{self.model.tag}{extra}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["codecs"] = list(self.codecs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalConfig:
        d = dict(d)
        d["model"] = ModelSpec(**d["model"])
        d["codecs"] = tuple(d.get("codecs", ()))
        return cls(**d)

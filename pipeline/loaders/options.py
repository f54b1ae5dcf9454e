"""How a loader reads: one frozen options object, checked once, shared by ``load()`` and ``ShardDataset``."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

from ..codecs.spec import CodecSpec
from ..errors import ConfigError
from .train import TrainTransform

IMAGE_FORMATS = ("tensor", "numpy", "pil")
ON_ERROR = ("raise", "skip", "warn")

#: ``on_error`` as a callable: called with the sample's key and the exception, the sample is skipped
ErrorHandler = Callable[[str, Exception], None]


@dataclass(frozen=True)
class LoadOptions:
    """Everything :func:`pipeline.loaders.load` takes besides the set (its docstring says what each does).

    ``shards``: read only these shard files of the set(s) (names as in index.json), in the given
    order, each whole, with no shuffling and no rank or worker split (an evaluation reads the
    shards it was given). ``on_error`` is ``raise``, ``skip``, ``warn`` or ``fn(key, exc)``.
    """

    paired: bool = False
    shuffle: bool = False
    seed: int = 0
    buffer: int = 1000
    resampled: bool = False
    epoch_size: int | None = None
    transform: Callable | None = None
    sample_transform: Callable[[dict], Any] | None = None
    image_format: str = "tensor"
    decoders: Mapping[str, Callable[[bytes], Any]] | None = None
    decode_payload: bool = False
    meta: bool = False
    masks: bool = False
    rank: int | None = None
    world_size: int | None = None
    cache_dir: str | None | bool = None
    storage_options: Mapping[str, Any] | None = None
    verify: bool = False
    on_error: Union[str, ErrorHandler] = "raise"
    shards: Sequence[str] | None = field(default=None)
    train: TrainTransform | None = None

    def __post_init__(self) -> None:
        self._check_train()
        if self.image_format not in IMAGE_FORMATS:
            raise ConfigError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, not {self.image_format!r}")
        if not callable(self.on_error) and self.on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)} or a function(key, exc), "
                              f"not {self.on_error!r}")
        if self.buffer < 0 or (self.epoch_size is not None and self.epoch_size < 0):
            raise ConfigError("buffer and epoch_size must not be negative")
        if self.epoch_size is not None and not self.resampled:
            raise ConfigError("epoch_size applies to resampled=True (an ordinary epoch is every sample once)")
        if self.shards is not None:
            if isinstance(self.shards, str):
                raise ConfigError("shards takes a list of shard file names, not one string")
            if self.shuffle or self.resampled:
                raise ConfigError("shards= reads the listed shards in order: it takes no shuffle or resampled")
            if self.rank is not None or self.world_size is not None:
                raise ConfigError("shards= reads every listed shard whole: it takes no rank or world_size (no shuffle, "
                                  "no split)")
            object.__setattr__(self, "shards", tuple(str(s) for s in self.shards))

    def _check_train(self) -> None:
        """The training stage: one image per sample, for training only (never on listed shards, as eval reads)."""
        if self.train is None:
            return
        if not isinstance(self.train, TrainTransform):
            raise ConfigError(f"train takes a TrainTransform, not {type(self.train).__name__}")
        if self.paired:
            raise ConfigError("train= crops one image per sample: it takes no paired views")
        if self.transform is not None:
            raise ConfigError("train= is the transform: give train or transform, not both")
        if self.shards is not None:
            raise ConfigError("train= is for training: a loader of listed shards (evaluation) never crops")

    @classmethod
    def create(cls, options: LoadOptions | None = None, **kwargs: Any) -> LoadOptions:
        """``options`` with ``kwargs`` replaced; an unknown keyword raises TypeError naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"load() got an unexpected keyword argument {unknown[0]!r}")
        return dataclasses.replace(options or cls(), **kwargs)

    @property
    def shuffled(self) -> bool:
        return self.shuffle or self.resampled


def resolve_spec(codec: str | CodecSpec | None) -> CodecSpec:
    """``None`` means the uncompressed reference set (``--codec none``)."""
    from ..codecs.spec import parse_spec

    return parse_spec("none" if codec is None else codec)


def parse_codecs(codec: Any, paired: bool) -> tuple[list[CodecSpec], list[float] | None]:
    """A setting, a list (paired views) or a {setting: weight} mixture -> specs and weights."""
    if isinstance(codec, Mapping):
        if paired:
            raise ConfigError("paired=True takes a list of settings, not weights")
        if not codec:
            raise ConfigError("a mixture needs at least one setting")
        specs = [resolve_spec(c) for c in codec]
        weights = [float(w) for w in codec.values()]
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"mixture weights must be non-negative with a positive sum, got {weights}")
        total = sum(weights)
        weights = [w / total for w in weights]
    elif isinstance(codec, (list, tuple)):
        if not paired:
            raise ConfigError("several settings: pass paired=True for views of each sample, "
                              "or a {setting: weight} dict for a mixture")
        if not codec:
            raise ConfigError("paired=True needs at least one setting")
        specs, weights = [resolve_spec(c) for c in codec], None
    else:
        specs, weights = [resolve_spec(codec)], None
    tags = [s.tag for s in specs]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"a setting is given twice: {tags}")
    return specs, weights

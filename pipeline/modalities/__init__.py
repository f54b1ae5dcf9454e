"""Per-modality steps of a shard task: decode a source sample once, then encode and measure it
for each codec setting. A modality also names its manifest columns. New modalities (audio) add a
module here and an entry in :data:`MODALITIES`."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import pyarrow as pa

from ..codecs.base import Codec
from ..sources.base import RawSample
from ..store.index import Field


@dataclass(frozen=True)
class ReportAxes:
    """How reports measure a modality's sets: rate column, quality axis (curves, BD-rate), plotted
    quality metrics, and what the compression ratio's raw size is, in words."""

    rate: str
    primary: str
    qualities: tuple[str, ...]
    raw: str


class Modality(Protocol):
    #: manifest columns this modality adds to the common ones, in order
    COLUMNS: list[tuple[str, pa.DataType]]

    def schema(self, codec: type[Codec], name: str, options: Mapping[str, Any],
               tracks: Sequence[str] = (), spec: Any = None) -> tuple[Field, ...]:
        """The fields this modality gives each sample of a set: payload (field ``name``), coded tracks, measures.

        ``spec`` (the setting, when known) says what a class cannot: images' lossless container.
        """

    REPORT: ReportAxes

    def report_raw_bits(self, frame: Any) -> Any:
        """Uncompressed bits of each manifest row (the compression ratio's numerator)."""

    def report_storage(self, shard_bytes: int, frame: Any) -> dict[str, float]:
        """The rate of the bytes on disk (shards) over the ok rows, under its column name."""

    def report_extras(self, frame: Any) -> dict[str, float]:
        """Summary values only this modality has (images: PSNR of the mean MSE)."""

    def prepare(self, raw: RawSample, options: dict[str, Any]) -> Any:
        """Decode the source bytes once into what every codec of this modality encodes.

        ``options`` are the task's (the same as :meth:`encode` gets), e.g. images' ``max_pixels``.
        """

    def encode(self, codec: Codec, prepared: Any, options: dict[str, Any]) -> tuple[list[tuple[str, bytes]],
                                                                                     dict[str, Any]]:
        """Encode, decode back, measure. Returns (members: payload first, then extras) and measures.

        Measures hold exact facts (bits, sizes, metrics); keys ending in ``_s`` are timings, kept
        in the manifest only (never in the shard, so shards stay byte-identical across runs).
        """


MODALITIES = {"image": "pipeline.modalities.image", "audio": "pipeline.modalities.audio"}


def get_modality(name: str) -> Modality:
    if name not in MODALITIES:
        raise ValueError(f"no modality {name!r}")
    return importlib.import_module(MODALITIES[name])  # a module is its own Modality (see the Protocol)

"""The run configuration: one frozen object shared by the CLI and the Python API."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from ..codecs.spec import CodecSpec, unique_specs

DEFAULT_SAMPLES_PER_SHARD = 1000


@dataclass(frozen=True)
class TranscodeConfig:
    """What to transcode and where. ``codecs`` accepts spec strings (sweeps expand) or CodecSpecs."""

    dataset: str
    root: str
    codecs: tuple[CodecSpec, ...]
    out: str = "shards"
    split: str | None = None
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD
    limit: int | None = None
    ms_ssim: bool = False
    source_options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    store_bitstream: bool = True  # learned codecs: keep the .bin member
    store_reconstruction: bool = True  # learned codecs: keep the decoded .png member
    pesq: bool = False  # audio: wideband PESQ at 16 kHz per sample
    stoi: bool = False  # audio: STOI per sample
    store_decoded: bool = False  # audio: also store the decoded signal as KEY.decoded.flac
    shard_compression: str | None = None  # None: plain .tar shards; "gzip": deterministic .tar.gz shards
    max_pixels: int | None = None  # images: refuse sources above this many pixels (None: imaging.MAX_PIXELS)
    verify_sources: bool = False  # rehash complete shards' sources; redo those whose content changed
    lpips: str | None = None  # images: LPIPS per sample with this backbone (alex, vgg, squeeze)
    dists: bool = False  # images: DISTS per sample
    cdpam: bool = False  # audio: CDPAM per sample
    weights_dir: str | None = None  # deep metrics: backbone folder (None: torchvision's cache)
    offline: bool = False  # deep metrics: never download a backbone

    @classmethod
    def create(cls, dataset: str, root: str | Path, codecs: Sequence[str | CodecSpec] | str, *,
               out: str | Path = "shards", split: str | None = None,
               samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD, limit: int | None = None,
               ms_ssim: bool = False, source_options: Mapping[str, Any] | None = None,
               store_bitstream: bool = True, store_reconstruction: bool = True, pesq: bool = False,
               stoi: bool = False, store_decoded: bool = False,
               shard_compression: str | None = None, max_pixels: int | None = None,
               verify_sources: bool = False, lpips: str | None = None,
               dists: bool = False, cdpam: bool = False, weights_dir: str | Path | None = None,
               offline: bool = False) -> "TranscodeConfig":
        """Validate and build a config (raises ConfigError with a one-line message)."""
        if isinstance(codecs, (str, CodecSpec)):
            codecs = [codecs]
        specs = tuple(unique_specs(codecs))
        if samples_per_shard < 1:
            raise ConfigError("--samples-per-shard must be at least 1")
        if limit is not None and limit < 1:
            raise ConfigError("--limit must be at least 1")
        if not store_bitstream and not store_reconstruction:
            raise ConfigError("learned codecs need the .bin or the .png member: do not turn both off")
        if shard_compression in ("", "none"):
            shard_compression = None
        if shard_compression not in (None, "gzip"):
            raise ConfigError(f"--shard-compression must be gzip or none, not {shard_compression!r}")
        if max_pixels is not None and max_pixels < 1:
            raise ConfigError("--max-pixels must be at least 1")
        if lpips is not None:
            from ..metrics.deep import metric_names

            nets = [n.split(":", 1)[1] for n in metric_names("image") if n.startswith("lpips:")]
            if lpips not in nets:
                raise ConfigError(f"--lpips must be one of {', '.join(nets)}, not {lpips!r}")
        opts = tuple(sorted((k, v) for k, v in (source_options or {}).items() if v is not None))
        return cls(dataset=dataset, root=str(root), codecs=specs, out=str(out), split=split,
                   samples_per_shard=samples_per_shard, limit=limit, ms_ssim=ms_ssim, source_options=opts,
                   store_bitstream=store_bitstream, store_reconstruction=store_reconstruction, pesq=pesq,
                   stoi=stoi, store_decoded=store_decoded, shard_compression=shard_compression,
                   max_pixels=max_pixels, verify_sources=verify_sources, lpips=lpips, dists=dists, cdpam=cdpam,
                   weights_dir=str(weights_dir) if weights_dir else None, offline=offline)

    @property
    def deep_metrics(self) -> tuple[str, ...]:
        """Registered names of the deep similarity metrics asked for (``lpips:alex``, ``dists``, ``cdpam``)."""
        names = [f"lpips:{self.lpips}"] if self.lpips else []
        return tuple(names + ["dists"] * self.dists + ["cdpam"] * self.cdpam)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["codecs"] = [c.canonical for c in self.codecs]
        d["source_options"] = dict(self.source_options)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TranscodeConfig":
        data = dict(data)
        return cls.create(data.pop("dataset"), data.pop("root"), data.pop("codecs"), **data)

"""The run configuration: one frozen object shared by the CLI and the Python API, shipped with every task.

Each field is declared once, here: its default, its check, and (in its metadata, a :class:`CliOption`)
the ``mpq transcode`` option that sets it. :meth:`TranscodeConfig.create` and the CLI are derived
from these declarations; the options of one dataset layout are declared by its source
(:attr:`pipeline.sources.base.Source.options`) and kept in ``source_options``.

Settings a worker needs (weights folder, offline, device, inference threads, pixel limit) are fields
too, so they reach every worker with its tasks. The weights folder, offline, device and inference
threads default to ``$MPQ_WEIGHTS_DIR``, ``$MPQ_OFFLINE``, ``$MPQ_DEVICE`` and
``$MPQ_INFERENCE_THREADS``, read once, on the client, when the config is created.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..codecs.runtime import CodecRuntime, device_request, use as use_runtime
from ..codecs.spec import CodecSpec, unique_specs
from ..errors import ConfigError
from ..media import MAX_PIXELS
from ..metrics.deep import metric_names

#: LPIPS backbones, from the deep-metric registry (``lpips:alex`` -> ``alex``)
LPIPS_NETS = tuple(n.split(":", 1)[1] for n in metric_names("image") if n.startswith("lpips:"))
DISTS_MODES = ("resize", "full")  # dists (the authors' preparation) and dists-full

DEFAULT_SAMPLES_PER_SHARD = 1000

#: fields whose default comes from the client's environment (see :class:`CodecRuntime`)
RUNTIME_FIELDS = ("weights_dir", "offline", "device", "inference_threads")


@dataclass(frozen=True)
class CliOption:
    """How ``mpq transcode`` sets one field: option name, help, and what kind of value it takes.

    ``kind``: ``"value"`` (typed by ``type``, or one of ``choices``), ``"flag"`` (sets the field to
    True), ``"off"`` (a flag that sets the field to False), ``"multiple"`` (repeatable), ``"folder"``
    (a folder path), ``"optional"`` (one of ``choices``; the option alone means ``flag_value``).
    ``default`` is what the CLI shows and passes when the option is not given.
    """

    name: str
    help: str = ""
    kind: str = "value"
    type: type | None = None
    choices: tuple[str, ...] | None = None
    default: Any = None
    show_default: bool = False
    required: bool = False
    flag_value: Any = None


def _setting(default: Any = None, option: CliOption | None = None) -> Any:
    return field(default=default, metadata={"cli": option} if option else {})


@dataclass(frozen=True)
class TranscodeConfig:
    """What to transcode and where. ``codecs`` accepts spec strings (sweeps expand) or CodecSpecs."""

    dataset: str
    root: str
    codecs: tuple[CodecSpec, ...] = field(metadata={"cli": CliOption(
        "--codec", "codec setting 'name:key=value,...' (repeatable; 'jpeg:quality=5,10' sweeps); see `mpq codecs`",
        kind="multiple", required=True)})
    out: str = _setting("shards", CliOption("--out", "output folder", default="shards", show_default=True))
    split: str | None = _setting(None, CliOption(
        "--split", "split to transcode (imagenet/ade20k: train or val; imagefolder: an output name, default 'all'; "
                   "hf: the dataset split, default 'train')"))
    samples_per_shard: int = _setting(DEFAULT_SAMPLES_PER_SHARD, CliOption(
        "--samples-per-shard", type=int, default=DEFAULT_SAMPLES_PER_SHARD, show_default=True))
    limit: int | None = _setting(None, CliOption("--limit", "only the first N samples (in key order)", type=int))
    ms_ssim: bool = _setting(False, CliOption("--ms-ssim", "also compute MS-SSIM per sample", kind="flag"))
    source_options: tuple[tuple[str, Any], ...] = ()  # the options its source declares (name, value)
    store_bitstream: bool = _setting(True, CliOption(  # learned codecs: keep the .bin member
        "--no-store-bin", "learned codecs: do not store the .bin bitstream", kind="off"))
    store_reconstruction: bool = _setting(True, CliOption(  # learned codecs: keep the decoded .png member
        "--no-store-png", "learned codecs: do not store the decoded .png", kind="off"))
    pesq: bool = _setting(False, CliOption("--pesq", "audio: wideband PESQ per sample (speech, at 16 kHz)",
                                           kind="flag"))
    stoi: bool = _setting(False, CliOption("--stoi", "audio: STOI per sample (speech)", kind="flag"))
    store_decoded: bool = _setting(False, CliOption(
        "--store-decoded", "audio: also store the decoded signal as KEY.decoded.flac", kind="flag"))
    shard_compression: str | None = _setting(None, CliOption(  # None: plain .tar shards; "gzip": .tar.gz
        "--shard-compression", "gzip: write deterministic .tar.gz shards (smaller at low rates: tar headers and "
        "padding compress, the payload mostly does not; costs CPU and random access)",
        choices=("none", "gzip"), default="none", show_default=True))
    max_pixels: int | None = _setting(None, CliOption(  # images: refuse sources above this many pixels
        "--max-pixels", f"images: refuse sources above this many pixels as error rows [default: {MAX_PIXELS}]; "
        "loaders then need MPQ_MAX_PIXELS at least as high", type=int))
    weights_dir: str | None = _setting(None, CliOption(
        "--weights-dir", "learned codecs: folder holding checkpoints [default: $MPQ_WEIGHTS_DIR, else the torch "
        "hub cache]; every worker looks there", kind="folder"))
    offline: bool = _setting(False, CliOption(
        "--offline", "learned codecs: never download weights, on any worker [default: $MPQ_OFFLINE]", kind="flag"))
    verify_sources: bool = _setting(False, CliOption(
        "--verify-sources", "rehash the sources of complete shards and redo those whose content changed, even when "
        "size and modification time did not (reads every source file)", kind="flag"))
    lpips: str | None = _setting(None, CliOption(  # images: LPIPS per sample with this backbone
        "--lpips", "images: LPIPS per sample (column lpips_NET); --lpips alone uses alex", kind="optional",
        choices=LPIPS_NETS, flag_value="alex"))
    dists: str | None = _setting(None, CliOption(  # images: DISTS per sample, resized as its authors do or full size
        "--dists", "images: DISTS per sample; --dists alone (resize) prepares images as its authors do (shorter side "
        "to 256 when larger; column dists), full keeps full size (column dists_full)", kind="optional",
        choices=DISTS_MODES, flag_value="resize"))
    cdpam: bool = _setting(False, CliOption(
        "--cdpam", "audio: CDPAM per sample (about 15 s per 7 s clip on one CPU core)", kind="flag"))
    device: str | None = None  # learned codecs: auto, cpu, cuda or cuda:N (None: auto); default $MPQ_DEVICE
    inference_threads: int | None = None  # learned codecs: intra-op threads; default $MPQ_INFERENCE_THREADS

    @classmethod
    def create(cls, dataset: str, root: str | Path, codecs: Sequence[str | CodecSpec] | str | CodecSpec,
               **settings: Any) -> TranscodeConfig:
        """Validate and build a config (raises ConfigError with a one-line message).

        ``settings`` are fields by name; a setting not given, or None, takes the field's default (for
        the learned-codec settings: the client's environment, read here once).
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(settings) - set(known) - {"dataset", "root", "codecs"})
        if unknown:
            raise TypeError(f"TranscodeConfig.create() got an unexpected keyword argument {unknown[0]!r}")
        env = CodecRuntime.from_env() if any(settings.get(n) is None for n in RUNTIME_FIELDS) else None
        values: dict[str, Any] = {}
        for name, f in known.items():
            if name in ("dataset", "root", "codecs"):
                continue
            value = settings.get(name)
            if value is None and env is not None and name in RUNTIME_FIELDS:
                value = getattr(env, name)
            elif value is None:
                value = f.default
            values[name] = value
        if isinstance(codecs, (str, CodecSpec)):
            codecs = [codecs]
        values["source_options"] = tuple(sorted((k, v) for k, v in dict(values["source_options"] or {}).items()
                                                if v is not None))
        runtime = _check(values)
        with use_runtime(runtime):  # a spec read from files (own checkpoints) looks in the run's weights folder
            specs = tuple(unique_specs(codecs))
        return cls(dataset=dataset, root=str(root), codecs=specs, **values)

    @property
    def deep_metrics(self) -> tuple[str, ...]:
        """Registered names of the deep similarity metrics asked for (``lpips:alex``, ``dists``, ``cdpam``)."""
        names = [f"lpips:{self.lpips}"] if self.lpips else []
        if self.dists:
            names.append("dists-full" if self.dists == "full" else "dists")
        return tuple(names + ["cdpam"] * self.cdpam)

    @property
    def runtime(self) -> CodecRuntime:
        """The learned-codec settings every task carries to its worker."""
        return _runtime({n: getattr(self, n) for n in RUNTIME_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["codecs"] = [c.canonical for c in self.codecs]
        d["source_options"] = dict(self.source_options)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TranscodeConfig:
        """A config from :meth:`to_dict`'s output; dicts written before a field existed load with its default."""
        data = dict(data)
        return cls.create(data.pop("dataset"), data.pop("root"), data.pop("codecs"), **data)


def _runtime(values: Mapping[str, Any]) -> CodecRuntime:
    """The learned-codec settings among a config's field values (raises on a bad thread count)."""
    return CodecRuntime(weights_dir=values["weights_dir"], offline=bool(values["offline"]), device=values["device"],
                        inference_threads=values["inference_threads"])


def _check(values: dict[str, Any]) -> CodecRuntime:
    """Validate and normalise field values in place (one-line ConfigErrors, named as the CLI option);
    returns the run's learned-codec settings."""
    if values["samples_per_shard"] < 1:
        raise ConfigError("--samples-per-shard must be at least 1")
    if values["limit"] is not None and values["limit"] < 1:
        raise ConfigError("--limit must be at least 1")
    if not values["store_bitstream"] and not values["store_reconstruction"]:
        raise ConfigError("learned codecs need the .bin or the .png member: do not turn both off")
    if values["shard_compression"] in ("", "none"):
        values["shard_compression"] = None
    if values["shard_compression"] not in (None, "gzip"):
        raise ConfigError(f"--shard-compression must be gzip or none, not {values['shard_compression']!r}")
    if values["max_pixels"] is not None and values["max_pixels"] < 1:
        raise ConfigError("--max-pixels must be at least 1")
    if values["dists"] is True or values["dists"] is False:  # the Python API's dists=True: the default mode
        values["dists"] = "resize" if values["dists"] else None
    if values["dists"] is not None and values["dists"] not in DISTS_MODES:
        raise ConfigError(f"--dists must be one of {', '.join(DISTS_MODES)}, not {values['dists']!r}")
    if values["lpips"] is not None and values["lpips"] not in LPIPS_NETS:
        raise ConfigError(f"--lpips must be one of {', '.join(LPIPS_NETS)}, not {values['lpips']!r}")
    for name in ("out", "split"):
        if values[name] is not None:
            values[name] = str(values[name])
    if values["weights_dir"] is not None:  # absolute, so a worker in another folder finds the same path
        values["weights_dir"] = os.path.abspath(os.path.expanduser(str(values["weights_dir"])))
    if values["device"] is not None:
        values["device"] = device_request(values["device"])
    return _runtime(values)


def cli_fields() -> list[tuple[str, CliOption]]:
    """(field name, its option) for every field ``mpq transcode`` sets, in declaration order."""
    return [(f.name, f.metadata["cli"]) for f in fields(TranscodeConfig) if "cli" in f.metadata]

"""A researcher's own trained checkpoints as a codec, named by their SHA-256: what ``compressai:`` and
``msillm-own:`` share (:class:`OwnCheckpoint`).

Files. ``checkpoint=`` names a file, several joined by ``|`` (one per quality, lowest rate first) or a
folder (its checkpoint files in name order); a relative path is under the weights folder
(``--weights-dir``, ``$MPQ_WEIGHTS_DIR``), else the current one. The file is loaded as tensors only
(``torch.load(weights_only=True)``); when it lacks the entropy coder's tables (saved before
``update()``, or stripped) they are rebuilt with ``update(force=True)`` on the CPU
(:func:`fill_missing_tables`), so the tables never depend on the device.

Identity. ``check_params`` hashes every checkpoint and writes the full SHA-256s into the spec
(``sha256=``), so the canonical spec, the shard plans, ``index.json`` and every sample's ``.json``
name the exact weights; the folder tag shows 10 hex digits of them (``...-q1-h1a2b3c4d5e``): two
checkpoints never share a folder, and a changed file is a new set. A spec that gives ``sha256=``
itself (a copied canonical spec) is refused when the file no longer matches.

Rate. ``quality=K`` picks the K-th checkpoint; ``bpp=X`` searches them per image like the zoo's
qualities (:mod:`pipeline.codecs.target`): each instance's rate knob ranges over its checkpoints.

Streams. The ``.bin`` header names the codec, the settings that shape the model and 16 hex digits of
the checkpoint's SHA-256 (``compressai:arch=mbt2018-mean,sha256=1a2b...``, ``msillm-own:sha256=...``),
never a path: a path is long (every byte counts in ``bits``) and differs between machines. ``mpq decode
KEY.bin`` finds the checkpoint by that hash in the weights folder (else torch hub's cache), or through
the sample's ``KEY.json`` beside it, whose ``codec`` names the set's checkpoint paths. Models are
cached per process by that name, the full hash and the device.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

from . import target, weights
from .compressai_zoo import CompressAIModel, ModelCache
from .params import Param, RateKnob, bpp_param, check_values
from .spec import CodecSpec
from ..errors import ConfigError, MissingWeightsError

#: hex digits of a checkpoint's SHA-256 written into each ``.bin`` (64 bits: no accidental collision)
STREAM_HASH_CHARS = 16
#: hex digits of the checkpoints' hash in the folder tag
TAG_HASH_CHARS = 10
#: what counts as a checkpoint file in a folder given as ``checkpoint=`` (or searched by hash)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt")
#: entropy-coder tables CompressAI's entropy models save; missing ones are filled empty, then rebuilt
_TABLES = ("_offset", "_quantized_cdf", "_cdf_length")
#: the rate knob's parameters (an instance's range is its number of checkpoints)
KNOB = RateKnob("quality", "bpp", 1, 1)

_fit_lock = threading.Lock()


def _base_folder() -> Path:
    return weights.weights_dir_override() or Path.cwd()


def _model_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(CHECKPOINT_SUFFIXES))


def checkpoint_files(codec: str, text: str) -> list[Path]:
    """The files ``checkpoint=`` names: ``|``-separated paths (relative ones under the weights folder, else
    the current one), a folder standing for its checkpoint files in name order. A missing one is named."""
    out: list[Path] = []
    for entry in filter(None, (e.strip() for e in text.split("|"))):
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else _base_folder() / path
        if path.is_dir():
            files = _model_files(path)
            if not files:
                raise MissingWeightsError(f"{codec}: folder {path} holds no checkpoint "
                                          f"({', '.join(CHECKPOINT_SUFFIXES)})")
            out.extend(files)
        elif path.is_file():
            out.append(path)
        else:
            raise MissingWeightsError(f"{codec}: checkpoint {path.name} does not exist in {path.parent}")
    if not out:
        raise ConfigError(f"{codec}: checkpoint= names no file")
    return out


def _by_hash(codec: str, files: list[Path], prefixes: list[str], where: str) -> list[Path]:
    """For each hash prefix, the one file whose SHA-256 starts with it."""
    out = []
    for prefix in prefixes:
        found = [f for f in files if weights.sha256_file(f).startswith(prefix)]
        if not found:
            raise MissingWeightsError(f"{codec}: no checkpoint with SHA-256 {prefix}... in {where}; put the "
                                      f"file there (or give --weights-dir), or decode with the sample's .json beside "
                                      f"the .bin")
        out.append(found[0])
    return out


def resolve(codec: str, checkpoint: str | None, sha256: str | None) -> list[tuple[Path, str]]:
    """(file, full SHA-256) per quality: the files named, or found by hash (sha256= given)."""
    prefixes = None if sha256 is None else [h.strip().lower() for h in sha256.split("|")]
    if prefixes is not None and any(len(h) < 8 or any(c not in "0123456789abcdef" for c in h) for h in prefixes):
        raise ConfigError(f"{codec}: sha256={sha256} is not hex digits (at least 8 per checkpoint, | between)")
    if checkpoint is None:
        if prefixes is None:
            raise ConfigError(f"{codec}: give checkpoint=PATH (a file, several joined by |, or a folder)")
        folder = weights.weights_dir_override() or weights.torch_hub_checkpoints()
        files = _by_hash(codec, _model_files(folder) if folder.is_dir() else [], prefixes, str(folder))
    else:
        named = checkpoint_files(codec, checkpoint)
        if prefixes is None:
            files = named
        elif len(prefixes) == len(named):  # the files in their order, each checked against its hash
            files = named
            for f, h in zip(named, prefixes):
                if not weights.sha256_file(f).startswith(h):
                    raise weights.WeightsHashError(
                        f"{codec}: checkpoint {f} has SHA-256 {weights.sha256_file(f)[:16]}..., but the spec says "
                        f"{h[:16]}...: the file changed since the spec was written; refused")
        else:
            files = _by_hash(codec, named, prefixes, checkpoint)
    return [(f, weights.sha256_file(f)) for f in files]


def fill_missing_tables(state: dict[str, Any]) -> bool:
    """Add empty entropy tables a checkpoint lacks (so the model loads); True when any table is missing or empty."""
    import torch

    missing = False
    for key in [k for k in state if k.endswith(".likelihood_lower_bound.bound")]:
        prefix = key[: -len(".likelihood_lower_bound.bound")]
        names = _TABLES + (("scale_table",) if f"{prefix}.scale_bound" in state else ())
        for name in names:
            full = f"{prefix}.{name}"
            if full not in state:
                state[full] = torch.zeros(0, dtype=torch.int32 if name != "scale_table" else torch.float32)
            missing |= state[full].numel() == 0
    return missing


def own_params(before: tuple[Param, ...] = (), after: tuple[Param, ...] = ()) -> tuple[Param, ...]:
    """The parameters every own-checkpoint codec declares, around the codec's own (``before``, ``after``)."""
    return (
        *before,
        Param("checkpoint", str, None, "your state dict: a file, several joined by | (one per quality, lowest rate "
              "first) or a folder of them; relative to --weights-dir, else the current folder", tag_chars=0),
        Param("quality", int, None, "which checkpoint, 1 = the first (the only one by default)", short="q",
              minimum=1),
        bpp_param(),
        *after,
        Param("sha256", str, None, "SHA-256 of each checkpoint, | between (filled in from the files)", short="h",
              tag_chars=TAG_HASH_CHARS),
    )


class OwnCheckpoint(CompressAIModel):
    """A CompressAI-style model with the researcher's own weights (see the module docstring).

    A subclass sets ``name`` and ``params`` (:func:`own_params`) and gives :meth:`_build`; it may
    check its own parameters (:meth:`_check_model_params`), name them in the stream
    (:meth:`_stream_params`) and place the model on its device otherwise (:meth:`_placed`).
    """

    #: the class knob says which parameters; each instance's range is its number of checkpoints
    rate_knob: ClassVar[RateKnob | None] = KNOB
    #: models kept in memory per process: each subclass has its own cache, sized for its models
    models: ClassVar[ModelCache]

    def __init__(self, spec: CodecSpec, *, device: str | None = None):
        super().__init__(spec, device=device)
        self._resolved: list[tuple[Path, str]] | None = None
        self.__dict__["rate_knob"] = RateKnob("quality", "bpp", 1, len(self.files()))  # read by knob_of

    # ------------------------------------------------------------------ hooks

    @classmethod
    def _check_model_params(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The codec's own parameters checked (before any file is read); returns the values."""
        return values

    @classmethod
    def _build(cls, spec: CodecSpec, path: Path) -> Any:
        """The model of ``spec`` with the weights at ``path``, on the CPU, entropy tables ready."""
        raise NotImplementedError

    def _placed(self, model: Any) -> Any:
        """The model built on the CPU, on this codec's device."""
        return model.to(self.device)

    def _stream_params(self) -> list[str]:
        """``key=value`` of the settings (other than the checkpoint) that shape the model, for the header."""
        return []

    # ------------------------------------------------------------------ spec

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, Any]:
        values = check_values(cls.name, KNOB, values)
        reason = cls.unavailable()
        if reason:  # the spec is read from the files, with the codec's library
            raise ConfigError(f"codec {cls.name} cannot run here: {reason}")
        values = cls._check_model_params(values)
        files = resolve(cls.name, values["checkpoint"], values["sha256"])
        values["sha256"] = "|".join(h for _, h in files)
        if values["checkpoint"] is None:  # found by hash: the spec names where
            values["checkpoint"] = "|".join(str(f) for f, _ in files)
        if values["bpp"] is None:
            if values["quality"] is None and len(files) > 1:
                raise ConfigError(f"{cls.name}: {len(files)} checkpoints: give quality=1..{len(files)} or bpp=")
            values["quality"] = values["quality"] or 1
            if values["quality"] > len(files):
                raise ConfigError(f"{cls.name}: quality={values['quality']} but only {len(files)} checkpoint(s)")
        return values

    def files(self) -> list[tuple[Path, str]]:
        """(file, SHA-256) per quality, resolved where the codec runs."""
        if self._resolved is None:
            self._resolved = resolve(self.name, self.spec["checkpoint"], self.spec["sha256"])
        return self._resolved

    @classmethod
    def checkpoint(cls, spec: CodecSpec) -> Path:
        if spec["quality"] is None:
            raise ConfigError(f"{spec.canonical} searches its checkpoints per image; no single one")
        return resolve(cls.name, spec["checkpoint"], spec["sha256"])[spec["quality"] - 1][0]

    @classmethod
    def preflight(cls, spec: CodecSpec) -> None:
        """Every checkpoint the setting may use exists, is unchanged and fits the architecture."""
        for path, _ in resolve(cls.name, spec["checkpoint"], spec["sha256"]):
            with _fit_lock:
                cls._build(spec, path)

    # ------------------------------------------------------------------ model

    def _selected(self) -> tuple[Path, str]:
        if self.spec["quality"] is None:
            raise ConfigError(f"{self.spec.canonical} codes with one of its checkpoints per image (target.at)")
        return self.files()[self.spec["quality"] - 1]

    def _model(self) -> Any:
        path, sha = self._selected()
        key = (self._name_for(sha), sha, self.device)

        def build() -> Any:
            if weights.sha256_file(path) != sha:
                raise weights.WeightsHashError(f"{self.name}: checkpoint {path} changed since the run started; "
                                               f"refused")
            return self._placed(self._build(self.spec, path))

        return self.models.get(key, build)

    # ------------------------------------------------------------------ streams

    def _stream_name(self) -> str:
        if self.spec["quality"] is None:  # a target setting writes no stream itself: its members do
            return self.spec.canonical
        return self._name_for(self._selected()[1])

    def _name_for(self, sha: str) -> str:
        body = [*self._stream_params(), f"sha256={sha[:STREAM_HASH_CHARS]}"]
        return f"{self.name}:{','.join(body)}"

    def _member(self, name: str) -> "OwnCheckpoint | None":
        if target.target_of(self) is None:
            return None
        for q, (_, sha) in enumerate(self.files(), start=1):
            if self._name_for(sha) == name:
                return target.at(self, q)
        return None

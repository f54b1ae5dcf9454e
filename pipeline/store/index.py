"""The typed set index: what a finished set's ``index.json`` holds, and the schema of its samples.

The run writes ``index.json`` last (its presence means the set is complete). Format
``mpq-shards/2`` adds ``schema``: one :class:`Field` per value a loaded sample carries, assembled
when the set is written from what the source (attachments, record values), the modality (payload
field, measures) and the codec (payload extension, stored reconstruction) declare. Readers (the
loaders, the report) read sets only through :func:`read_index` and :class:`SetIndex`, so a new
dataset or codec changes no reader. Sets written as ``mpq-shards/1`` load unchanged: reading
upgrades their dict (see :func:`_v1_schema`).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from ..errors import ConfigError
from . import layout

FORMAT = "mpq-shards/2"
V1 = "mpq-shards/1"

#: where a field comes from: the coded payload (one per codec setting), a member copied from the
#: source, or a value of the sample's ``.json`` record
ROLES = ("payload", "attachment", "record")
#: what a field's value is; ``mask`` is a label map that geometric transforms move with the image;
#: ``detection`` is an image's object annotations (COCO JSON), handed out as a torchvision detection target
TYPES = ("image", "audio", "mask", "detection", "int", "text", "float", "any")
#: the loaders' decoders by name: ``codec`` (the set's image payload: the safe table or the codec),
#: ``audio_codec`` (decode, then restore the source's rate, channels and length from the record),
#: ``flac`` (a lossless reference checked against the record), ``png`` (stored decoded pixels),
#: ``label_map``, ``integer``, ``text``, ``json`` (strict JSON); None: a record value, or a member kept but not decoded
DECODER_NAMES = ("codec", "audio_codec", "flac", "png", "label_map", "integer", "text", "json")


@dataclass(frozen=True)
class Field:
    """One value of a loaded sample.

    ``name`` is the sample's key (inside ``group`` when set: MUSDB's ``stems``); ``ext`` the tar
    member it is decoded from (None for a record value, copied from the ``.json``); ``view`` says
    the value belongs to the codec setting (payload, bits), so paired loading keeps one per view.
    Several payload fields of one name are alternatives, the first present member wins.
    """

    name: str
    role: str
    type: str
    ext: str | None = None
    decoder: str | None = None
    group: str | None = None
    view: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"field {self.name!r}: role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.type not in TYPES:
            raise ConfigError(f"field {self.name!r}: type {self.type!r} is not one of {', '.join(TYPES)}")
        if self.decoder is not None and self.decoder not in DECODER_NAMES:
            raise ConfigError(f"field {self.name!r}: unknown decoder {self.decoder!r}")
        if (self.role == "record") != (self.ext is None):
            raise ConfigError(f"field {self.name!r}: a record value has no member extension, other roles need one")
        if self.role == "record" and self.decoder is not None:
            raise ConfigError(f"field {self.name!r}: a record value is copied, not decoded")
        if self.role == "payload" and not self.view:
            object.__setattr__(self, "view", True)  # a payload always belongs to its setting

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "type": self.type, "ext": self.ext,
                "decoder": self.decoder, "group": self.group, "view": self.view}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Field:
        if not isinstance(d, Mapping) or not {"name", "role", "type"} <= set(d):
            raise ConfigError(f"a schema field needs name, role and type, got {d!r}")
        return cls(str(d["name"]), str(d["role"]), str(d["type"]), d.get("ext"), d.get("decoder"),
                   d.get("group"), bool(d.get("view", False)))


def attachment(name: str, ext: str, type: str, decoder: str | None, group: str | None = None) -> Field:
    """A member the source copies verbatim into every sample (``.cls``, ``.seg.png``, ``.txt``)."""
    return Field(name, "attachment", type, ext, decoder, group)


def record(name: str, type: str = "any", *, view: bool = False) -> Field:
    """A value of the sample's ``.json`` record (``view``: it differs per codec setting, like ``bits``)."""
    return Field(name, "record", type, view=view)


@dataclass(frozen=True)
class ShardEntry:
    """One shard file of a set, as index.json lists it."""

    name: str
    samples: int
    errors: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "samples": self.samples, "errors": self.errors, "bytes": self.bytes,
                "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardEntry:
        try:
            entry = cls(str(d["name"]), int(d["samples"]), int(d.get("errors", 0)), int(d["bytes"]), str(d["sha256"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad shard entry in index.json: {d!r} ({exc})") from None
        if "/" in entry.name or entry.name.startswith(".") or not entry.name.endswith(layout.SHARD_EXTS):
            raise ConfigError(f"bad shard name {entry.name!r} in index.json")
        return entry


@dataclass(frozen=True)
class SetIndex:
    """A finished codec set: what was written, from where, how, and what each sample holds."""

    dataset: str
    split: str
    codec: str
    tag: str
    modality: str
    shards: tuple[ShardEntry, ...]
    schema: tuple[Field, ...]
    spec: Mapping[str, Any] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    samples_per_shard: int | None = None
    limit: int | None = None
    ms_ssim: bool = False
    versions: Mapping[str, Any] = field(default_factory=dict)
    counts: Mapping[str, Any] = field(default_factory=dict)
    manifest: str = layout.MANIFEST
    shard_compression: str | None = None
    max_pixels: int | None = None

    @property
    def payload(self) -> Field:
        """The main payload field (the first one: alternatives share its name)."""
        for f in self.schema:
            if f.role == "payload" and f.group is None and f.decoder is not None:
                return f
        raise ConfigError(f"the schema of {self.dataset}/{self.split}/{self.tag} declares no payload")

    def fields(self, role: str | None = None, *, view: bool | None = None) -> tuple[Field, ...]:
        return tuple(f for f in self.schema if (role is None or f.role == role) and (view is None or f.view == view))

    @property
    def family(self) -> str:
        """The curve a setting belongs to: its codec name (all ``jpeg:quality=*`` form the jpeg curve)."""
        return str(self.spec.get("name") or self.codec.partition(":")[0])

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT, "dataset": self.dataset, "split": self.split, "codec": self.codec,
            "spec": copy.deepcopy(dict(self.spec)), "tag": self.tag, "modality": self.modality,
            "source": copy.deepcopy(dict(self.source)), "samples_per_shard": self.samples_per_shard,
            "limit": self.limit, "ms_ssim": self.ms_ssim, "versions": copy.deepcopy(dict(self.versions)),
            "counts": copy.deepcopy(dict(self.counts)), "shards": [s.to_dict() for s in self.shards],
            "manifest": self.manifest,
        }
        if self.shard_compression is not None:  # only when set, as the first format wrote them
            d["shard_compression"] = self.shard_compression
        if self.max_pixels is not None:
            d["max_pixels"] = self.max_pixels
        d["schema"] = [f.to_dict() for f in self.schema]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SetIndex:
        """Read an index dict of either format; ``mpq-shards/1`` gets its schema derived (see :func:`_v1_schema`)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"an index is a JSON object, not {type(d).__name__}")
        fmt = d.get("format")
        if fmt not in (FORMAT, V1):
            raise ConfigError(f"index format {fmt!r}, expected {FORMAT} (or {V1})")
        missing = [k for k in ("dataset", "split", "codec", "shards") if k not in d]
        if missing:
            raise ConfigError(f"index.json lacks {', '.join(missing)}")
        spec = dict(d.get("spec") or {})
        modality = str(d.get("modality") or "")
        if fmt == V1:
            modality = _v1_modality(d)
            schema = _v1_schema(str(d["dataset"]), modality, spec.get("name") or str(d["codec"]).partition(":")[0],
                                dict((d.get("source") or {}).get("options") or {}))
        else:
            if not isinstance(d.get("schema"), list):
                raise ConfigError("index.json lacks its schema (a list of fields)")
            schema = tuple(Field.from_dict(f) for f in d["schema"])
        return cls(dataset=str(d["dataset"]), split=str(d["split"]), codec=str(d["codec"]),
                   tag=str(d.get("tag") or ""), modality=modality,
                   shards=tuple(ShardEntry.from_dict(s) for s in d["shards"]), schema=schema, spec=spec,
                   source=dict(d.get("source") or {}), samples_per_shard=d.get("samples_per_shard"),
                   limit=d.get("limit"), ms_ssim=bool(d.get("ms_ssim", False)),
                   versions=dict(d.get("versions") or {}), counts=dict(d.get("counts") or {}),
                   manifest=str(d.get("manifest") or layout.MANIFEST),
                   shard_compression=d.get("shard_compression"), max_pixels=d.get("max_pixels"))


# ------------------------------------------------------------------------------ reading a set


class SetStore(Protocol):
    """What :func:`read_index` needs of a store (``pipeline.loaders.storage.Storage``, :class:`LocalRoot`)."""

    def exists(self, *parts: str) -> bool: ...
    def read_bytes(self, *parts: str) -> bytes: ...
    def listdir(self, *parts: str) -> list[str]: ...
    def display(self, *parts: str) -> str: ...


class LocalRoot:
    """A local output folder as a :class:`SetStore` (the report reads sets through it)."""

    def __init__(self, root: Any):
        from pathlib import Path

        self.root = Path(root)

    def exists(self, *parts: str) -> bool:
        return self.root.joinpath(*parts).exists()

    def read_bytes(self, *parts: str) -> bytes:
        return self.root.joinpath(*parts).read_bytes()

    def listdir(self, *parts: str) -> list[str]:
        folder = self.root.joinpath(*parts)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def display(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))


class NotASetIndex(ConfigError):
    """A JSON file called index.json that is no set index (no codec and shards): skipped by the report."""


def read_index(storage: SetStore, dataset: str, split: str, codec: Any = None, *, tag: str | None = None) -> SetIndex:
    """The index of ``<dataset>/<split>/<tag>``: the folder of setting ``codec`` (``None``: the reference
    set ``none``), or the folder ``tag`` as it is. Checks it describes that folder; a missing set
    names the sets that exist."""
    from ..codecs.spec import parse_spec

    spec = None if tag is not None else parse_spec("none" if codec is None else codec)
    folder = tag if tag is not None else spec.tag if spec is not None else ""
    parts = (dataset, split, folder)
    if not storage.exists(*parts, layout.INDEX):
        have = storage.listdir(dataset, split)
        hint = f" (sets there: {', '.join(have)})" if have else ""
        what = parts[2] if spec is None else ("the uncompressed reference (write it with --codec none)"
                                               if spec.name == "none" else spec.canonical)
        raise ConfigError(f"no complete set for {what} at {storage.display(*parts)}: index.json missing{hint}")
    try:
        raw = json.loads(storage.read_bytes(*parts, layout.INDEX))
    except ValueError as exc:
        raise ConfigError(f"{storage.display(*parts, layout.INDEX)} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or "codec" not in raw or "shards" not in raw:
        raise NotASetIndex(f"{storage.display(*parts, layout.INDEX)} is not a set index")
    try:
        index = SetIndex.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{storage.display(*parts)}: {exc}") from None
    if spec is not None and index.codec != spec.canonical:
        raise ConfigError(f"{storage.display(*parts)} holds {index.codec}, not {spec.canonical}")
    if (index.dataset, index.split) != (dataset, split) or (spec is None and index.tag != tag):
        raise ConfigError(f"{storage.display(*parts, layout.INDEX)} describes {index.dataset}/{index.split}/"
                          f"{index.tag}, not the folder it is in")
    return index


# ------------------------------------------------------------------------------ format 1

#: datasets written as ``mpq-shards/1`` whose samples are audio (an index may say ``any``)
_V1_AUDIO = ("librispeech", "musdb", "audiofolder")
_V1_STEMS = ("drums", "bass", "other", "vocals")  # in the order the old loader gave them


def _v1_modality(d: Mapping[str, Any]) -> str:
    """Format 1 recorded the source's modality; very early sets wrote the codec's (``any`` for none)."""
    if d.get("modality") in ("image", "audio"):
        return str(d["modality"])
    options = (d.get("source") or {}).get("options") or {}
    return "audio" if d.get("dataset") in _V1_AUDIO or options.get("audio_column") else "image"


def _v1_schema(dataset: str, modality: str, codec_name: str, options: Mapping[str, Any]) -> tuple[Field, ...]:
    """The schema a ``mpq-shards/1`` set's samples follow, from (dataset, modality, codec, options).

    This is the ONE place that knows the fields of datasets written before sets declared their
    schema: it states what the loaders of format 1 looked for (every field is taken only when
    its member or record value is present, so over-declaring is harmless). New datasets declare
    their fields on their source class instead.
    """
    from ..codecs import get_codec

    cls = get_codec(codec_name)
    fields: list[Field] = []
    main = "mixture" if dataset == "musdb" else modality
    if modality == "audio":
        reference = cls.lossless and cls.modality == "any"
        ext = "flac" if reference else cls.extension
        fields.append(Field(main, "payload", "audio", ext, "flac" if reference else "audio_codec"))
        fields += [record(n, view=True) for n in ("bits", "kbps", "sample_rate", "transcript", "num_samples")]
        if dataset == "musdb":
            if not reference and options.get("encode_stems", True):  # (absent: look for them anyway)
                fields += [Field(s, "payload", "audio", f"{s}.{ext}", "audio_codec", "coded_stems")
                           for s in _V1_STEMS]
            fields += [attachment(s, f"{s}.flac", "audio", "flac", "stems") for s in _V1_STEMS]
    else:
        if getattr(cls, "reconstruction", False):
            fields.append(Field(main, "payload", "image", "png", "png"))
        fields.append(Field(main, "payload", "image", cls.extension, "codec"))
        fields += [record(n, view=True) for n in ("bits", "bpp")]
    fields += [attachment("label", "cls", "int", "integer"), attachment("segmentation", "seg.png", "mask", "label_map"),
               attachment("transcript", "txt", "text", "text"), attachment("transcript", "transcript", "text", "text")]
    extras = {"librispeech": ("speaker_id", "chapter_id"), "musdb": ("track",)}.get(dataset, ())
    fields += [record(n) for n in ("label", *extras)]
    return tuple(fields)

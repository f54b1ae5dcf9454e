"""Codec settings as spec strings (``name:key=value,...``) parsed into frozen, validated dataclasses.

A spec has one canonical form (every parameter, defaults included, in the codec's declared
order), a filesystem-safe tag for folder and shard names, and a dict form for JSON.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import ConfigError
from . import lossless
from .params import Param, format_value  # noqa: F401 - re-exported: declared in params

def _tag_value(value: Any, chars: int | None = None) -> str:
    text = format_value(value)
    if chars is not None:  # a digest: one hash's prefix, or a hash over several
        text = text[:chars] if "|" not in text else hashlib.sha256(text.encode()).hexdigest()[:chars]
    return re.sub(r"[^A-Za-z0-9]", lambda m: "p" if m.group() == "." else "m" if m.group() == "-" else "_", text)


@dataclass(frozen=True)
class CodecSpec:
    """A validated codec setting. Build with :func:`parse_spec` or :meth:`from_dict`."""

    name: str
    params: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    def __getitem__(self, key: str) -> Any:
        for k, v in self.params:
            if k == key:
                return v
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    @property
    def canonical(self) -> str:
        """Every parameter, defaults included, in declared order: ``jpeg:quality=5,subsampling=420``."""
        if not self.params:
            return self.name
        body = ",".join(f"{k}={format_value(v)}" for k, v in self.params if v is not None)
        return f"{self.name}:{body}" if body else self.name

    @property
    def tag(self) -> str:
        """Filesystem-safe folder/shard name: codec name, then tagged or non-default parameters."""
        from . import get_codec

        declared = {p.name: p for p in get_codec(self.name).params}
        parts = [self.name]
        for key, value in self.params:
            p = declared[key]
            if value is None or (value == p.default and not p.in_tag) or p.tag_chars == 0:
                continue
            parts.append(f"{p.short or key}{_tag_value(value, p.tag_chars)}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": {k: v for k, v in self.params if v is not None}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CodecSpec":
        if "name" not in data:
            raise ConfigError(f"codec spec dict has no 'name': {dict(data)!r}")
        return build_spec(data["name"], dict(data.get("params", {})))

    def __str__(self) -> str:
        return self.canonical


def build_spec(name: str, raw: Mapping[str, Any]) -> CodecSpec:
    """Validate raw parameters against the registered codec and fill in defaults."""
    from . import get_codec

    codec = get_codec(name)
    declared = {p.name: p for p in codec.params}
    unknown = sorted(set(raw) - set(declared))
    if unknown:
        known = ", ".join(declared) or "none"
        raise ConfigError(f"{name}: unknown parameter {unknown[0]!r} (parameters: {known})")
    # None (JSON null) means "the default", never "unset" for a parameter that has a default
    values = {p.name: p.coerce(name, p.default if raw.get(p.name) is None else raw[p.name]) for p in codec.params}
    values = lossless.normalise(codec.check_params(values))  # container=png is the default, never spelled out
    return CodecSpec(name, tuple((p.name, values[p.name]) for p in codec.params))


def _split_spec(text: str) -> tuple[str, dict[str, list[str]]]:
    text = text.strip()
    if not text:
        raise ConfigError("empty codec spec")
    name, _, body = text.partition(":")
    name = name.strip().lower()
    raw: dict[str, list[str]] = {}
    last: str | None = None
    for token in filter(None, (t.strip() for t in body.split(","))):
        if "=" in token:
            key, _, value = token.partition("=")
            key = key.strip().lower()
            if not key or key in raw:
                raise ConfigError(f"{text!r}: parameter {key!r} given twice or empty")
            raw[key] = [value.strip()]
            last = key
        elif last is not None:  # a sweep: quality=5,10,25
            raw[last].append(token)
        else:
            raise ConfigError(f"{text!r}: expected key=value, got {token!r}")
    return name, raw


def parse_specs(text: str) -> list[CodecSpec]:
    """Parse one spec string, expanding sweeps (``jpeg:quality=5,10,25``) into several settings."""
    name, raw = _split_spec(text)
    combos: list[dict[str, str]] = [{}]
    for key, values in raw.items():
        combos = [dict(c, **{key: v}) for c in combos for v in values]
    specs = [build_spec(name, c) for c in combos]
    return list(dict.fromkeys(specs))


def parse_spec(text: str | CodecSpec) -> CodecSpec:
    """Parse a single codec setting; a sweep here is an error."""
    if isinstance(text, CodecSpec):  # built by hand, perhaps: validate it like a parsed one
        return build_spec(text.name, dict(text.params))
    specs = parse_specs(text)
    if len(specs) != 1:
        raise ConfigError(f"{text!r} names {len(specs)} settings; use parse_specs for sweeps")
    return specs[0]


def unique_specs(specs: Iterable[str | CodecSpec]) -> list[CodecSpec]:
    """Parse and de-duplicate several settings; two settings sharing one tag is an error."""
    out: list[CodecSpec] = []
    for s in specs:
        out.extend([parse_spec(s)] if isinstance(s, CodecSpec) else parse_specs(s))
    out = list(dict.fromkeys(out))
    tags: dict[str, CodecSpec] = {}
    for s in out:
        if s.tag in tags:
            raise ConfigError(f"{s.canonical} and {tags[s.tag].canonical} share the tag {s.tag!r}")
        tags[s.tag] = s
    if not out:
        raise ConfigError("no codec given")
    return out

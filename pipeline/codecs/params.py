"""What a codec declares about its settings: parameters (:class:`Param`) and its rate knob (:class:`RateKnob`).

Declarations only: nothing here looks a codec up in the registry, so codec modules, the codec
base class, spec parsing and the target-rate search can all import it without a cycle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..values import parse_bool


@dataclass(frozen=True)
class Param:
    """One parameter of a codec: type, default, allowed range or choices, short name for tags."""

    name: str
    type: type
    default: Any
    help: str = ""
    short: str | None = None
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    in_tag: bool = False  # always shown in the tag, even at its default
    #: None: the tag shows the value; 0: never in the tag (a path); n: a short digest of n characters
    #: (a hash value's first n; several ``|``-joined values: the first n hex of their SHA-256)
    tag_chars: int | None = None

    def coerce(self, codec: str, raw: Any) -> Any:
        """Turn a string (or value) into this parameter's type, or raise a one-line ConfigError."""
        if raw is None:
            return None
        where = f"{codec}:{self.name}"
        try:
            value = self._convert(raw, where)
        except (TypeError, ValueError):  # ConfigError included: one message for every bad value
            raise ConfigError(f"{where}: {raw!r} is not a valid {self.type.__name__}") from None
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise ConfigError(f"{where}: {value!r} is not one of {allowed}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{where}: {value} is below the minimum {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{where}: {value} is above the maximum {self.maximum}")
        return value

    def _convert(self, raw: Any, where: str) -> Any:
        if self.type in (int, float) and (isinstance(raw, bool) or (isinstance(raw, str) and "_" in raw)):
            raise ValueError  # True is not a quality, and "5_0" is a typo, not 50
        if self.type is bool:
            return parse_bool(raw, what=where)
        if self.type is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(str(raw)) if not isinstance(raw, (int, float)) else int(raw)
        if self.type is float:
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
            return value
        return self.type(raw)


def format_value(value: Any) -> str:
    """Canonical text of a parameter value (the inverse of Param.coerce)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(float(value)).rstrip("0").rstrip(".") if "e" not in repr(value) else repr(value)
    return str(value)


@dataclass(frozen=True)
class RateKnob:
    """The integer parameter a rate target searches, and the float parameter that holds the target."""

    param: str  # the knob: "quality" (jpeg, webp, avif, jxl, CompressAI) or "vbr" (LAME)
    target: str  # the target parameter: "bpp" (images) or "vbr_kbps" (audio)
    lo: int
    hi: int
    increasing: bool = True  # larger knob values give larger rates (LAME's vbr: smaller ones)
    default: int | None = None  # knob value of a spec that gives neither knob nor target
    unit: str = "bpp"  # what the target counts, for records and messages

    def order(self) -> list[int]:
        """Knob values from the lowest rate to the highest."""
        values = list(range(self.lo, self.hi + 1))
        return values if self.increasing else values[::-1]

    @property
    def record_key(self) -> str:
        return f"target_{self.unit}"


def bpp_param() -> Param:
    """The ``bpp`` target parameter every image codec with a rate knob declares."""
    return Param("bpp", float, None, "target bits per pixel: per image the highest quality at or under it",
                 short="bpp", minimum=0.0)


def check_values(name: str, knob: RateKnob, values: dict[str, Any]) -> dict[str, Any]:
    """Spec validation: target and knob exclude each other; neither gives the knob's default."""
    if values.get(knob.target) is not None and values.get(knob.param) is not None:
        raise ConfigError(f"{name}: give {knob.param} or {knob.target} (a target rate searched per sample "
                          f"over {knob.param}), not both")
    if values.get(knob.target) is None and values.get(knob.param) is None and knob.default is not None:
        values = {**values, knob.param: knob.default}
    return values

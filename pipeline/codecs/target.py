"""Target-rate mode: per sample, the highest setting of a codec's quality knob whose rate is at or under a target.

A codec declares its knob once (:class:`RateKnob`: the integer parameter searched, the float
parameter holding the target, the knob's range and direction). A spec gives the target or the
knob, never both (``jpeg:bpp=0.25``, ``mp3:vbr_kbps=64``). The modality calls :func:`search` with
a rate function (bpp from the payload for images, kbps for audio); the search is a binary search
over the knob that keeps the invariant "the low end was measured at or under the target, the
value above the high end was measured over it", so the returned encode was itself measured under
the target and the next knob value up was measured over it (or the knob was at its top).
Nothing is estimated and nothing over budget is returned: when even the lowest setting is over
the target the sample raises :class:`SampleError` and becomes an error row.

The search assumes the rate grows with quality; where an encoder is not monotonic the result is
still under the target and its neighbour above still over it, just not necessarily the global best.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast

from ..errors import ConfigError, SampleError
from .params import RateKnob, bpp_param, check_values, format_value  # noqa: F401 - RateKnob, bpp_param, check_values re-exported
from .spec import CodecSpec, build_spec, parse_spec

if TYPE_CHECKING:  # pragma: no cover
    from .base import Codec, Encoded

C = TypeVar("C", bound="Codec")  # the search keeps the codec's own type (image or audio)


def knob_of(codec: "Codec | type[Codec]") -> RateKnob | None:
    return getattr(codec, "rate_knob", None)


def target_of(codec: "Codec") -> float | None:
    """The rate target of a codec instance's spec, or None when it codes at a fixed setting."""
    knob = knob_of(codec)
    return None if knob is None else codec.spec.get(knob.target)


def knob_spec(spec: CodecSpec, value: int) -> CodecSpec:
    """The fixed setting ``value`` of the knob with every other parameter of a target spec."""
    from . import get_codec

    knob = knob_of(get_codec(spec.name))
    if knob is None:
        raise ConfigError(f"{spec.name} has no rate knob")
    return build_spec(spec.name, {**dict(spec.params), knob.target: None, knob.param: value})


def at(codec: C, value: int) -> C:
    """The codec at one knob value (instances cached on the target codec: models load once)."""
    cache: dict[int, C] = codec.__dict__.setdefault("_rate_codecs", {})
    if value not in cache:
        cache[value] = cast(C, codec.at_spec(knob_spec(codec.spec, value)))  # at_spec keeps the class
    return cache[value]


def member_of(codec: C, canonical: str) -> C | None:
    """When ``codec`` is a target setting and ``canonical`` one of its fixed settings, that setting's codec.

    Learned codecs write their spec into the stream; a target set's streams name the chosen setting.
    """
    knob = knob_of(codec)
    if knob is None or target_of(codec) is None:
        return None
    try:
        spec = parse_spec(canonical)
        value = spec[knob.param]
    except (ConfigError, KeyError):
        return None
    if spec.name != codec.name or not isinstance(value, int) or knob_spec(codec.spec, value) != spec:
        return None
    return at(codec, value)


def search(codec: C, encode: Callable[[C], Encoded],
           rate: Callable[[Encoded], float]) -> tuple[C, Encoded, dict[str, Any]]:
    """The highest knob setting whose measured rate is at or under the codec's target.

    ``encode(c)`` encodes the sample with the fixed-setting codec ``c``, ``rate(enc)`` measures it in
    the knob's unit. Returns the chosen codec (decode with it), its encode, and the facts to record:
    ``target_<unit>`` and ``chosen_quality`` (the knob value). Raises SampleError when the lowest
    setting is already over the target.
    """
    knob, target = knob_of(codec), target_of(codec)
    if knob is None or target is None:
        raise ValueError(f"{codec.spec.canonical} has no rate target")
    order = knob.order()
    measured: dict[int, tuple[Encoded, float]] = {}

    def measure(i: int) -> float:
        if i not in measured:
            enc = encode(at(codec, order[i]))
            measured[i] = (enc, rate(enc))
        return measured[i][1]

    lowest = measure(0)
    if lowest > target:
        raise SampleError(f"target {format_value(target)} {knob.unit} unreachable (lowest {knob.param} "
                          f"{order[0]} gives {lowest:.4g} {knob.unit})")
    lo, hi = 0, len(order)  # order[lo] measured <= target; order[hi] (if any) measured > target
    if measure(len(order) - 1) <= target:
        lo = len(order) - 1
    else:
        hi = len(order) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if measure(mid) <= target:
                lo = mid
            else:
                hi = mid
    enc, achieved = measured[lo]
    if achieved > target:  # the invariant above; kept as a check because this is the product's promise
        raise RuntimeError(f"rate search chose {achieved} {knob.unit} over the target {target}")
    return at(codec, order[lo]), enc, {knob.record_key: float(target), "chosen_quality": order[lo]}

"""Bjontegaard delta rate (BD-rate) and delta PSNR between two rate-distortion curves.

Two interpolations of log-rate as a function of quality, both integrated exactly over the
quality interval the two curves share (no extrapolation):

- ``cubic``: the original method (G. Bjontegaard, VCEG-M33, 2001): a least-squares cubic
  polynomial through the points, integrated in closed form.
- ``pchip``: piecewise cubic Hermite interpolation through the points, as in the JCT-VC/JVET
  common-test-conditions spreadsheets (JCTVC-L1100, JVET-T2010) and the ``bjontegaard`` package;
  it cannot overshoot between points, where a cubic fit of uneven curves can.

BD-rate = (exp(mean log-rate difference over the interval) - 1) * 100: the percent rate change of
the test curve against the anchor at equal quality (negative: the test needs fewer bits). The log
base cancels. Both methods need at least :data:`MIN_POINTS` points per curve; below that, or without
a shared interval, the result is NaN with a reason rather than a number from an underdetermined fit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

Curve = Union[Sequence[float], np.ndarray]  # rates or qualities of one curve

METHODS = ("cubic", "pchip")
MIN_POINTS = 4  # a cubic needs 4 points to be determined; the CTC sheets use 4 rate points too


@dataclass(frozen=True)
class BDResult:
    """A BD figure, or NaN with the reason it could not be computed."""

    value: float
    method: str
    low: float = math.nan  # the shared interval (quality for BD-rate, log-rate for BD-PSNR)
    high: float = math.nan
    reason: str = ""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.value)


def _points(rate: Curve, quality: Curve, name: str) -> tuple[np.ndarray, np.ndarray] | str:
    """Usable (rate, quality) points sorted by quality, or a reason why the curve cannot be used."""
    r = np.asarray(rate, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    if r.shape != q.shape or r.ndim != 1:
        raise ValueError(f"{name}: rate and quality must be 1-D and of equal length")
    keep = np.isfinite(r) & np.isfinite(q) & (r > 0)
    r, q = r[keep], q[keep]
    if len(r) < MIN_POINTS:
        return f"{name} has {len(r)} usable points (finite quality, positive rate); at least {MIN_POINTS} needed"
    order = np.argsort(q, kind="stable")
    return r[order], q[order]


def _integrals(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, method: str,
               what: str) -> tuple[float, float, float, float] | str:
    """Integrals of y1(x) and y2(x) over the shared x interval, and the interval; or a reason."""
    lo, hi = max(x1.min(), x2.min()), min(x1.max(), x2.max())
    if not hi > lo:
        return f"the two curves share no {what} interval"
    if method == "cubic":
        p1, p2 = np.polyint(np.polyfit(x1, y1, 3)), np.polyint(np.polyfit(x2, y2, 3))
        return (float(np.polyval(p1, hi) - np.polyval(p1, lo)), float(np.polyval(p2, hi) - np.polyval(p2, lo)),
                float(lo), float(hi))
    if method == "pchip":
        from scipy.interpolate import PchipInterpolator

        for x in (x1, x2):
            if np.any(np.diff(x) <= 0):
                return f"two points of one curve have the same {what}; pchip needs distinct values"
        f1, f2 = PchipInterpolator(x1, y1), PchipInterpolator(x2, y2)
        return float(f1.integrate(lo, hi)), float(f2.integrate(lo, hi)), float(lo), float(hi)
    raise ValueError(f"unknown BD method {method!r} (choose from {', '.join(METHODS)})")


def _two_curves(anchor_rate, anchor_quality, test_rate, test_quality):
    """Both curves' checked points, or the reason (a string) why one of them cannot be used."""
    a = _points(anchor_rate, anchor_quality, "anchor")
    t = _points(test_rate, test_quality, "test")
    for p in (a, t):
        if isinstance(p, str):
            return p
    return a, t


def bd_rate(anchor_rate: Curve, anchor_quality: Curve, test_rate: Curve,
            test_quality: Curve, method: str = "cubic") -> BDResult:
    """Percent rate change of the test curve against the anchor at equal quality (PSNR, SNR in dB)."""
    curves = _two_curves(anchor_rate, anchor_quality, test_rate, test_quality)
    if isinstance(curves, str):
        return BDResult(math.nan, method, reason=curves)
    (ra, qa), (rt, qt) = curves
    got = _integrals(qa, np.log(ra), qt, np.log(rt), method, "quality")
    if isinstance(got, str):
        return BDResult(math.nan, method, reason=got)
    ia, it, lo, hi = got
    return BDResult((math.exp((it - ia) / (hi - lo)) - 1.0) * 100.0, method, lo, hi)


def bd_psnr(anchor_rate: Curve, anchor_quality: Curve, test_rate: Curve,
            test_quality: Curve, method: str = "cubic") -> BDResult:
    """Mean quality difference (dB) of the test curve over the anchor at equal rate (log-rate interval)."""
    curves = _two_curves(anchor_rate, anchor_quality, test_rate, test_quality)
    if isinstance(curves, str):
        return BDResult(math.nan, method, reason=curves)
    (ra, qa), (rt, qt) = curves
    la, lt = np.log(ra), np.log(rt)
    oa, ot = np.argsort(la, kind="stable"), np.argsort(lt, kind="stable")
    got = _integrals(la[oa], qa[oa], lt[ot], qt[ot], method, "rate")
    if isinstance(got, str):
        return BDResult(math.nan, method, reason=got)
    ia, it, lo, hi = got
    return BDResult((it - ia) / (hi - lo), method, lo, hi)

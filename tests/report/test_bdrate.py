"""BD-rate and BD-PSNR on synthetic curves whose answer is known in closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.report.bdrate import METHODS, MIN_POINTS, bd_psnr, bd_rate

RATES = np.array([0.1, 0.2, 0.4, 0.8, 1.6])


def concave_psnr(rate: np.ndarray) -> np.ndarray:
    """A realistic curve: PSNR rises with log-rate, less and less."""
    lr = np.log(rate)
    return 36.0 + 4.0 * lr - 0.3 * lr**2


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("factor", [0.8, 1.25, 0.5])
def test_constant_rate_factor_gives_exact_bd_rate(method, factor):
    # the test family needs exactly `factor` times the anchor's rate at every PSNR
    q = concave_psnr(RATES)
    res = bd_rate(RATES, q, factor * RATES, q, method)
    assert res.ok and res.reason == ""
    assert res.value == pytest.approx((factor - 1.0) * 100.0, abs=1e-9)
    assert (res.low, res.high) == pytest.approx((q.min(), q.max()))


@pytest.mark.parametrize("method", METHODS)
def test_curve_shifted_up_in_psnr(method):
    # log-rate linear in PSNR (slope a per dB); the test curve is 1 dB better at every rate, so at equal
    # PSNR it needs exp(-a) times the rate; BD-PSNR is exactly +1 dB (both interpolations are exact on lines)
    a = 0.23
    q = np.array([28.0, 30.5, 33.0, 35.0, 38.0])
    rate = np.exp(a * q - 7.0)
    res = bd_rate(rate, q, rate, q + 1.0, method)
    assert res.value == pytest.approx((math.exp(-a) - 1.0) * 100.0, abs=1e-9)
    assert (res.low, res.high) == pytest.approx((29.0, 38.0))
    assert bd_psnr(rate, q, rate, q + 1.0, method).value == pytest.approx(1.0, abs=1e-9)


def test_cubic_is_exact_when_log_rate_is_a_cubic_of_psnr_sampled_elsewhere():
    # the test curve's points lie at other PSNRs than the anchor's; the rate ratio is still 0.8 everywhere
    def log_rate(q):
        return -12.0 + 0.31 * q + 0.002 * (q - 33.0) ** 2 + 0.0004 * (q - 33.0) ** 3

    qa = np.array([27.0, 30.0, 33.0, 36.0, 39.0])
    qt = np.array([28.2, 31.1, 34.9, 37.3])
    res = bd_rate(np.exp(log_rate(qa)), qa, 0.8 * np.exp(log_rate(qt)), qt, "cubic")
    assert res.value == pytest.approx(-20.0, abs=1e-8)
    assert (res.low, res.high) == pytest.approx((28.2, 37.3))


def test_swapping_anchor_and_test_inverts_the_rate_factor():
    rng = np.random.default_rng(7)
    qa = concave_psnr(RATES)
    rt = RATES * np.array([0.7, 0.75, 0.8, 0.78, 0.74])
    qt = concave_psnr(RATES) + rng.normal(0, 0.05, len(RATES))
    for method in METHODS:
        ab = bd_rate(RATES, qa, rt, qt, method).value / 100 + 1
        ba = bd_rate(rt, qt, RATES, qa, method).value / 100 + 1
        assert ab * ba == pytest.approx(1.0, abs=1e-12)
        assert 0.6 < ab < 0.9


def test_pchip_integral_matches_dense_numerical_integration():
    from scipy.interpolate import pchip_interpolate

    qa = np.array([26.0, 29.5, 31.0, 35.5, 37.0])
    ra = np.array([0.12, 0.3, 0.35, 0.9, 1.4])
    qt = np.array([27.0, 28.0, 32.5, 36.0, 39.0])
    rt = np.array([0.1, 0.16, 0.4, 0.7, 1.5])
    res = bd_rate(ra, qa, rt, qt, "pchip")
    grid = np.linspace(27.0, 37.0, 200001)
    diff = pchip_interpolate(qt, np.log(rt), grid) - pchip_interpolate(qa, np.log(ra), grid)
    expected = (math.exp(np.trapezoid(diff, grid) / 10.0) - 1) * 100 if hasattr(np, "trapezoid") else \
        (math.exp(np.trapz(diff, grid) / 10.0) - 1) * 100
    assert res.value == pytest.approx(expected, abs=1e-6)
    # the cubic fit of this uneven anchor differs: both are computed, they are not the same number
    assert abs(bd_rate(ra, qa, rt, qt, "cubic").value - res.value) > 0.1


@pytest.mark.parametrize("method", METHODS)
def test_too_few_points_is_nan_with_a_reason(method):
    q = concave_psnr(RATES)
    res = bd_rate(RATES[:3], q[:3], RATES, q, method)
    assert math.isnan(res.value) and not res.ok
    assert f"at least {MIN_POINTS}" in res.reason and "anchor has 3" in res.reason


@pytest.mark.parametrize("method", METHODS)
def test_lossless_points_are_left_out(method):
    q = np.append(concave_psnr(RATES), math.inf)  # a lossless setting: PSNR +inf
    r = np.append(RATES, 12.0)
    res = bd_rate(r, q, 0.8 * r, q, method)
    assert res.value == pytest.approx(-20.0, abs=1e-9) and res.high == pytest.approx(q[:-1].max())
    three = bd_rate(r[2:], q[2:], r, q, method)  # 3 finite points + 1 infinite: not enough
    assert math.isnan(three.value) and "3 usable points" in three.reason


@pytest.mark.parametrize("method", METHODS)
def test_disjoint_curves_are_nan(method):
    q = concave_psnr(RATES)
    res = bd_rate(RATES, q, RATES, q + 20.0, method)
    assert math.isnan(res.value) and "share no" in res.reason


def test_pchip_needs_distinct_quality_values_cubic_does_not():
    q = np.array([30.0, 31.0, 31.0, 33.0, 35.0])
    ok = bd_rate(RATES, q, 0.8 * RATES, q, "cubic")
    assert ok.value == pytest.approx(-20.0, abs=1e-9)
    bad = bd_rate(RATES, q, 0.8 * RATES, q, "pchip")
    assert math.isnan(bad.value) and "distinct" in bad.reason


def test_unknown_method_raises():
    q = concave_psnr(RATES)
    with pytest.raises(ValueError, match="unknown BD method"):
        bd_rate(RATES, q, RATES, q, "akima")

"""Distortion metrics: MSE/PSNR from their definitions, MS-SSIM against the pytorch_msssim package."""
from __future__ import annotations

import math

import numpy as np
import pytest

import fixtures as fx
from pipeline.metrics.image import ms_ssim, mse, psnr, psnr_from_mse


def _noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(img + rng.normal(0.0, sigma, img.shape)), 0, 255).astype(np.uint8)


def test_mse_and_psnr_from_the_definition():
    a = fx.photo("coffee", 40, 60)
    b = _noisy(a, 8.0)
    diff = a.astype(np.int64) - b.astype(np.int64)
    want = (diff**2).sum() / diff.size
    assert mse(a, b) == pytest.approx(want, rel=1e-12)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / want), rel=1e-12)


def test_psnr_of_a_constant_offset_is_exact():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a + np.uint8(5)  # MSE 25 exactly; no uint8 wrap-around in the metric
    assert mse(a, b) == 25.0 == mse(b, a)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25))
    assert psnr(a, a) == math.inf and psnr_from_mse(0.0) == math.inf


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        mse(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError):
        ms_ssim(np.zeros((200, 200, 3), np.uint8), np.zeros((200, 201, 3), np.uint8))


def test_ms_ssim_properties():
    a = fx.photo("astronaut", 176, 192)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    mild, strong = ms_ssim(a, _noisy(a, 5.0)), ms_ssim(a, _noisy(a, 25.0))
    assert 0 < strong < mild < 1
    assert math.isnan(ms_ssim(a[:160], a[:160]))  # 5 scales need a shorter side above 160


@pytest.mark.parametrize("size", [(176, 192), (201, 233)])  # even and odd sizes (padded pooling)
def test_ms_ssim_matches_pytorch_msssim(size):
    torch = pytest.importorskip("torch")
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    a = fx.photo("astronaut", *size)
    b = _noisy(a, 12.0, seed=3)

    def t(x):
        return torch.from_numpy(np.moveaxis(x, -1, 0)[None].astype(np.float64))

    want = pytorch_msssim.ms_ssim(t(a), t(b), data_range=255, size_average=True).item()
    assert ms_ssim(a, b) == pytest.approx(want, abs=1e-4)

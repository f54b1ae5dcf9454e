"""Distortion metrics computed on 8-bit RGB: decoded payload against the pixels the codec was given."""
from __future__ import annotations

import math

import numpy as np

_MS_SSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def mse(reference: np.ndarray, decoded: np.ndarray) -> float:
    if reference.shape != decoded.shape:
        raise ValueError(f"shape mismatch {reference.shape} vs {decoded.shape}")
    diff = (reference.astype(np.float64) - decoded).ravel()
    return float(np.dot(diff, diff) / diff.size)  # integer-valued sums: exact in float64


def psnr_from_mse(value: float, peak: float = 255.0) -> float:
    """PSNR in dB over all pixels and channels; identical images give +inf."""
    return math.inf if value == 0 else 10.0 * math.log10(peak * peak / value)


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    return psnr_from_mse(mse(reference, decoded))


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter with 'valid' borders on (C, H, W)."""
    from scipy.ndimage import correlate1d

    k = len(win)
    out = correlate1d(img, win, axis=-1, mode="constant")
    out = correlate1d(out, win, axis=-2, mode="constant")
    h = k // 2
    return out[..., h: out.shape[-2] - h, h: out.shape[-1] - h]


def _ssim_cs(x: np.ndarray, y: np.ndarray, win: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, win), _filter_valid(y, win)
    sxx = _filter_valid(x * x, win) - mu_x**2
    syy = _filter_valid(y * y, win) - mu_y**2
    sxy = _filter_valid(x * y, win) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * cs_map
    return ssim_map.mean(axis=(-2, -1)), cs_map.mean(axis=(-2, -1))


def _avg_pool2(img: np.ndarray) -> np.ndarray:
    """2x2 average pooling; odd sizes are zero-padded by one pixel at both ends (as torch avg_pool2d)."""
    c, h, w = img.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        img = np.pad(img, ((0, 0), (ph, ph), (pw, pw)))
    c, h, w = img.shape
    h2, w2 = h // 2, w // 2
    return img[:, : 2 * h2, : 2 * w2].reshape(c, h2, 2, w2, 2).mean(axis=(2, 4))


def ms_ssim(reference: np.ndarray, decoded: np.ndarray, data_range: float = 255.0) -> float:
    """MS-SSIM (Wang, Simoncelli, Bovik 2003) with 5 scales, 11x11 Gaussian window (sigma 1.5),
    per RGB channel then averaged; the conventions of the pytorch_msssim package.

    Images whose shorter side is at most 160 pixels are too small for 5 scales: NaN.
    """
    if reference.shape != decoded.shape:
        raise ValueError(f"shape mismatch {reference.shape} vs {decoded.shape}")
    win = _gaussian()
    if min(reference.shape[:2]) <= (len(win) - 1) * 2 ** (len(_MS_SSIM_WEIGHTS) - 1):
        return math.nan
    x = np.moveaxis(reference.astype(np.float64), -1, 0)
    y = np.moveaxis(decoded.astype(np.float64), -1, 0)
    values = []
    for level in range(len(_MS_SSIM_WEIGHTS)):
        ssim_c, cs_c = _ssim_cs(x, y, win, data_range)
        if level < len(_MS_SSIM_WEIGHTS) - 1:
            values.append(np.maximum(cs_c, 0))
            x, y = _avg_pool2(x), _avg_pool2(y)
    values.append(np.maximum(ssim_c, 0))
    stacked = np.stack(values)  # (levels, channels)
    per_channel = np.prod(stacked ** _MS_SSIM_WEIGHTS[:, None], axis=0)
    return float(per_channel.mean())

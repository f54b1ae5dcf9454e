"""Audio distortion measures on signals with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

import audio_fixtures as af
from pipeline.metrics.audio import audio_mse, pesq_wb, si_sdr, snr, stoi


def _noise_at(x: np.ndarray, db: float, seed: int = 0) -> np.ndarray:
    """x plus white noise scaled so that the SNR is exactly ``db``."""
    n = np.random.default_rng(seed).standard_normal(x.shape)
    n *= math.sqrt(np.sum(x.astype(np.float64) ** 2) / np.sum(n ** 2) / 10 ** (db / 10))
    return x + n


def test_snr_and_mse_known_values():
    x = af.as_float(af.music(0.5, 1)).astype(np.float64)
    y = _noise_at(x, 17.5)
    assert snr(x, y) == pytest.approx(17.5, abs=1e-9)
    assert audio_mse(x, y) == pytest.approx(np.mean((x - y) ** 2))
    assert snr(x, x) == math.inf and math.isnan(snr(np.zeros_like(x), np.zeros_like(x)))
    assert snr(np.zeros_like(x), y) == -math.inf
    with pytest.raises(ValueError, match="shape"):
        snr(x, y[:-1])


def test_si_sdr_ignores_scale_and_averages_channels():
    x = af.as_float(af.music(0.5, 2)).astype(np.float64)
    y = _noise_at(x, 20.0, seed=3)
    assert si_sdr(x, 0.5 * y) == pytest.approx(si_sdr(x, y))
    assert si_sdr(x, -3 * x) == math.inf
    per_channel = [si_sdr(x[:, [c]], y[:, [c]]) for c in range(2)]
    assert si_sdr(x, y) == pytest.approx(np.mean(per_channel))
    silent = x.copy()
    silent[:, 1] = 0
    assert si_sdr(silent, y) == pytest.approx(si_sdr(x[:, [0]], y[:, [0]]))  # silent channels are left out
    assert snr(x, 0.5 * y) < si_sdr(x, 0.5 * y)  # scale hurts SNR, not SI-SDR


def test_pesq_and_stoi_rank_degradations():
    x = af.as_float(af.speech(3.0, 5))
    assert pesq_wb(x, x, af.SPEECH_RATE) > 4.5
    assert stoi(x, x, af.SPEECH_RATE) == pytest.approx(1.0, abs=1e-6)
    mild, harsh = _noise_at(x, 25.0).astype(np.float32), _noise_at(x, 0.0).astype(np.float32)
    assert pesq_wb(x, harsh, af.SPEECH_RATE) < pesq_wb(x, mild, af.SPEECH_RATE)
    assert stoi(x, harsh, af.SPEECH_RATE) < stoi(x, mild, af.SPEECH_RATE)
    # another rate is resampled to 16 kHz first; stereo is averaged
    x44 = af.as_float(af.speech(3.0, 5, rate=af.MUSIC_RATE))
    stereo = np.repeat(x44, 2, axis=1)
    assert pesq_wb(stereo, stereo, af.MUSIC_RATE) > 4.5
    assert math.isnan(pesq_wb(np.zeros_like(x), np.zeros_like(x), af.SPEECH_RATE))  # no speech: NaN

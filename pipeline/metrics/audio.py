"""Distortion of decoded audio against the source samples: SNR and SI-SDR always, PESQ and STOI on request.

All take float ``(n, channels)`` arrays of the same shape at the source rate. SNR pools every
sample of every channel; SI-SDR is computed per channel (no mean removal, as in Le Roux et al.
2019 and torchmetrics' default) and averaged in dB. PESQ (ITU-T P.862.2 wideband, ``pesq``
package) and STOI (``pystoi``) are speech measures: they run on the channel average, resampled
to 16 kHz with soxr when the source has another rate.
"""
from __future__ import annotations

import math

import numpy as np

SPEECH_RATE = 16000


def _check(reference: np.ndarray, decoded: np.ndarray) -> None:
    if reference.shape != decoded.shape:
        raise ValueError(f"shape mismatch {reference.shape} vs {decoded.shape}")


def _ratio_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf if signal > 0.0 else math.nan
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def distortion(reference: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    """SNR, SI-SDR and MSE together (what the modality records), in float64."""
    _check(reference, decoded)
    signal = noise = 0.0
    si = []
    for c in range(reference.shape[1]):  # one channel at a time: contiguous float64 copies, BLAS dots
        r = reference[:, c].astype(np.float64)
        y = decoded[:, c].astype(np.float64)
        d = r - y
        rr, dd = float(np.dot(r, r)), float(np.dot(d, d))
        signal += rr
        noise += dd
        if rr == 0.0:
            continue  # a silent channel has no SI-SDR
        alpha = float(np.dot(y, r)) / rr
        e = y - alpha * r
        si.append(_ratio_db(alpha * alpha * rr, float(np.dot(e, e))))
    return {"snr": _ratio_db(signal, noise), "si_sdr": float(np.mean(si)) if si else math.nan,
            "mse": noise / reference.size if reference.size else math.nan}


def audio_mse(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Mean squared error over all samples and channels (full scale = 1.0)."""
    return distortion(reference, decoded)["mse"]


def snr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (ref - dec)^2) in dB over all channels; +inf when identical, NaN for silence."""
    return distortion(reference, decoded)["snr"]


def si_sdr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Scale-invariant SDR in dB, per channel then averaged; silent channels are left out (NaN if all are)."""
    return distortion(reference, decoded)["si_sdr"]


def to_speech(x: np.ndarray, rate: int) -> np.ndarray:
    """Channel average at 16 kHz as float64 (what PESQ and STOI are defined on)."""
    from ..media.audio import resample

    mono = x.astype(np.float64).mean(axis=1)
    if rate != SPEECH_RATE:
        mono = resample(mono[:, None].astype(np.float32), rate, SPEECH_RATE)[:, 0].astype(np.float64)
    return mono


def pesq_wb(reference: np.ndarray, decoded: np.ndarray, rate: int) -> float:
    """Wideband PESQ (MOS-LQO, about 1.0 to 4.64); NaN when PESQ finds no speech in the reference."""
    from pesq import pesq
    from pesq import PesqError

    _check(reference, decoded)
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(pesq(SPEECH_RATE, to_speech(reference, rate), to_speech(decoded, rate), "wb"))
    except PesqError:  # no utterance found, or too short
        return math.nan


def stoi(reference: np.ndarray, decoded: np.ndarray, rate: int) -> float:
    """Short-time objective intelligibility (Taal et al. 2011), 0 to 1."""
    from pystoi import stoi as _stoi

    _check(reference, decoded)
    return float(_stoi(to_speech(reference, rate), to_speech(decoded, rate), SPEECH_RATE, extended=False))

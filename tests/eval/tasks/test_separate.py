"""separate: BSS Eval medians against known noise levels, aggregate from rows, open-unmix on MUSDB sets."""
from __future__ import annotations

import math

import numpy as np
import pytest

from eval_fixtures import fresh_copy, rows_of
from pipeline.eval import EvalConfig, evaluate
from pipeline.eval.tasks import get_task
from pipeline.eval.tasks.separate import METRICS, STEMS, bss_medians

RATE = 8000


def _noisy(gains_db: list[float]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Two mono stems and estimates = reference + independent noise at the given SNR per 1 s frame."""
    rng = np.random.default_rng(0)
    refs = {s: rng.standard_normal((1, len(gains_db) * RATE)) for s in ("vocals", "bass")}
    gains = np.repeat([10 ** (-g / 20) for g in gains_db], RATE)
    return refs, {s: r + gains * rng.standard_normal(r.shape) for s, r in refs.items()}


def test_sdr_of_a_known_noise_level():
    """Noise 20 dB below the reference throughout: SDR and SAR are 20 dB, interference is absent."""
    refs, est = _noisy([20, 20, 20])
    got = bss_medians(refs, est, RATE)
    assert set(got) == {f"{s}_{m}" for s in ("bass", "vocals") for m in METRICS}
    for s in refs:
        assert got[f"{s}_sdr"] == pytest.approx(20.0, abs=0.5)
        assert got[f"{s}_sar"] == pytest.approx(20.0, abs=0.5)  # independent noise is an artefact
        assert got[f"{s}_sir"] > got[f"{s}_sdr"] + 10  # the other stem hardly leaks in


def test_frame_median_not_mean():
    """Frames at 20, 5 and 25 dB: the figure is museval's median frame, not the mean of frames."""
    import museval

    refs, est = _noisy([20, 5, 25])
    got = bss_medians(refs, est, RATE)
    stems = ["bass", "vocals"]
    sdr, isr, _, _ = museval.evaluate(np.stack([refs[s].T for s in stems]), np.stack([est[s].T for s in stems]),
                                          win=RATE, hop=RATE)
    for i, s in enumerate(stems):
        assert sdr.shape[1] == 3
        assert got[f"{s}_sdr"] == pytest.approx(float(np.median(sdr[i])))
        assert got[f"{s}_isr"] == pytest.approx(float(np.median(isr[i])))
        assert abs(got[f"{s}_sdr"] - float(np.mean(sdr[i]))) > 1.0


def test_aggregate_is_median_over_tracks():
    rows = [{"status": "ok", **{f"{s}_{m}": float(i + j) for j, s in enumerate(STEMS) for m in METRICS}}
            for i in (0, 4, 1)] + [{"status": "error"}]
    agg = get_task("separate").aggregate(rows)
    for j, s in enumerate(STEMS):
        assert agg["stems"][s] == {m: 1.0 + j for m in METRICS}
    assert agg["sdr"] == pytest.approx(np.mean([1.0 + j for j in range(4)]))


def test_umx_on_musdb_sets(musdb_out, umx_weights, tmp_path):
    musdb_out = fresh_copy(musdb_out, tmp_path / "out")
    import museval

    from pipeline.eval.models import loaded
    from pipeline.loaders import load

    config = EvalConfig.create(str(musdb_out), "musdb", "test", "separate", "umxhq", weights=str(umx_weights),
                               batch_size=1)
    result = evaluate(config)
    assert not result.failed and len(result.published) == 2
    model = loaded(config)
    for doc in result.published:
        rows = rows_of(musdb_out / "musdb" / "test" / doc["tag"] / "eval" / "separate-umxhq.parquet")
        assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
        sample = next(iter(load(str(musdb_out), "musdb", "test", doc["codec"], image_format="numpy")))
        est = model.separate(sample["mixture"], sample["sample_rate"])
        rate = sample["sample_rate"]
        n = sample["stems"]["vocals"].shape[1]
        ref = np.stack([sample["stems"][s].T for s in STEMS])
        sdr, _, _, sar = museval.evaluate(ref, np.stack([est[s][:, :n].T for s in STEMS]), win=rate, hop=rate)
        first = rows[0]
        assert first["key"] == sample["__key__"]
        for i, s in enumerate(STEMS):
            assert first[f"{s}_sdr"] == pytest.approx(float(np.nanmedian(sdr[i])), abs=1e-6)
            assert first[f"{s}_sar"] == pytest.approx(float(np.nanmedian(sar[i])), abs=1e-6)
        for s in STEMS:  # the figures come from the rows: median over tracks
            want = np.median([r[f"{s}_sdr"] for r in rows])
            assert doc["figures"]["stems"][s]["sdr"] == pytest.approx(want)
        assert math.isfinite(doc["figures"]["sdr"])

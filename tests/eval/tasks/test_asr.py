"""asr: word errors by hand, corpus WER against jiwer and torchmetrics, pocketsphinx on synthesized speech."""
from __future__ import annotations

import pytest

from eval_fixtures import fresh_copy, rows_of
from pipeline.eval import EvalConfig, evaluate
from pipeline.eval.tasks import get_task
from pipeline.eval.tasks.asr import normalize, word_errors


def test_word_errors_by_hand():
    # normalized: "the cat sat on the mat" vs "the cat sit on mat": sat -> sit, one "the" deleted
    got = word_errors("The cat, sat on the MAT.", "the  cat sit on mat")
    assert got == {"substitutions": 1, "deletions": 1, "insertions": 0, "ref_words": 6}
    assert word_errors("a b", "A b c!") == {"substitutions": 0, "deletions": 0, "insertions": 1, "ref_words": 2}
    assert word_errors("hello world", "") == {"substitutions": 0, "deletions": 2, "insertions": 0, "ref_words": 2}
    with pytest.raises(ValueError):
        word_errors(" ,. ", "x")


def test_corpus_wer_is_summed_edits_over_summed_words():
    import jiwer
    import torchmetrics

    pairs = [("a b c d", "a x c d"), ("one two", "one two three four"), ("hello there friend", "hello")]
    rows = [{"status": "ok", **word_errors(r, h)} for r, h in pairs] + [{"status": "error"}]
    agg = get_task("asr").aggregate(rows)
    assert agg["wer"] == pytest.approx((1 + 2 + 2) / (4 + 2 + 3))
    assert agg["wer"] == pytest.approx(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))
    t = normalize()
    norm = [(" ".join(t(r)[0]), " ".join(t(h)[0])) for r, h in pairs]
    tm = torchmetrics.functional.text.word_error_rate([h for _, h in norm], [r for r, _ in norm])
    assert agg["wer"] == pytest.approx(float(tm))


def test_pocketsphinx_on_spoken_sentences(speech_out, tmp_path):
    """Real recognition: espeak-ng readings of known sentences; the default model is pocketsphinx."""
    import jiwer

    out, texts = speech_out
    out = fresh_copy(out, tmp_path / "out")
    config = EvalConfig.create(str(out), "librispeech", "dev-clean", "asr", "pocketsphinx", batch_size=4)
    result = evaluate(config)
    assert not result.failed and {d["tag"] for d in result.published} == {"none", "opus-k12"}
    for doc in result.published:
        rows = rows_of(out / "librispeech" / "dev-clean" / doc["tag"] / "eval" / "asr-pocketsphinx.parquet")
        assert {r["key"]: r["reference"] for r in rows} == texts
        assert all(r["status"] == "ok" for r in rows)
        wer = doc["figures"]["wer"]
        assert wer == pytest.approx(jiwer.wer([r["reference"] for r in rows], [r["hypothesis"] for r in rows],
                                              reference_transform=normalize(), hypothesis_transform=normalize()))
        assert doc["figures"]["ref_words"] == sum(len(t.split()) for t in texts.values())
        assert doc["figures_paired"] == doc["figures"] and doc["coverage"]["fraction"] == 1.0  # fully covered
        if doc["tag"] == "none":
            assert wer < 0.6, rows
        assert doc["model"]["weights_sha256"] and "normaliz" in doc["definitions"]["wer"]

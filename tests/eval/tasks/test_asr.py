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


def test_dashes_separate_words():
    """'well-known' is the two words 'well known' (before, the hyphen was dropped: 'wellknown', two errors)."""
    assert word_errors("a well-known fact", "a well known fact") == {"substitutions": 0, "deletions": 0,
                                                                     "insertions": 0, "ref_words": 4}
    assert word_errors("twenty\u2013one \u2014 then", "twenty one then")["ref_words"] == 3
    # apostrophes and other punctuation are removed as before, on both sides alike
    assert word_errors("Don't stop, ok?", "dont stop ok") == {"substitutions": 0, "deletions": 0, "insertions": 0,
                                                              "ref_words": 3}


def test_whisper_normalizer_is_an_option():
    from whisper_normalizer.english import EnglishTextNormalizer

    ref, hyp = "Mr. Smith's colour is grey.", "mister smith's color is gray"
    assert word_errors(ref, hyp)["substitutions"] == 3  # basic: mr/mister, colour/color, grey/gray
    got = word_errors(ref, hyp, "whisper")
    assert got == {"substitutions": 0, "deletions": 0, "insertions": 0,
                   "ref_words": len(EnglishTextNormalizer()(ref).split())}
    with pytest.raises(Exception, match="normalizer"):
        word_errors(ref, hyp, "nonsense")


def test_whisper_normalizer_is_recorded_and_kept_apart(speech_out, tmp_path):
    import jiwer

    from pipeline.errors import ConfigError

    out = fresh_copy(speech_out[0], tmp_path / "out")
    config = EvalConfig.create(str(out), "librispeech", "dev-clean", "asr", "pocketsphinx", codecs=["none"],
                               limit=2, normalizer="whisper")
    assert config.name == "asr-pocketsphinx-norm_whisper"  # never overwrites the basic figures
    doc = next(d for d in evaluate(config).published if d["tag"] == "none")
    assert "Whisper English" in doc["definitions"]["wer"]
    rows = [r for r in rows_of(out / "librispeech" / "dev-clean" / "none" / "eval" / f"{config.name}.parquet")
            if r["status"] == "ok"]
    want = jiwer.wer([r["reference"] for r in rows], [r["hypothesis"] for r in rows],
                     reference_transform=normalize("whisper"), hypothesis_transform=normalize("whisper"))
    assert doc["figures"]["wer"] == pytest.approx(want)
    with pytest.raises(ConfigError, match="normalizer"):
        EvalConfig.create(str(out), "librispeech", "dev-clean", "asr", "pocketsphinx", normalizer="nonsense")

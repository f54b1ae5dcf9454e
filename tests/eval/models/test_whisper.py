"""Whisper through ``hf:``: language and task set, utterances over 30 s transcribed whole (long-form).

The model is a tiny random-weight Whisper written here (a byte-level vocabulary with Whisper's special
and timestamp tokens), so its text is noise: the tests check what reaches ``generate`` (every frame of
a long utterance, the language and the task) and that the rows equal transformers' own pipeline.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import audio_fixtures as afx
from eval_fixtures import rows_of, run_transcode
from pipeline.errors import ConfigError
from pipeline.eval import EvalConfig, evaluate

RATE = 16000
SECONDS = {"1-2-0000": 4.0, "1-2-0001": 33.0}  # the second is longer than Whisper's 30 s window


def _byte_vocab() -> dict[str, int]:
    """GPT-2's byte-to-unicode alphabet: 256 one-character tokens."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): i for i, c in enumerate(cs)}


def tiny_whisper(folder: Path, multilingual: bool) -> Path:
    import torch
    import transformers as tr

    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(_byte_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
                *(f"<|{i * 0.02:.2f}|>" for i in range(1501))]
    tok = tr.WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=specials[0],
                              bos_token=specials[0], eos_token=specials[0], pad_token=specials[0])
    tok.add_tokens(specials, special_tokens=True)
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials[:10]}
    cfg = tr.WhisperConfig(vocab_size=len(tok), num_mel_bins=80, encoder_layers=1, decoder_layers=1, d_model=16,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, decoder_start_token_id=ids["<|startoftranscript|>"],
                           eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                           bos_token_id=ids["<|endoftext|>"])
    torch.manual_seed(0)
    model = tr.WhisperForConditionalGeneration(cfg)
    gc = model.generation_config
    gc.is_multilingual = multilingual
    if multilingual:
        gc.lang_to_id = {"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]}
        gc.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    gc.no_timestamps_token_id = ids["<|notimestamps|>"]
    gc.prev_sot_token_id = ids["<|startofprev|>"]
    gc.max_initial_timestamp_index = 50
    gc.begin_suppress_tokens = [ids["<|endoftext|>"]]
    gc.max_length = 8  # noise from random weights: keep each window's text short
    gc._from_model_config = False
    model.save_pretrained(folder)
    tr.WhisperProcessor(feature_extractor=tr.WhisperFeatureExtractor(feature_size=80), tokenizer=tok) \
        .save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def long_speech_out(tmp_path_factory) -> Path:
    """librispeech/dev-clean with a 4 s and a 41 s utterance, as the set `none`."""
    base = tmp_path_factory.mktemp("whisper-speech")
    folder = base / "src" / "LibriSpeech" / "dev-clean" / "1" / "2"
    folder.mkdir(parents=True)
    for i, (key, seconds) in enumerate(SECONDS.items()):
        afx.write_audio(folder / f"{key}.flac", afx.speech(seconds, i), RATE)
    (folder / "1-2.trans.txt").write_text("1-2-0000 A SHORT ONE\n1-2-0001 A WELL-KNOWN LONG ONE\n")
    run_transcode("librispeech", base / "src", base / "out", "dev-clean", ("none",))
    return base / "out"


def test_long_utterances_are_transcribed_whole_in_english(long_speech_out, tmp_path, monkeypatch):
    import transformers as tr

    from pipeline.loaders import load

    folder = tiny_whisper(tmp_path / "whisper", multilingual=True)
    calls: list[dict] = []
    real = tr.WhisperForConditionalGeneration.generate

    def spy(self, *args, **kwargs):
        feats = kwargs.get("input_features", args[0] if args else None)
        calls.append({"frames": int(feats.shape[-1]), "language": kwargs.get("language"),
                      "task": kwargs.get("task"), "timestamps": bool(kwargs.get("return_timestamps"))})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tr.WhisperForConditionalGeneration, "generate", spy)
    config = EvalConfig.create(str(long_speech_out), "librispeech", "dev-clean", "asr", f"hf:{folder}",
                               batch_size=2)
    result = evaluate(config)
    assert not result.failed
    rows = {r["key"]: r for r in rows_of(long_speech_out / "librispeech" / "dev-clean" / "none" / "eval"
                                         / f"{config.name}.parquet")}
    assert all(r["status"] == "ok" for r in rows.values()), rows  # never an error row for a long utterance
    by_frames = sorted(calls, key=lambda c: c["frames"])
    assert len(by_frames) == 2
    short, long = by_frames
    assert short["frames"] == 3000 and not short["timestamps"]  # one 30 s window, padded
    assert long["frames"] == pytest.approx(SECONDS["1-2-0001"] * RATE / 160, abs=2)  # every frame, not 3000
    assert long["timestamps"]  # Whisper's sequential long-form algorithm
    assert {c["language"] for c in calls} == {"en"} and {c["task"] for c in calls} == {"transcribe"}
    # the rows are what transformers' own pipeline says with the same settings
    monkeypatch.setattr(tr.WhisperForConditionalGeneration, "generate", real)
    pipe = tr.pipeline("automatic-speech-recognition", model=str(folder))
    for s in load(str(long_speech_out), "librispeech", "dev-clean", "none", image_format="numpy"):
        x = np.asarray(s["audio"], dtype=np.float32).reshape(-1)
        long_form = {"return_timestamps": True} if len(x) > 30 * RATE else {}
        want = pipe({"raw": x, "sampling_rate": RATE}, generate_kwargs={"language": "en", "task": "transcribe"},
                    **long_form)["text"]
        assert rows[s["__key__"]]["hypothesis"] == want


def test_language_is_passed_and_english_only_models_refuse_another(long_speech_out, tmp_path, monkeypatch):
    import transformers as tr

    multi = tiny_whisper(tmp_path / "multi", multilingual=True)
    seen: list = []
    real = tr.WhisperForConditionalGeneration.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("language"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tr.WhisperForConditionalGeneration, "generate", spy)
    config = EvalConfig.create(str(long_speech_out), "librispeech", "dev-clean", "asr", f"hf:{multi}",
                               language="de", limit=1)
    assert config.name.endswith("-lang_de")
    assert not evaluate(config).failed and seen == ["de"]
    english = tiny_whisper(tmp_path / "english", multilingual=False)
    config = EvalConfig.create(str(long_speech_out), "librispeech", "dev-clean", "asr", f"hf:{english}",
                               language="de", limit=1)
    result = evaluate(config)  # the model is loaded on the worker: the unit fails, naming the reason
    assert result.failed and "English-only" in result.failed[0]
    with pytest.raises(ConfigError, match="asr task only"):
        EvalConfig.create(str(long_speech_out), "librispeech", "dev-clean", "classify", "torchvision:resnet18",
                          language="de")

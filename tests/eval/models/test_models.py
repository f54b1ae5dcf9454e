"""Model kinds other than torchvision: timm and transformers classifiers, weights checks before work."""
from __future__ import annotations

import pytest

from eval_fixtures import fresh_copy, rows_of
from pipeline.errors import MissingWeightsError
from pipeline.eval import EvalConfig, evaluate


def _samples(out):
    from pipeline.loaders import load

    return list(load(str(out), "imagenet", "val", None, image_format="numpy"))


def test_timm_with_a_state_dict(imagenet_out, tmp_path):
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    out = fresh_copy(imagenet_out, tmp_path / "out")
    torch.manual_seed(2)
    net = timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()
    torch.save(net.state_dict(), tmp_path / "timm.pt")
    config = EvalConfig.create(str(out), "imagenet", "val", "classify", "timm:resnet18",
                               weights=str(tmp_path / "timm.pt"), codecs=["none"])
    doc = evaluate(config).published[0]
    rows = rows_of(out / "imagenet" / "val" / "none" / "eval" / "classify-timm_resnet18.parquet")
    tf = create_transform(**resolve_data_config({}, model=net))
    with torch.no_grad():
        logits = net(torch.stack([tf(Image.fromarray(s["image"])) for s in _samples(out)]))
    assert [r["pred"] for r in rows] == logits.argmax(1).tolist()
    assert doc["model"]["library"] == "timm" and doc["model"]["version"] == timm.__version__


def test_transformers_classifier_from_a_folder(imagenet_out, tmp_path):
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    out = fresh_copy(imagenet_out, tmp_path / "out")
    torch.manual_seed(3)
    folder = tmp_path / "tiny-vit"
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, num_labels=1000)
    ViTForImageClassification(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    config = EvalConfig.create(str(out), "imagenet", "val", "classify", f"hf:{folder}", codecs=["none"])
    doc = evaluate(config).published[0]
    rows = rows_of(out / "imagenet" / "val" / "none" / "eval" / f"{config.name}.parquet")
    model = ViTForImageClassification.from_pretrained(folder).eval()
    proc = ViTImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**proc(images=[s["image"] for s in _samples(out)], return_tensors="pt")).logits
    assert [r["pred"] for r in rows] == logits.argmax(1).tolist()
    assert doc["model"]["weights"].endswith("model.safetensors") and len(doc["model"]["weights_sha256"]) == 64


@pytest.mark.parametrize("model, task, expect", [
    ("hf:someone/not-cached-model", "classify", "models--someone--not-cached-model"),
    ("umxhq", "separate", r"-[0-9a-f]{8}\.pth is expected in .*hub/checkpoints"),
    ("htdemucs", "separate", "955717e8-8726e21a.th"),
])
def test_offline_missing_weights_name_file_and_folder(tmp_path, monkeypatch, model, task, expect):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from pipeline.eval.models import get_model_kind

    config = EvalConfig.create(str(tmp_path), "x", "y", task, model, offline=True)
    with pytest.raises(MissingWeightsError, match=expect) as err:
        get_model_kind(config.model.kind).preflight(config)
    assert "is expected in" in str(err.value) and "\n" not in str(err.value)


def test_transformers_ctc_speech_model(speech_out, tmp_path):
    """A tiny random wav2vec2 (CTC) folder: hypotheses equal the transformers pipeline's own output."""
    import json

    import torch
    import transformers as tr

    out = fresh_copy(speech_out[0], tmp_path / "out")
    folder = tmp_path / "tiny-w2v"
    folder.mkdir()
    vocab = {"<pad>": 0, "|": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tok = tr.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                  word_delimiter_token="|")
    fe = tr.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True)
    tr.Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(folder)
    torch.manual_seed(4)
    cfg = tr.Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0)
    tr.Wav2Vec2ForCTC(cfg).save_pretrained(folder)
    config = EvalConfig.create(str(out), "librispeech", "dev-clean", "asr", f"hf:{folder}", codecs=["none"])
    doc = evaluate(config).published[0]
    rows = rows_of(out / "librispeech" / "dev-clean" / "none" / "eval" / f"{config.name}.parquet")
    pipe = tr.pipeline("automatic-speech-recognition", model=str(folder))
    from pipeline.loaders import load

    samples = list(load(str(out), "librispeech", "dev-clean", None, image_format="numpy"))
    assert [r["hypothesis"] for r in rows] == [pipe({"raw": s["audio"].mean(0), "sampling_rate": 16000})["text"]
                                               for s in samples]
    words = sum(r["ref_words"] for r in rows)
    edits = sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in rows)
    assert doc["figures"]["wer"] == pytest.approx(edits / words) and words == doc["figures"]["ref_words"]


def test_htdemucs_with_a_state_dict(musdb_out, tmp_path):
    import torch
    from demucs.htdemucs import HTDemucs

    out = fresh_copy(musdb_out, tmp_path / "out")
    torch.manual_seed(5)
    torch.save(HTDemucs(sources=["drums", "bass", "other", "vocals"]).state_dict(), tmp_path / "htd.pt")
    config = EvalConfig.create(str(out), "musdb", "test", "separate", "htdemucs", weights=str(tmp_path / "htd.pt"),
                               codecs=["none"], limit=1)
    doc = evaluate(config).published[0]
    rows = rows_of(out / "musdb" / "test" / "none" / "eval" / "separate-htdemucs.parquet")
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert doc["figures"]["stems"]["vocals"]["sdr"] == pytest.approx(rows[0]["vocals_sdr"])
    assert doc["model"]["library"] == "demucs" and doc["limit"] == 1

"""A model's class outputs against the set's label space: refused before any work, or offset by a
background class the model declares (recorded in the result JSON)."""
from __future__ import annotations

import json

from click.testing import CliRunner

from eval_fixtures import fresh_copy, rows_of
from pipeline.cli import cli
from pipeline.eval import EvalConfig, evaluate


def _eval(out, *args: str):
    return CliRunner().invoke(cli, ["eval", str(out), "--workers", "0", "--no-progress", *args])


def test_a_ten_class_state_dict_is_refused_on_imagenet_before_any_work(imagenet_out, tmp_path):
    import torch
    import torchvision

    out = fresh_copy(imagenet_out, tmp_path / "out")
    weights = tmp_path / "ten.pt"
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=10).state_dict(), weights)
    res = _eval(out, "--dataset", "imagenet", "--split", "val", "--task", "classify",
                "--model", "torchvision:resnet18", "--weights", str(weights))
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and "torchvision:resnet18" in line and "10 outputs" in line
    assert "1000 classes (ILSVRC-2012)" in line and "imagenet/val/none" in line
    assert not list(out.rglob("eval"))  # nothing was started


def _vit(folder, labels: int, id2label: dict[int, str] | None = None):
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(4)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, num_labels=labels)
    if id2label is not None:
        cfg.id2label, cfg.label2id = id2label, {v: k for k, v in id2label.items()}
    ViTForImageClassification(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_a_background_class_at_zero_is_dropped_and_recorded(imagenet_out, tmp_path):
    """1,001 outputs whose id2label[0] is "background" (as Google's MobileNets on the hub): output i+1 is class i."""
    import torch
    from transformers import ViTForImageClassification, ViTImageProcessor

    from pipeline.loaders import load

    out = fresh_copy(imagenet_out, tmp_path / "out")
    names = {0: "background", **{i: f"class {i - 1}" for i in range(1, 1001)}}
    folder = _vit(tmp_path / "vit-1001", 1001, names)
    config = EvalConfig.create(str(out), "imagenet", "val", "classify", f"hf:{folder}", codecs=["none"])
    doc = evaluate(config).published[0]
    assert doc["model"]["outputs"] == 1001 and doc["model"]["label_offset"] == 1 and doc["model"]["classes"] == 1000
    saved = json.loads((out / "imagenet" / "val" / "none" / "eval" / f"{config.name}.json").read_text())
    assert saved["model"]["label_offset"] == 1
    samples = list(load(str(out), "imagenet", "val", None, image_format="numpy"))
    model = ViTForImageClassification.from_pretrained(folder).eval()
    proc = ViTImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**proc(images=[s["image"] for s in samples], return_tensors="pt")).logits
    rows = rows_of(out / "imagenet" / "val" / "none" / "eval" / f"{config.name}.parquet")
    assert [r["pred"] for r in rows] == (logits[:, 1:].argmax(1)).tolist()
    assert [r["label"] for r in rows] == [int(s["label"]) for s in samples]


def test_1001_outputs_without_a_background_class_are_refused(imagenet_out, tmp_path):
    out = fresh_copy(imagenet_out, tmp_path / "out")
    folder = _vit(tmp_path / "vit-1001", 1001)  # id2label: LABEL_0 ... LABEL_1000
    res = _eval(out, "--dataset", "imagenet", "--split", "val", "--task", "classify", "--model", f"hf:{folder}")
    assert res.exit_code == 2 and "1001 outputs" in res.output and "1000 classes" in res.output


def test_a_segmenter_must_have_ade20ks_150_classes(ade_out, tmp_path):
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    out = fresh_copy(ade_out, tmp_path / "out")
    torch.manual_seed(0)
    cfg = SegformerConfig(num_labels=19, hidden_sizes=[8, 16, 24, 32], decoder_hidden_size=32, depths=[1, 1, 1, 1],
                          num_attention_heads=[1, 1, 1, 1])  # a Cityscapes-sized head
    folder = tmp_path / "segformer-19"
    SegformerForSemanticSegmentation(cfg).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    res = _eval(out, "--dataset", "ade20k", "--split", "train", "--task", "segment", "--model", f"hf:{folder}")
    assert res.exit_code == 2, res.output
    assert "19 outputs" in res.output and "150 classes (ADE20K)" in res.output
    assert not list(out.rglob("eval"))


def test_sets_written_before_label_spaces_get_their_datasets(imagenet_out, tmp_path):
    """An index without the schema's classes (written before this change) still gets ImageNet's 1,000."""
    from pipeline.eval.sets import find_sets

    out = fresh_copy(imagenet_out, tmp_path / "out")
    for index in out.glob("imagenet/val/*/index.json"):
        d = json.loads(index.read_text())
        for f in d["schema"]:
            f.pop("classes", None)
            f.pop("label_space", None)
        index.write_text(json.dumps(d))
    assert all(s.label_space("label") == (1000, "ILSVRC-2012") for s in find_sets(out, "imagenet", "val"))

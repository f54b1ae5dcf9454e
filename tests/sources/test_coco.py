"""COCO source: every annotation kept losslessly beside the lossy image, rebuilt from the shards alone,
handed out as torchvision detection targets (checked against pycocotools reading the original JSON)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import fixtures as fx
from pipeline.errors import ConfigError
from pipeline.loaders import coco_ground_truth, detection_collate, load
from pipeline.sources import make_source

CODECS = ("none", "jpeg:quality=30")


@pytest.fixture(scope="module")
def coco_out(coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("coco-out")
    for split in ("val2017", "train2017"):
        result = fx.transcode("coco", coco[split], out, split=split, codecs=CODECS)
        fx.verify_run(result, coco[split])  # names, bytes, error rows (train2017 lists an absent file)
    return out


def _original(coco) -> dict:
    return json.loads((coco["val2017"].root / "coco" / "annotations" / "instances_val2017.json").read_text())


def test_list_keys_and_roots(coco):
    built = coco["val2017"]
    for root in (built.root, built.root / "coco"):  # the folder or its parent
        refs = make_source("coco", root, "val2017").list()
        assert [r.source for r in refs] == sorted(built.samples)
        assert [r.key for r in refs] == [n[:-4] for n in sorted(built.samples)]


def test_read_keeps_the_json_values(coco):
    data = _original(coco)
    src = make_source("coco", coco["val2017"].root, "val2017")
    for ref in src.list():
        raw = src.read(ref)
        image = next(i for i in data["images"] if i["file_name"] == ref.source)
        assert raw.data == coco["val2017"].samples[ref.source].data
        assert json.loads(raw.attachments["coco.json"]) == {
            "image": image, "annotations": [a for a in data["annotations"] if a["image_id"] == image["id"]]}
        assert raw.fields == {"image_id": image["id"]}


def test_ground_truth_rebuilt_from_shards(coco, coco_out):
    data = _original(coco)
    for codec in CODECS:
        rebuilt = coco_ground_truth(str(coco_out), "coco", "val2017", codec)
        assert rebuilt == data  # every table, every value; shard order is key order, as in the file
    train = coco_ground_truth(str(coco_out), "coco", "train2017")
    assert [i["id"] for i in train["images"]] == [9]  # the absent file is an error row, not a sample


def test_targets_against_pycocotools(coco, coco_out):
    from pycocotools.coco import COCO

    gt = COCO(str(coco["val2017"].root / "coco" / "annotations" / "instances_val2017.json"))
    samples = list(load(str(coco_out), "coco", "val2017", "jpeg:quality=30", masks=True))
    assert len(samples) == 5
    for s in samples:
        t, image_id = s["target"], s["image_id"]
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))
        info = gt.loadImgs([image_id])[0]
        assert t["image_id"] == image_id and tuple(s["image"].shape) == (3, info["height"], info["width"])
        want = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                         for a in anns], dtype=np.float32).reshape(-1, 4)
        assert np.array_equal(t["boxes"].numpy(), want) and t["boxes"].dtype.is_floating_point
        assert t["labels"].tolist() == [a["category_id"] for a in anns]
        assert t["iscrowd"].tolist() == [a["iscrowd"] for a in anns]
        assert t["area"].tolist() == [np.float32(a["area"]) for a in anns]
        masks = [gt.annToMask(a) for a in anns]
        assert t["masks"].shape == (len(anns), info["height"], info["width"])
        for got, mask in zip(t["masks"].numpy(), masks):
            assert np.array_equal(got, mask)
    crowd = next(s for s in samples if s["image_id"] == 285)["target"]
    rect = np.zeros((80, 112), dtype=np.uint8)
    rect[5:35, 80:105] = 1  # the crowd region as drawn, independent of pycocotools
    assert np.array_equal(crowd["masks"][crowd["iscrowd"] == 1][0].numpy(), rect)
    empty = next(s for s in samples if s["image_id"] == 632)["target"]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 72, 96)


def test_collate_and_transform_move_boxes(coco_out):
    import torch
    from torchvision.transforms import v2

    loader = torch.utils.data.DataLoader(
        load(str(coco_out), "coco", "val2017", transform=v2.RandomHorizontalFlip(p=1.0)),
        batch_size=2, collate_fn=detection_collate)
    plain = {s["__key__"]: s for s in load(str(coco_out), "coco", "val2017")}
    seen = 0
    for batch in loader:
        assert isinstance(batch["image"], list) and len(batch["target"]) == len(batch["image"])
        for key, image, t in zip(batch["__key__"], batch["image"], batch["target"]):
            ref = plain[key]
            width = ref["image"].shape[-1]
            assert torch.equal(image, ref["image"].flip(-1))
            flipped = ref["target"]["boxes"].clone()
            flipped[:, [0, 2]] = width - ref["target"]["boxes"][:, [2, 0]]
            assert type(t["boxes"]) is torch.Tensor and torch.equal(t["boxes"], flipped)
            assert torch.equal(t["labels"], ref["target"]["labels"])
            seen += 1
    assert seen == 5


def test_pil_images_move_boxes_too(coco_out):
    import torch
    from torchvision.transforms import v2

    flip = load(str(coco_out), "coco", "val2017", image_format="pil", transform=v2.RandomHorizontalFlip(p=1.0))
    plain = {s["__key__"]: s for s in load(str(coco_out), "coco", "val2017", image_format="pil")}
    for s in flip:
        ref = plain[s["__key__"]]
        want = ref["target"]["boxes"].clone()
        want[:, [0, 2]] = ref["image"].size[0] - ref["target"]["boxes"][:, [2, 0]]
        assert torch.equal(s["target"]["boxes"], want) and type(s["target"]["boxes"]) is torch.Tensor


def test_grayscale_and_cmyk_become_rgb(coco_out):
    samples = {s["image_id"]: s for s in load(str(coco_out), "coco", "val2017", image_format="numpy")}
    for image_id in (724, 776):  # grayscale, CMYK
        assert samples[image_id]["image"].ndim == 3 and samples[image_id]["image"].shape[2] == 3


def test_webdataset_reads_the_attachment(coco_out):
    wds = pytest.importorskip("webdataset")
    from pipeline.loaders import wds_decoder, wds_sample_decoder

    folder = coco_out / "coco" / "val2017" / "none"
    urls = sorted(str(p) for p in folder.glob("*.tar"))
    ours = {s["__key__"]: s for s in load(str(coco_out), "coco", "val2017", image_format="numpy")}
    raw = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).decode(wds_decoder())}
    mapped = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).map(
        wds_sample_decoder(root=coco_out, dataset="coco", split="val2017"))}
    assert sorted(raw) == sorted(mapped) == sorted(ours)
    for key, s in ours.items():
        assert raw[key]["coco.json"] == s["target"]["coco"]
        got = mapped[key]["coco.json"]
        assert np.array_equal(got["boxes"], s["target"]["boxes"]) and got["coco"] == s["target"]["coco"]


def test_config_errors(tmp_path, coco):
    with pytest.raises(ConfigError, match="instances_val2017.json"):
        make_source("coco", tmp_path, "val2017").list()
    with pytest.raises(ConfigError, match="instances_test2017.json"):
        make_source("coco", coco["val2017"].root, "test2017").list()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text('{"images": []}')
    with pytest.raises(ConfigError, match="not a folder"):
        make_source("coco", tmp_path, "val2017").list()
    (tmp_path / "val2017").mkdir()
    with pytest.raises(ConfigError, match="lists no images"):
        make_source("coco", tmp_path, "val2017").list()


def test_hf_features_refuse_untyped_annotations(coco_out):
    pytest.importorskip("datasets")
    from pipeline.loaders import hf_features

    with pytest.raises(ConfigError, match="no Arrow type"):
        hf_features(str(coco_out), "coco", "val2017")

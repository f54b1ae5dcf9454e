"""The loader's training stage: torchvision's RandomResizedCrop and flip, drawn per (seed, epoch, key),
normalized batches; a resumed epoch sees the same crops; the JPEG draft approximation is opt-in."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import fixtures as fx  # noqa: E402
from pipeline import TranscodeConfig, transcode  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from pipeline.loaders import Loader, LoadOptions, TrainTransform, load, train_loader  # noqa: E402
from pipeline.loaders.train import sample_seed  # noqa: E402

SIZES = [(375, 500), (500, 375), (64, 64), (20, 400), (400, 20), (1, 1), (224, 224)]


@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 0.9), (0.2, 5.0)),
                                         ((0.99, 1.0), (1.0, 1.0))])
def test_crop_draws_are_torchvisions(scale, ratio):
    """Under torch.manual_seed(s), torchvision's get_params and flip draw give our crop for seed s."""
    from torchvision.transforms import RandomResizedCrop

    t = TrainTransform(size=32, scale=scale, ratio=ratio)
    for h, w in SIZES:
        for s in range(40):
            torch.manual_seed(s)
            i, j, ch, cw = RandomResizedCrop.get_params(torch.empty(3, h, w), list(scale), list(ratio))
            flipped = bool(torch.rand(1) < 0.5)
            assert t.crop(h, w, s) == (i, j, ch, cw, flipped), (h, w, s)


def test_output_is_torchvisions_pipeline():
    """For one sample's seed, the crop, flip and normalization of torchvision's v2 recipe, bit for bit."""
    from torchvision.transforms import v2

    rgb = fx.photo("astronaut", 150, 200)
    chw = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    for size in (32, (24, 40)):
        t = TrainTransform(size=size)
        recipe = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                             v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(t.mean), list(t.std))])
        for s in range(12):
            torch.manual_seed(s)
            expected = recipe(chw)
            mine = t.normalize(t.apply(rgb, t.crop(150, 200, s))[None])[0]
            assert mine.shape == expected.shape
            assert torch.equal(mine, expected), s


def test_a_batch_of_another_size_is_refused():
    t = TrainTransform(size=(24, 40))
    good = {"image": torch.zeros((3, 24, 40), dtype=torch.uint8), "label": 1}
    assert t.collate([good, good])["image"].shape == (2, 3, 24, 40)
    with pytest.raises(ValueError, match=r"image 1 of the batch is \(3, 40, 24\), not \(3, 24, 40\)"):
        t.collate([good, {"image": torch.zeros((3, 40, 24), dtype=torch.uint8), "label": 2}])


def test_sample_seed_depends_on_seed_epoch_and_key():
    seeds = {sample_seed(s, e, k) for s in (0, 1) for e in (0, 1) for k in ("a", "b")}
    assert len(seeds) == 8
    assert sample_seed(5, 2, "n01/x.JPEG") == sample_seed(5, 2, "n01/x.JPEG")


def test_draft_is_off_by_default():
    assert TrainTransform().draft is False
    assert LoadOptions().train is None


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    src = root / "src"
    photos = [("astronaut", 120, 160), ("chelsea", 150, 200), ("coffee", 96, 128), ("rocket", 160, 120),
              ("cat", 100, 150), ("camera", 128, 128), ("coins", 90, 140), ("immunohistochemistry", 130, 100)]
    for n, (name, h, w) in enumerate(photos):
        path = src / ("a" if n % 2 else "b") / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fx.jpeg_bytes(fx.photo(name, h, w)))  # camera and coins: grayscale JPEGs
    config = TranscodeConfig.create("imagefolder", src, ["jpeg:quality=80", "none:container=webp"],
                                    out=root / "out", samples_per_shard=3)
    assert not transcode(config).failed
    return root / "out"


def _epoch(loader):
    out = {}
    for batch in loader:
        for key, image in zip(batch["__key__"], batch["image"]):
            out[key] = image.clone()
    return out


@pytest.mark.parametrize("codec", ["jpeg:quality=80", "none:container=webp"])
def test_each_sample_is_its_own_seeded_crop_of_the_decoded_image(sets, codec):
    t = TrainTransform(size=32)
    plain = {s["__key__"]: s["image"] for s in load(sets, "imagefolder", "all", codec, image_format="numpy")}
    for epoch in (0, 1):
        ds = load(sets, "imagefolder", "all", codec, train=t, shuffle=True, seed=7)
        ds.set_epoch(epoch)
        for s in ds:
            rgb = plain[s["__key__"]]
            crop = t.crop(rgb.shape[0], rgb.shape[1], sample_seed(7, epoch, s["__key__"]))
            assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 32, 32)
            assert torch.equal(s["image"], t.apply(rgb, crop))
            assert isinstance(s["label"], int) and "bits" in s


def test_a_resumed_epoch_sees_the_same_crops(sets):
    t = TrainTransform(size=24, channels_last=True)

    def make():
        return train_loader(sets, "imagefolder", "all", "jpeg:quality=80", batch_size=2, transform=t, seed=3,
                            drop_last=False)

    loader = make()
    loader.dataset.set_epoch(1)
    full = _epoch(loader)
    assert len(full) == 8
    first = make()
    first.dataset.set_epoch(1)
    seen = {}
    it = iter(first)
    for _ in range(2):
        batch = next(it)
        assert batch["image"].dtype == torch.float32 and batch["image"].shape == (2, 3, 24, 24)
        assert batch["image"].is_contiguous(memory_format=torch.channels_last)
        assert batch["label"].dtype == torch.int64
        seen.update(zip(batch["__key__"], batch["image"]))
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    rest = _epoch(resumed)
    assert set(seen) | set(rest) == set(full) and not set(seen) & set(rest)
    for key, image in {**seen, **rest}.items():
        assert torch.equal(image, full[key]), key
    loader.dataset.set_epoch(2)
    other = _epoch(loader)
    assert any(not torch.equal(other[k], full[k]) for k in full)  # another epoch, other crops


def test_batches_are_normalized_as_torchvision_does(sets):
    from torchvision.transforms import v2

    t = TrainTransform(size=16)
    batch = next(iter(Loader(load(sets, "imagefolder", "all", "none:container=webp", train=t), batch_size=4,
                             collate_fn=t.collate)))
    raw = [s["image"] for s in load(sets, "imagefolder", "all", "none:container=webp", train=t)][:4]
    norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(t.mean), list(t.std))])
    assert torch.equal(batch["image"], torch.stack([norm(r) for r in raw]))


def test_draft_decodes_large_jpeg_crops_at_a_reduced_scale(tmp_path):
    """Opt-in approximation: close to the exact crop, decoded at 1/2 to 1/8 of the size where the crop allows."""
    t_exact, t_draft = TrainTransform(size=64), TrainTransform(size=64, draft=True)
    rgb = fx.photo("chelsea", 300, 400)
    data = fx.jpeg_bytes(rgb, quality=95)
    from pipeline.loaders.decoders import jpeg_rgb
    from pipeline.loaders.train import TrainStage

    decoded = jpeg_rgb(data)
    factors = set()
    for s in range(20):
        crop = t_draft.crop(300, 400, s)
        factors.add(t_draft.draft_factor(crop))
        approx = t_draft.apply_draft(data, crop).float()
        exact = t_exact.apply(decoded, crop).float()
        assert approx.shape == exact.shape == (3, 64, 64)
        assert (approx - exact).abs().mean() < 12  # an approximation: a few levels on average
    assert factors & {2, 4, 8} and 1 in factors
    for key in map(str, range(20)):  # the stage: draft where the crop allows a reduction, else exact
        crop = t_exact.crop(300, 400, sample_seed(0, 0, key))
        exact = t_exact.apply(decoded, crop)
        assert torch.equal(TrainStage(t_exact, 0).payload(key, 0)(jpeg_rgb, data, ext="jpg"), exact)
        drafted = TrainStage(t_draft, 0).payload(key, 0)(jpeg_rgb, data, ext="jpg")
        assert torch.equal(drafted, exact) == (t_draft.draft_factor(crop) == 1)


def test_training_stage_refusals(sets):
    t = TrainTransform(size=8)
    with pytest.raises(ConfigError, match="paired"):
        load(sets, "imagefolder", "all", ["jpeg:quality=80", "none:container=webp"], paired=True, train=t)
    with pytest.raises(ConfigError, match="evaluation"):
        load(sets, "imagefolder", "all", "jpeg:quality=80", shards=["x.tar"], train=t)
    with pytest.raises(ConfigError, match="not both"):
        load(sets, "imagefolder", "all", "jpeg:quality=80", transform=lambda x: x, train=t)
    with pytest.raises(ConfigError, match="scale"):
        TrainTransform(scale=(0.5, 0.1))


def test_evaluation_never_uses_the_training_stage():
    """mpq eval builds its loaders from LoadOptions without train (and listed shards refuse it)."""
    import ast
    import pathlib

    import pipeline.eval as ev

    for path in pathlib.Path(ev.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "train":
                raise AssertionError(f"{path} passes train=")


def test_workers_see_the_crops_of_one_process(sets):
    """The crop belongs to (seed, epoch, key), not to the worker or position that reads the sample."""
    t = TrainTransform(size=16)

    def crops(workers):
        loader = train_loader(sets, "imagefolder", "all", "jpeg:quality=80", batch_size=3, num_workers=workers,
                              transform=t, seed=11, drop_last=False)
        return _epoch(loader)

    one, two = crops(0), crops(2)
    assert set(one) == set(two) and len(one) == 8
    assert all(torch.equal(one[k], two[k]) for k in one)

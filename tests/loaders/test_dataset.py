"""pipeline.loaders: fields, every payload type, exactly-once epochs over workers x ranks, shuffling,
resampling, paired views, mixtures, and refusing to run code from a shard."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

import fixtures as fx  # noqa: E402
from pipeline.codecs import codec_names, get_codec, make_codec  # noqa: E402
from pipeline.errors import ConfigError, SampleError  # noqa: E402
from pipeline.loaders import DECODERS, load  # noqa: E402
from pipeline.loaders.dataset import ShardDataset  # noqa: E402
from pipeline.codecs.spec import parse_spec  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

SETS = ("none", "jpeg:quality=5", "webp:quality=10")


def tar_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of a set read straight from its tars: key -> {ext: bytes}."""
    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted(folder.glob("*.tar")):
        for key, members in fx.group_members(fx.read_tar(tar)).items():
            out[key] = dict(members)
    return out


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in (b if isinstance(b, list) else [b])]


def just_keys(samples):
    return [s["__key__"] for s in samples]


@pytest.fixture(scope="module")
def classes_out(tmp_path_factory, imagefolder_classes) -> Path:
    """imagefolder with labels: 6 good images (one broken file is an error row), 2 per shard."""
    out = tmp_path_factory.mktemp("loader-classes")
    result = fx.transcode("imagefolder", imagefolder_classes, out, codecs=SETS, samples_per_shard=2)
    assert not result.failed
    return out


def set_dir(out: Path, spec: str, dataset: str = "imagefolder", split: str = "all") -> Path:
    return out / dataset / split / parse_spec(spec).tag


def ok_keys(out: Path, spec: str, **kw) -> list[str]:
    rows = pq.read_table(set_dir(out, spec, **kw) / "manifest.parquet").to_pylist()
    return [r["key"] for r in rows if r["status"] == "ok"]


# --------------------------------------------------------------------------- fields and payloads


def test_samples_hold_the_stored_pixels_label_and_bits(classes_out, imagefolder_classes):
    spec = parse_spec("jpeg:quality=5")
    codec = make_codec(spec)
    stored = tar_samples(set_dir(classes_out, "jpeg:quality=5"))
    ds = load(classes_out, "imagefolder", "all", "jpeg:quality=5")
    samples = list(ds)
    assert len(ds) == len(samples) == len(imagefolder_classes.ok) == len(stored)
    labels = {Path(e.source).with_suffix("").as_posix().replace("/", "_").replace(".", "_"): e.label
              for e in imagefolder_classes.ok}
    for s in samples:
        members = stored[s["__key__"]]
        record = json.loads(members["json"])
        assert s["image"].dtype == torch.uint8 and s["image"].shape[0] == 3
        assert np.array_equal(s["image"].permute(1, 2, 0).numpy(), codec.decode(members["jpg"]))
        assert s["label"] == int(members["cls"]) == labels[s["__key__"]]
        assert s["bits"] == 8 * len(members["jpg"]) == record["bits"]
        assert s["bpp"] == record["bpp"] == s["bits"] / (s["image"].shape[1] * s["image"].shape[2])
        assert s["codec"] == spec.canonical
    assert [s["__key__"] for s in samples] == sorted(stored)  # evaluation order: shard order


def test_codec_none_reads_the_reference_set(classes_out):
    ref = list(load(classes_out, "imagefolder", "all", None, image_format="numpy"))
    stored = tar_samples(set_dir(classes_out, "none"))
    for s in ref:
        assert np.array_equal(s["image"], make_codec(parse_spec("none")).decode(stored[s["__key__"]]["png"]))
    with pytest.raises(ConfigError, match=r"avif:quality=20.*sets there: jpeg-q5, none, webp-q10"):
        load(classes_out, "imagefolder", "all", "avif:quality=20")
    with pytest.raises(ConfigError, match="uncompressed reference"):
        load(classes_out, "imagefolder", "other", None)


IMAGE_CODECS = [n for n in codec_names("image") if get_codec(n).unavailable() is None
                and not getattr(get_codec(n), "reconstruction", False)]
SETTINGS = {"jpeg": "jpeg:quality=5", "webp": "webp:quality=0", "avif": "avif:quality=20",
            "jpeg2000": "jpeg2000:ratio=60", "jxl": "jxl:distance=3", "hevc": "hevc:quality=20", "none": "none"}


def test_every_registered_image_codec_has_a_setting_here():
    assert set(IMAGE_CODECS) <= set(SETTINGS), "add a setting for the new codec to SETTINGS"


@pytest.fixture(scope="module")
def all_codecs_out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("all-codecs-src")
    for name, (h, w) in {"astronaut": (48, 64), "coffee": (40, 56), "chelsea": (33, 47)}.items():
        (root / f"{name}.png").write_bytes(fx.png_bytes(fx.photo(name, h, w)))
    out = tmp_path_factory.mktemp("all-codecs")
    result = fx.transcode("imagefolder", fx.Built(root, {}), out,
                          codecs=tuple(SETTINGS[n] for n in IMAGE_CODECS), samples_per_shard=2)
    assert not result.failed
    return out


@pytest.mark.parametrize("name", IMAGE_CODECS)
def test_every_payload_type_decodes_to_the_codec_pixels(all_codecs_out, name):
    spec = parse_spec(SETTINGS[name])
    codec = make_codec(spec)
    stored = tar_samples(set_dir(all_codecs_out, spec.canonical))
    samples = list(load(all_codecs_out, "imagefolder", "all", spec, image_format="numpy"))
    assert len(samples) == 3 and "label" not in samples[0]
    for s in samples:
        payload = stored[s["__key__"]][codec.extension]
        want = codec.decode(payload)
        assert np.array_equal(s["image"], want), "loader pixels differ from the codec's own decode"
        assert np.array_equal(DECODERS[codec.extension](payload), want)  # the table agrees with the codec
        assert s["bits"] == 8 * len(payload)


def test_image_formats_and_transform(classes_out):
    pil = next(iter(load(classes_out, "imagefolder", "all", "jpeg:quality=5", image_format="pil")))
    arr = next(iter(load(classes_out, "imagefolder", "all", "jpeg:quality=5", image_format="numpy")))
    assert np.array_equal(np.asarray(pil["image"]), arr["image"])
    seen = []
    ds = load(classes_out, "imagefolder", "all", "jpeg:quality=5", transform=lambda x: x.float() / 255,
              sample_transform=lambda s: (seen.append(s["__key__"]), s)[1])
    s = next(iter(ds))
    assert s["image"].dtype == torch.float32 and float(s["image"].max()) <= 1.0 and seen == [s["__key__"]]
    from pipeline.loaders.decoders import pil_rgb

    via_pillow = next(iter(load(classes_out, "imagefolder", "all", "jpeg:quality=5", decoders={"jpg": pil_rgb})))
    assert np.array_equal(via_pillow["image"].permute(1, 2, 0).numpy(), arr["image"]) and "jpg" not in via_pillow
    with pytest.raises(ConfigError, match="image_format"):
        load(classes_out, "imagefolder", "all", "none", image_format="cv2")


def _find(full: np.ndarray, part: np.ndarray) -> list[tuple[int, int]]:
    """Every (y, x) where ``part`` (C, h, w) sits in ``full`` (C, H, W) exactly."""
    windows = np.lib.stride_tricks.sliding_window_view(full, part.shape)[0]
    return [tuple(int(v) for v in p) for p in np.argwhere((windows == part).all(axis=(-3, -2, -1)))]


def test_ade20k_segmentation_moves_with_the_image(tmp_path, ade20k):
    v2 = pytest.importorskip("torchvision.transforms.v2")
    fx.transcode("ade20k", ade20k["train"], tmp_path, split="train", codecs=("none",))
    plain = {s["__key__"]: s for s in load(tmp_path, "ade20k", "train", None)}
    stored = tar_samples(tmp_path / "ade20k" / "train" / "none")
    for key, s in plain.items():
        want = fx.pil_raw(stored[key]["seg.png"])
        assert s["segmentation"].dtype == torch.uint8 and np.array_equal(s["segmentation"].numpy(), want)
    torch.manual_seed(3)
    crop = v2.Compose([v2.RandomCrop((40, 50)), v2.RandomHorizontalFlip(p=0.5)])
    for s in load(tmp_path, "ade20k", "train", None, transform=crop):
        full_img, full_seg = plain[s["__key__"]]["image"], plain[s["__key__"]]["segmentation"]
        assert type(s["image"]) is torch.Tensor and type(s["segmentation"]) is torch.Tensor
        assert s["image"].shape == (3, 40, 50) and s["segmentation"].shape == (40, 50)
        # find where the image crop came from (a lossless image: exact match) and check the map
        hits = [(y, x, f) for f in (False, True)
                for y, x in _find(np.asarray(full_img.flip(-1) if f else full_img), s["image"].numpy())]
        assert hits, "crop not found in the source image"
        y, x, f = hits[0]
        assert torch.equal((full_seg.flip(-1) if f else full_seg)[y:y + 40, x:x + 50], s["segmentation"])


def test_error_rows_are_not_samples(tmp_path, imagenet_folders):
    built = imagenet_folders["val"]
    fx.transcode("imagenet", built, tmp_path, split="val", codecs=("jpeg:quality=5",))
    ds = load(tmp_path, "imagenet", "val", "jpeg:quality=5")
    samples = list(ds)
    assert len(ds) == len(samples) == len(built.ok) < len(built.samples)
    assert sorted(s["label"] for s in samples) == sorted(e.label for e in built.ok)


# --------------------------------------------------------------------------- epochs


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("workers", [1, 2, 3, 4])
@pytest.mark.parametrize("shuffle", [False, True])
def test_exactly_once_over_workers_and_ranks(classes_out, world_size, workers, shuffle):
    """6 samples in 3 shards: up to 8 (rank, worker) slots, more than shards and than samples."""
    everything = ok_keys(classes_out, "jpeg:quality=5")
    got: list[str] = []
    for rank in range(world_size):
        ds = load(classes_out, "imagefolder", "all", "jpeg:quality=5", shuffle=shuffle, seed=7,
                  rank=rank, world_size=world_size)
        keys = keys_of(DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=just_keys))
        assert len(keys) == len(ds)
        got += keys
    assert sorted(got) == sorted(everything) and len(got) == len(set(got))


def test_seed_fixes_the_order_and_epochs_change_it(classes_out):
    def order(seed, epoch, workers=2):
        ds = load(classes_out, "imagefolder", "all", "webp:quality=10", shuffle=True, seed=seed, buffer=4)
        ds.set_epoch(epoch)
        return keys_of(DataLoader(ds, batch_size=None, num_workers=workers,
                                  collate_fn=lambda s: s["__key__"]))

    first = order(1, 0)
    assert first == order(1, 0)
    assert sorted(first) == sorted(ok_keys(classes_out, "webp:quality=10"))
    assert any(order(s, 0) != first for s in (2, 3, 4)), "the seed does not change the order"
    assert any(order(1, e) != first for e in (1, 2, 3)), "the epoch does not change the order"
    plain = list(load(classes_out, "imagefolder", "all", "webp:quality=10"))
    assert [s["__key__"] for s in plain] == sorted(first)


def test_a_finished_pass_moves_to_the_next_epoch(classes_out):
    ds = load(classes_out, "imagefolder", "all", "jpeg:quality=5", shuffle=True, seed=5, buffer=3)
    e0 = [s["__key__"] for s in ds]
    e1 = [s["__key__"] for s in ds]
    assert ds.epoch == 2
    again = load(classes_out, "imagefolder", "all", "jpeg:quality=5", shuffle=True, seed=5, buffer=3)
    again.set_epoch(1)
    assert [s["__key__"] for s in again] == e1 and sorted(e0) == sorted(e1)


def test_resampled_is_endless_and_seeded(classes_out):
    everything = set(ok_keys(classes_out, "jpeg:quality=5"))
    ds = load(classes_out, "imagefolder", "all", "jpeg:quality=5", resampled=True, seed=2, buffer=3)
    with pytest.raises(TypeError, match="endless"):
        len(ds)
    it = iter(ds)
    keys = [next(it)["__key__"] for _ in range(40)]
    assert set(keys) <= everything and len(set(keys)) > 1
    it2 = iter(load(classes_out, "imagefolder", "all", "jpeg:quality=5", resampled=True, seed=2, buffer=3))
    assert [next(it2)["__key__"] for _ in range(40)] == keys
    bounded = load(classes_out, "imagefolder", "all", "jpeg:quality=5", resampled=True, epoch_size=9)
    assert len(bounded) == 9 and len(keys_of(DataLoader(bounded, batch_size=2, num_workers=2,
                                                        collate_fn=just_keys))) == 9


def test_len_comes_from_the_index(classes_out):
    index = json.loads((set_dir(classes_out, "jpeg:quality=5") / "index.json").read_text())
    total = sum(s["samples"] for s in index["shards"])
    sizes = [len(load(classes_out, "imagefolder", "all", "jpeg:quality=5", rank=r, world_size=4)) for r in range(4)]
    assert sum(sizes) == total and max(sizes) - min(sizes) <= 1


# --------------------------------------------------------------------------- paired views and mixtures


def test_paired_views_join_the_same_key(classes_out):
    ds = load(classes_out, "imagefolder", "all", [None, "jpeg:quality=5"], paired=True)
    singles = {c: {s["__key__"]: s for s in load(classes_out, "imagefolder", "all", c)}
               for c in ("none", "jpeg:quality=5")}
    samples = list(ds)
    assert len(samples) == len(ds) == len(singles["none"])
    for s in samples:
        assert list(s["views"]) == ["none", "jpeg-q5"]
        for tag, spec in (("none", "none"), ("jpeg-q5", "jpeg:quality=5")):
            view, single = s["views"][tag], singles[spec][s["__key__"]]
            assert torch.equal(view["image"], single["image"]) and view["bits"] == single["bits"]
            assert view["codec"] == single["codec"]
        assert s["label"] == singles["none"][s["__key__"]]["label"]
    v2 = pytest.importorskip("torchvision.transforms.v2")
    cropped = load(classes_out, "imagefolder", "all", [None, "jpeg:quality=5"], paired=True,
                   transform=v2.CenterCrop((32, 32)))
    batch = next(iter(DataLoader(cropped, batch_size=2)))
    assert batch["views"]["jpeg-q5"]["image"].shape[0] == 2
    with pytest.raises(ConfigError, match="paired=True"):
        load(classes_out, "imagefolder", "all", ["none", "jpeg:quality=5"])


def test_paired_views_share_one_random_crop(classes_out):
    v2 = pytest.importorskip("torchvision.transforms.v2")
    torch.manual_seed(0)
    ds = load(classes_out, "imagefolder", "all", ["none", "webp:quality=10"], paired=True,
              transform=v2.RandomCrop((24, 24)))
    full = {s["__key__"]: s for s in load(classes_out, "imagefolder", "all", ["none", "webp:quality=10"],
                                          paired=True)}
    for s in ds:
        ref, crop = full[s["__key__"]]["views"]["none"]["image"], s["views"]["none"]["image"]
        y, x = _find(ref.numpy(), crop.numpy())[0]
        other = full[s["__key__"]]["views"]["webp-q10"]["image"][:, y:y + 24, x:x + 24]
        assert torch.equal(other, s["views"]["webp-q10"]["image"])


def test_mixture_draws_one_setting_per_sample_from_the_seed(classes_out):
    mix = {"jpeg:quality=5": 0.5, "webp:quality=10": 0.5}
    singles = {c: {s["__key__"]: s for s in load(classes_out, "imagefolder", "all", c)} for c in mix}
    canon = {parse_spec(c).canonical: c for c in mix}
    runs = []
    for seed in (0, 0, 1, 2, 3):
        samples = list(load(classes_out, "imagefolder", "all", mix, seed=seed))
        for s in samples:
            single = singles[canon[s["codec"]]][s["__key__"]]
            assert torch.equal(s["image"], single["image"]) and s["label"] == single["label"]
            assert s["bits"] == single["bits"]
        runs.append([(s["__key__"], s["codec"]) for s in samples])
    assert runs[0] == runs[1]
    assert len({c for run in runs for _, c in run}) == 2
    assert sorted(k for k, _ in runs[0]) == sorted(singles["jpeg:quality=5"])
    only = list(load(classes_out, "imagefolder", "all", {"jpeg:quality=5": 1, "webp:quality=10": 0}))
    assert {s["codec"] for s in only} == {parse_spec("jpeg:quality=5").canonical}
    with pytest.raises(ConfigError, match="weights"):
        load(classes_out, "imagefolder", "all", {"jpeg:quality=5": -1})


def test_joined_sets_skip_keys_one_setting_lacks(tmp_path, classes_out):
    """A sample a codec failed on (an error row in one set only) is left out of views and mixtures."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(classes_out, out)
    folder = set_dir(out, "webp:quality=10")
    index = json.loads((folder / "index.json").read_text())
    shard = index["shards"][0]
    members = fx.read_tar(folder / shard["name"])
    dropped = members[0][0].name.partition(".")[0]
    _write_tar(folder / shard["name"], [(m.name, d) for m, d in members if not m.name.startswith(dropped + ".")])
    _refresh(folder, index, shard)
    shard["samples"] -= 1
    shard["errors"] += 1
    (folder / "index.json").write_text(json.dumps(index))
    table = pq.read_table(folder / "manifest.parquet").to_pylist()
    for r in table:
        if r["key"] == dropped:
            r["status"], r["error"] = "error", "test: encoder failed"
    pq.write_table(__import__("pyarrow").Table.from_pylist(table), folder / "manifest.parquet")

    paired = list(load(out, "imagefolder", "all", ["none", "webp:quality=10"], paired=True))
    assert dropped not in [s["__key__"] for s in paired]
    assert len(paired) == len(ok_keys(out, "none")) - 1
    mix = list(load(out, "imagefolder", "all", {"none": 0.5, "webp:quality=10": 0.5}, seed=4))
    assert sorted(s["__key__"] for s in mix) == sorted(s["__key__"] for s in paired)


# --------------------------------------------------------------------------- safety and errors


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _refresh(folder: Path, index: dict, shard: dict) -> None:
    data = (folder / shard["name"]).read_bytes()
    shard["bytes"], shard["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (folder / "index.json").write_text(json.dumps(index))


class _Trap:
    """Unpickling this creates a file: proof that a loader ran code from a shard."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_members_are_never_unpickled(tmp_path, classes_out):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(classes_out, out)
    folder = set_dir(out, "jpeg:quality=5")
    index = json.loads((folder / "index.json").read_text())
    shard = index["shards"][0]
    trap = tmp_path / "trap-was-sprung"
    bad = pickle.dumps(_Trap(str(trap)))
    members = []
    for info, data in fx.read_tar(folder / shard["name"]):
        members.append((info.name, data))
        if info.name.endswith(".cls"):
            key = info.name.partition(".")[0]
            members += [(f"{key}.{ext}", bad) for ext in ("pyd", "pickle", "pth", "npy")]
    _write_tar(folder / shard["name"], members)
    _refresh(folder, index, shard)
    samples = list(load(out, "imagefolder", "all", "jpeg:quality=5", meta=True))
    assert len(samples) == len(ok_keys(out, "jpeg:quality=5"))
    assert not trap.exists()
    assert not {"pyd", "pickle", "pth", "npy"} & set(samples[0])
    with pytest.raises(ValueError, match="runs code"):
        load(out, "imagefolder", "all", "jpeg:quality=5", decoders={"pyd": pickle.loads})
    # a decoder the user names is used, on the bytes as stored
    raw = list(load(out, "imagefolder", "all", "jpeg:quality=5", decoders={"npy": bytes}))
    assert raw[0]["npy"] == bad and not trap.exists()


def test_damaged_payloads_raise_or_are_skipped(tmp_path, classes_out):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(classes_out, out)
    folder = set_dir(out, "jpeg:quality=5")
    index = json.loads((folder / "index.json").read_text())
    shard = index["shards"][1]
    members = [(m.name, d[: len(d) // 3] if m.name.endswith(".jpg") and i == 0 else d)
               for i, (m, d) in enumerate(fx.read_tar(folder / shard["name"]))]
    _write_tar(folder / shard["name"], members)
    _refresh(folder, index, shard)
    broken = members[0][0].partition(".")[0]
    with pytest.raises(SampleError, match=broken):
        list(load(out, "imagefolder", "all", "jpeg:quality=5"))
    kept = list(load(out, "imagefolder", "all", "jpeg:quality=5", on_error="skip"))
    assert broken not in [s["__key__"] for s in kept] and len(kept) == len(ok_keys(out, "jpeg:quality=5")) - 1
    with pytest.warns(UserWarning, match=broken):
        list(load(out, "imagefolder", "all", "jpeg:quality=5", on_error="warn"))


def test_a_shard_of_another_setting_is_refused(tmp_path, classes_out):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(classes_out, out)
    a, b = set_dir(out, "jpeg:quality=5"), set_dir(out, "webp:quality=10")
    index = json.loads((a / "index.json").read_text())
    shard = index["shards"][0]
    other = json.loads((b / "index.json").read_text())["shards"][0]["name"]
    members = [(m.name.replace(".webp", ".jpg"), d) for m, d in fx.read_tar(b / other)]
    _write_tar(a / shard["name"], members)
    _refresh(a, index, shard)
    with pytest.raises(SampleError, match="record names codec"):
        list(load(out, "imagefolder", "all", "jpeg:quality=5"))
    with pytest.raises(SampleError, match="differs from index.json"):
        (a / shard["name"]).write_bytes(b"\0" * shard["bytes"])
        list(load(out, "imagefolder", "all", "jpeg:quality=5", verify=True))


def test_dataset_pickles_without_codecs(classes_out):
    ds = load(classes_out, "imagefolder", "all", "jpeg:quality=5")
    next(iter(ds))
    clone = pickle.loads(pickle.dumps(ds))
    assert isinstance(clone, ShardDataset) and clone._tables is None
    assert [s["__key__"] for s in clone] == [s["__key__"] for s in ds]

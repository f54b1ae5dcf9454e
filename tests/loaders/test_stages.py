"""Each loader stage alone (ownership, runs, reading, joining, ordering, error policy, decoding,
transforms, resume state, options), then the two options built on them: ``shards=`` and ``on_error=fn``."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fixtures as fx  # noqa: E402
from pipeline.codecs.spec import parse_spec  # noqa: E402
from pipeline.errors import ConfigError, SampleError  # noqa: E402
from pipeline.loaders import LoadOptions, load  # noqa: E402
from pipeline.loaders import resume as rs  # noqa: E402
from pipeline.loaders import sampling as smp  # noqa: E402
from pipeline.loaders import stages  # noqa: E402
from pipeline.loaders.decode import ViewDecoder  # noqa: E402
from pipeline.loaders.sets import open_set  # noqa: E402
from pipeline.loaders.storage import Storage  # noqa: E402
from pipeline.store.index import Field, SetIndex, attachment, record  # noqa: E402

COUNTS = (5, 0, 7, 3, 6)


def read_tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


@pytest.fixture(scope="module")
def out(tmp_path_factory, imagefolder_classes) -> Path:
    out = tmp_path_factory.mktemp("stages")
    assert not fx.transcode("imagefolder", imagefolder_classes, out, codecs=("none", "jpeg:quality=10")).failed
    return out


def folder(out: Path, spec: str) -> Path:
    return out / "imagefolder" / "all" / parse_spec(spec).tag


# --------------------------------------------------------------------------- 1. ownership


@pytest.mark.parametrize("shuffle", [False, True])
def test_owned_gives_every_position_to_exactly_one_slot(shuffle):
    total = sum(COUNTS)
    got = []
    for rank in range(2):
        for worker in range(3):
            seq, order = stages.owned(COUNTS, smp.Slot(rank, 2, worker, 3), shuffle=shuffle, buffer=4, seed=7, epoch=1)
            assert sorted(order) == list(range(len(seq)))  # an emission order of what the slot reads
            got += [int(seq[i]) for i in order]
    assert sorted(got) == list(range(total))
    assert (got == list(range(total))) != shuffle  # in shard order unless shuffled


def test_owned_leaves_out_what_a_resumed_epoch_did():
    done = np.zeros(sum(COUNTS), dtype=bool)
    done[[0, 4, 9]] = True
    seq, _ = stages.owned(COUNTS, smp.Slot(0, 1, 0, 1), shuffle=False, buffer=0, seed=0, epoch=0, done=done)
    assert set(map(int, seq)) == set(range(sum(COUNTS))) - {0, 4, 9}


def test_resampled_rounds_draw_whole_shards_to_the_quota():
    rounds = stages.resampled_rounds(COUNTS, smp.Slot(0, 1, 0, 1), buffer=3, seed=1, epoch=0, epoch_size=10)
    (seq, order), = list(rounds)
    assert len(seq) == 10 and sorted(order) == list(range(10))
    offsets = smp.offsets(COUNTS)
    shard = np.searchsorted(offsets, seq, side="right") - 1
    assert all(COUNTS[j] > 0 for j in shard)
    endless = stages.resampled_rounds(COUNTS, smp.Slot(0, 1, 0, 1), buffer=3, seed=1, epoch=0, epoch_size=None)
    first = [next(endless) for _ in range(3)]
    assert all(len(s) == sum(COUNTS) for s, _ in first)  # one rank's share per round, forever
    again = stages.resampled_rounds(COUNTS, smp.Slot(0, 1, 0, 1), buffer=3, seed=1, epoch=0, epoch_size=None)
    assert all(np.array_equal(a[0], next(again)[0]) for a in first)  # a function of the seed only


def test_listed_reads_named_shards_whole_and_in_order():
    names = [[f"a{j}.tar" for j in range(len(COUNTS))], [f"b{j}.tar" for j in range(len(COUNTS))]]
    seq, order = stages.listed(COUNTS, names, ["a3.tar", "b0.tar"])  # any set's name for its shard
    assert list(seq) == [12, 13, 14, 0, 1, 2, 3, 4] and order == list(range(8))
    with pytest.raises(ConfigError, match="a9.tar"):
        stages.listed(COUNTS, names, ["a9.tar"])


# --------------------------------------------------------------------------- 2.-5. runs, reading, joining, order


def test_shard_runs_group_ascending_positions_of_one_shard():
    offsets = smp.offsets((3, 3))
    seq = np.array([0, 1, 2, 3, 5, 4])
    assert list(stages.shard_runs(seq, offsets, skipped=set())) == [(0, [0, 1, 2], [0, 1, 2]), (1, [0, 2], [3, 4]),
                                                                     (1, [1], [5])]
    assert list(stages.shard_runs(seq, offsets, skipped={0, 1, 2, 4})) == [(1, [0], [3]), (1, [1], [5])]


def test_read_shard_and_join_views_give_the_tar_members(out):
    storage = Storage(str(out))
    sets = [open_set(storage, "imagefolder", "all", s) for s in ("none", "jpeg:quality=10")]
    tar = dict(read_tar(folder(out, "jpeg:quality=10") / sets[1].shards[0].name))
    reader = stages.read_shard(storage, sets, [None, None], 0, [0, 1])
    first = next(reader)  # the shard files are open while the reader runs
    assert [g.key for g in first] == [first[0].key] * 2
    key2, one = stages.join_views(first, ["none", "jpeg-q10"], lambda k: 1, [("png",), ("jpg",)])
    assert [s for s, _ in one] == [1] and set(one[0][1]) == {"jpg"}  # a mixture reads the chosen set only
    other = stages.Group("zzz", {}, None, "x.tar")
    with pytest.raises(SampleError, match="zzz"):
        stages.join_views([first[0], other], ["none", "jpeg-q10"], None, [(), ()])
    key, views = stages.join_views(next(reader), ["none", "jpeg-q10"], None, [("json",), ("jpg", "json", "cls")])
    assert [s for s, _ in views] == [0, 1] and set(views[1][1]) == {"jpg", "json", "cls"}
    assert views[1][1]["jpg"] == tar[f"{key}.jpg"] and views[1][1]["cls"] == tar[f"{key}.cls"]
    assert list(tar).index(f"{key}.json") > list(tar).index(f"{key2}.json")  # tar order
    with pytest.raises(StopIteration):
        next(reader)


def test_mixture_choice_follows_the_weights_and_the_key():
    choose = stages.mixture_choice([0.25, 0.0, 0.75], seed=3, epoch=0)
    picks = [choose(f"k{i}") for i in range(2000)]
    assert 1 not in picks and 0.2 < picks.count(0) / 2000 < 0.3
    assert picks == [stages.mixture_choice([0.25, 0.0, 0.75], seed=3, epoch=0)(f"k{i}") for i in range(2000)]


def test_reorder_emits_in_order_and_never_reads_the_skipped():
    read = []

    def items():
        for r in [1, 2, 3]:  # read order (index 0 is skipped, so never read)
            read.append(r)
            yield r, f"item{r}"

    assert list(stages.reorder(items(), [0, 3, 1, 2], skip=1)) == ["item3", "item1", "item2"]
    assert read == [1, 2, 3]


# --------------------------------------------------------------------------- 6. error policy


def test_guarded_policies():
    def bad():
        raise SampleError("broken bytes")

    assert stages.guarded("k", lambda: 5, "raise") == (True, 5)
    with pytest.raises(SampleError, match="k: broken bytes"):
        stages.guarded("k", bad, "raise")
    assert stages.guarded("k", bad, "skip") == (False, None)
    with pytest.warns(UserWarning, match="skipping sample k"):
        stages.guarded("k", bad, "warn")
    seen = []
    assert stages.guarded("k", bad, lambda key, exc: seen.append((key, str(exc)))) == (False, None)
    assert seen == [("k", "broken bytes")]


# --------------------------------------------------------------------------- decoding from a schema


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_view_decoder_follows_the_schema_alone():
    """A hand-written index: the decoder hands out what its fields say, nothing per dataset."""
    rgb = fx.photo("coffee", 8, 12)
    depth = (np.arange(96).reshape(8, 12) % 7).astype(np.uint8)
    schema = (Field("picture", "payload", "image", "png", "codec"), record("bits", "int", view=True),
              attachment("depth", "depth.png", "mask", "label_map"), attachment("note", "note.txt", "text", "text"),
              record("weather", "text"))
    index = SetIndex(dataset="toy", split="all", codec="none", tag="none", modality="image", shards=(),
                     schema=schema)
    dec = ViewDecoder(index, parse_spec("none"), {}, image_format="numpy")
    assert dec.wanted(True) == ("json", "png", "depth.png", "note.txt") and dec.wanted(False) == ("json", "png")
    members = {"json": json.dumps({"codec": "none", "bits": 8, "weather": "fog"}).encode(), "png": _png(rgb),
               "depth.png": _png(depth), "note.txt": b"hello"}
    view, extra = dec(members)
    assert list(view) == ["picture", "bits", "codec"] and np.array_equal(view["picture"], rgb)
    assert torch.equal(extra["depth"], torch.from_numpy(depth)) and extra["note"] == "hello"
    assert extra["weather"] == "fog" and dec.masks == ("depth",)
    with pytest.raises(SampleError, match="no .png payload"):
        dec({"json": members["json"]})
    # a member listed without a decoder is not decoded, unless the user gives one
    listed_only = SetIndex(dataset="toy", split="all", codec="none", tag="none", modality="image", shards=(),
                           schema=(*schema, Field("decoded", "payload", "image", "decoded.png")))
    plain_view, plain_extra = ViewDecoder(listed_only, parse_spec("none"), {})({**members, "decoded.png": b"x"})
    assert "decoded" not in plain_view and "decoded.png" not in plain_extra
    _, user_extra = ViewDecoder(listed_only, parse_spec("none"), {"decoded.png": bytes})({**members,
                                                                                          "decoded.png": b"x"})
    assert user_extra["decoded.png"] == b"x"
    with pytest.raises(SampleError, match="record names codec"):
        dec({**members, "json": b'{"codec": "jpeg:quality=5"}'})


# --------------------------------------------------------------------------- 7. transforms


def test_apply_transform_calls_once_with_aligned_inputs():
    sample = {"image": torch.zeros(3, 4, 6, dtype=torch.uint8), "segmentation": torch.ones(4, 6, dtype=torch.uint8)}
    calls = []

    def crop(img, mask):
        calls.append((type(img).__name__, type(mask).__name__))
        return img[:, :2], mask[:2]

    stages.apply_transform(sample, crop, views=[sample], payload="image", masks=("segmentation",), wrap_images=True)
    assert calls == [("Image", "Mask")]
    assert type(sample["image"]) is torch.Tensor and sample["image"].shape == (3, 2, 6)
    assert type(sample["segmentation"]) is torch.Tensor and sample["segmentation"].shape == (2, 6)
    with pytest.raises(ConfigError, match="expected 2 outputs"):
        stages.apply_transform(sample, lambda a, b: a, views=[sample], payload="image", masks=("segmentation",))
    audio = {"mixture": torch.zeros(2, 10), "coded_stems": {"bass": torch.zeros(2, 10)},
             "stems": {"bass": torch.ones(2, 10)}}
    stages.apply_transform(audio, lambda *xs: tuple(x[:, :4] for x in xs), views=[audio], payload="mixture",
                           view_groups=("coded_stems",), sample_groups=("stems",))
    assert audio["mixture"].shape == audio["coded_stems"]["bass"].shape == audio["stems"]["bass"].shape == (2, 4)


# --------------------------------------------------------------------------- resume state


def test_resume_point_round_trip_and_refusals():
    ident = rs.Identity("d", "s", ("none",), sum(COUNTS), {"shuffle": False}, 0)
    state = json.loads(json.dumps(rs.make_state(ident, epoch=2, world_size=1, num_workers=2,
                                                consumed={"0": [3, 4]}, done=None, next_worker=1)))
    point = rs.resume_point(state, ident, rank=0, world_size=1, num_workers=2, counts=COUNTS, shuffle=False,
                            buffer=0, fixed_layout=False)
    assert (point.epoch, point.skip, point.rotate, point.done) == (2, (3, 4), 1, None)
    other = rs.resume_point(state, ident, rank=0, world_size=1, num_workers=3, counts=COUNTS, shuffle=False,
                            buffer=0, fixed_layout=False)
    assert other.skip == (0, 0, 0) and int(other.done.sum()) == 7  # what was emitted is done, split anew
    with pytest.raises(ConfigError, match="resumes only"):
        rs.resume_point(state, ident, rank=0, world_size=1, num_workers=3, counts=COUNTS, shuffle=False,
                        buffer=0, fixed_layout=True)
    with pytest.raises(ConfigError, match="another loader"):
        rs.resume_point(state, rs.Identity("d", "s", ("jpeg:quality=5",), sum(COUNTS), {"shuffle": False}, 0),
                        rank=0, world_size=1, num_workers=2, counts=COUNTS, shuffle=False, buffer=0,
                        fixed_layout=False)


# --------------------------------------------------------------------------- options


def test_load_options():
    base = LoadOptions(shuffle=True, seed=3)
    assert LoadOptions.create(base, seed=4) == LoadOptions(shuffle=True, seed=4)
    with pytest.raises(TypeError, match="shufle"):
        LoadOptions.create(shufle=True)
    with pytest.raises(ConfigError, match="on_error"):
        LoadOptions(on_error="ignore")
    with pytest.raises(ConfigError, match="shuffle"):
        LoadOptions(shards=["a.tar"], shuffle=True)
    with pytest.raises(ConfigError, match="list"):
        LoadOptions(shards="a.tar")
    assert LoadOptions(shards=["a.tar"]).shards == ("a.tar",)
    assert callable(LoadOptions(on_error=print).on_error)


def test_load_takes_an_options_object_or_keywords(out):
    a = [s["__key__"] for s in load(out, "imagefolder", "all", "jpeg:quality=10", shuffle=True, seed=5)]
    b = [s["__key__"] for s in load(out, "imagefolder", "all", "jpeg:quality=10", LoadOptions(shuffle=True, seed=5))]
    c = [s["__key__"] for s in load(out, "imagefolder", "all", "jpeg:quality=10", options=LoadOptions(shuffle=True),
                                    seed=5)]
    assert a == b == c and sorted(a) != a or len(a) < 3


# --------------------------------------------------------------------------- shards= and on_error=fn


def test_shards_reads_the_listed_shards_whole_in_order(out):
    index = json.loads((folder(out, "jpeg:quality=10") / "index.json").read_text())
    names = [s["name"] for s in index["shards"]]
    wanted = [names[2], names[0]]
    expect = [n.partition(".")[0] for w in wanted for n, _ in read_tar(folder(out, "jpeg:quality=10") / w)
              if n.endswith(".json")]
    ds = load(out, "imagefolder", "all", "jpeg:quality=10", shards=wanted)  # no rank or worker split
    assert [s["__key__"] for s in ds] == expect and len(ds) == len(expect)
    with pytest.raises(ConfigError, match="no rank or world_size"):  # an explicit split is refused, not ignored
        load(out, "imagefolder", "all", "jpeg:quality=10", shards=wanted, rank=1, world_size=2)
    paired = load(out, "imagefolder", "all", ["none", "jpeg:quality=10"], paired=True, shards=wanted)
    assert [s["__key__"] for s in paired] == expect
    ds = load(out, "imagefolder", "all", "jpeg:quality=10", shards=wanted)
    it = iter(ds)
    first = [next(it)["__key__"]]
    again = load(out, "imagefolder", "all", "jpeg:quality=10", shards=wanted)
    again.load_state_dict(ds.state_dict())
    assert first + [s["__key__"] for s in again] == expect  # resumes within the list
    with pytest.raises(ConfigError, match="not in the set"):
        load(out, "imagefolder", "all", "jpeg:quality=10", shards=["nope.tar"])


def test_on_error_function_gets_the_key_and_the_sample_is_skipped(out, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    f = folder(copy, "jpeg:quality=10")
    index = json.loads((f / "index.json").read_text())
    shard = index["shards"][0]
    members = read_tar(f / shard["name"])
    broken = members[0][0].partition(".")[0]
    with tarfile.open(f / shard["name"], "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            data = data[: len(data) // 3] if name == f"{broken}.jpg" else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    data = (f / shard["name"]).read_bytes()
    shard["bytes"], shard["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (f / "index.json").write_text(json.dumps(index))
    seen: list[tuple[str, Exception]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a function replaces the warning
        kept = [s["__key__"] for s in load(copy, "imagefolder", "all", "jpeg:quality=10",
                                           on_error=lambda key, exc: seen.append((key, exc)))]
    assert [k for k, _ in seen] == [broken] and isinstance(seen[0][1], SampleError) and ".jpg" in str(seen[0][1])
    assert broken not in kept and len(kept) == index["counts"]["ok"] - 1

"""A researcher's own CompressAI checkpoint (``compressai:arch=...,checkpoint=PATH``) and the batch path.

The checkpoints are RANDOMLY INITIALISED models of CompressAI's real architecture classes, written
here (small N and M so the pipeline runs stay quick; the batch-exactness tests use the zoo's sizes).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import checkpoints as ck
import fixtures as fx
import numpy as np
import pytest

from pipeline import TranscodeConfig, transcode
from pipeline.codecs import batching, bitstream, make_codec
from pipeline.codecs.spec import parse_spec
from pipeline.errors import ConfigError
from pipeline.modalities import image as image_modality
from pipeline.run.task import ROW_ONLY

torch = pytest.importorskip("torch")
pytest.importorskip("compressai")

ARCH = "mbt2018-mean"
SIZES = {"photo": ("astronaut", 64, 96), "odd": ("chelsea", 45, 70), "wide": ("rocket", 40, 120)}


pytestmark = pytest.mark.usefixtures("offline_cpu")


def _save(path: Path, arch: str = ARCH, n: int = 16, m: int = 24, seed: int = 0, scale: float = 1.0,
          tables: bool = False, strip: bool = False) -> Path:
    """A random model of ``arch`` (see :func:`checkpoints.save_state` for the options)."""
    from compressai.zoo.image import model_architectures

    torch.manual_seed(seed)
    model = model_architectures[arch](n, m)
    return ck.save_state(model, path, scale_layer=model.g_a[-1], scale=scale, tables=tables, strip=strip)


# --------------------------------------------------------------------------- specs


def test_spec_names_the_checkpoint_by_hash(ckpts):
    spec = parse_spec(f"compressai:arch={ARCH},checkpoint={ckpts['a']}")
    sha = ck.sha256(ckpts["a"])
    assert spec.canonical == f"compressai:arch={ARCH},checkpoint={ckpts['a']},quality=1,sha256={sha}"
    assert spec.tag == f"compressai-ambt2018mmean-q1-h{sha[:10]}"  # the path is never in the tag
    other = parse_spec(f"compressai:arch={ARCH},checkpoint={ckpts['b']}")
    assert other.tag != spec.tag
    assert parse_spec(spec.canonical) == spec  # a canonical spec reparses to itself
    several = parse_spec(f"compressai:arch={ARCH},checkpoint={ckpts['a']}|{ckpts['b']},bpp=0.5")
    assert several["sha256"] == f"{sha}|{ck.sha256(ckpts['b'])}"
    assert several.tag.startswith("compressai-ambt2018mmean-bpp0p5-h") and several.tag != spec.tag
    folder = parse_spec(f"compressai:arch={ARCH},checkpoint={ckpts['low'].parent},quality=2")
    assert folder["sha256"] == f"{ck.sha256(ckpts['low'])}|{ck.sha256(ckpts['high'])}"  # a folder: its files by name


def test_spec_refusals_name_the_problem(ckpts, tmp_path):
    ck.check_spec_refusals(f"compressai:arch={ARCH},", ckpts, tmp_path)
    with pytest.raises(ConfigError, match="unknown arch 'nope'"):
        parse_spec(f"compressai:arch=nope,checkpoint={ckpts['a']}")
    with pytest.raises(ConfigError, match="changed since the spec was written"):  # a stale canonical spec
        parse_spec(f"compressai:arch={ARCH},checkpoint={ckpts['a']},sha256={ck.sha256(ckpts['b'])}")


def test_relative_paths_are_under_the_weights_dir(ckpts, monkeypatch):
    monkeypatch.setenv("MPQ_WEIGHTS_DIR", str(ckpts["a"].parent))
    assert parse_spec(f"compressai:arch={ARCH},checkpoint=a.pth")["sha256"] == ck.sha256(ckpts["a"])


def test_a_checkpoint_for_another_architecture_fails_before_any_work(ckpts, photos, tmp_path):
    out = tmp_path / "out"
    config = TranscodeConfig.create("imagefolder", photos[0], [f"compressai:arch=bmshj2018-hyperprior,"
                                                               f"checkpoint={ckpts['a']}"], out=out)
    with pytest.raises(ConfigError, match=f"checkpoint {ckpts['a']} does not fit bmshj2018-hyperprior"):
        transcode(config)
    assert not out.exists()


def test_missing_tables_are_rebuilt_and_given_ones_kept(tmp_path, photos):
    rgb = photos[1]["photo"]
    empty = _save(tmp_path / "empty.pth")  # saved before update(): empty tables
    stripped = _save(tmp_path / "stripped.pth", strip=True)  # no table keys at all
    given = _save(tmp_path / "given.pth", tables=True)  # the zoo's way
    enc = {name: make_codec(parse_spec(f"compressai:arch={ARCH},checkpoint={p}")).encode(rgb)
           for name, p in [("empty", empty), ("stripped", stripped), ("given", given)]}
    strings = {k: bitstream.unpack(e.payload).groups for k, e in enc.items()}
    assert strings["empty"] == strings["stripped"] == strings["given"]  # update(force=True) rebuilt the same tables
    state = torch.load(given, weights_only=True)
    assert state["gaussian_conditional._quantized_cdf"].numel() > 0


def test_n_and_m_can_be_given(tmp_path, photos):
    path = _save(tmp_path / "nm.pth", n=16, m=24)
    rgb = photos[1]["odd"]
    read = make_codec(parse_spec(f"compressai:arch={ARCH},checkpoint={path}"))
    given = make_codec(parse_spec(f"compressai:arch=MeanScaleHyperprior,checkpoint={path},n=16,m=24"))
    assert bitstream.unpack(read.encode(rgb).payload).groups == bitstream.unpack(given.encode(rgb).payload).groups
    with pytest.raises(ConfigError, match="does not fit"):
        get = parse_spec(f"compressai:arch={ARCH},checkpoint={path},n=32,m=24")
        type(make_codec(get)).preflight(get)


# --------------------------------------------------------------------------- the pipeline run


@pytest.fixture(scope="module")
def own_run(tmp_path_factory, ckpts, photos):
    root = tmp_path_factory.mktemp("own-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPQ_DEVICE", "cpu")
        mp.delenv("MPQ_WEIGHTS_DIR", raising=False)
        specs = [f"compressai:arch={ARCH},checkpoint={ckpts['a']}", f"compressai:arch={ARCH},checkpoint={ckpts['b']}",
                 f"compressai:arch={ARCH},checkpoint={ckpts['low'].parent},bpp=BPP"]
        yield root, specs


def test_two_checkpoints_two_sets_exact_bits_and_decode(own_run, ckpts, photos, tmp_path, monkeypatch):

    root, specs = own_run
    result = transcode(TranscodeConfig.create("imagefolder", photos[0], specs[:2], out=root / "out"))
    assert not result.failed and len(result.sets) == 2
    assert len({s.tag for s in result.sets}) == 2 and len({s.folder for s in result.sets}) == 2
    for summary, name in zip(result.sets, ["a", "b"]):
        folder = Path(summary.folder)
        index = json.loads((folder / "index.json").read_text())
        assert index["spec"]["params"]["sha256"] == ck.sha256(ckpts[name])  # the index records the file's SHA-256
        assert folder.name.endswith(ck.sha256(ckpts[name])[:10])
        for key, d in fx.set_members(folder).items():
            stream = ck.check_stored_sample(d, photos[1][key])
            assert stream.spec == f"compressai:arch={ARCH},sha256={ck.sha256(ckpts[name])[:16]}"  # no path in the bits
    d = next(iter(fx.set_members(Path(result.sets[0].folder)).values()))
    ck.check_decode_finds_the_checkpoint(d, tmp_path, ckpts["a"].parent,
                                         f"no checkpoint with SHA-256 {ck.sha256(ckpts['a'])[:16]}", monkeypatch)


def test_a_changed_checkpoint_is_a_new_set(tmp_path, photos):
    path = _save(tmp_path / "w" / "mine.pth", seed=3)
    spec = f"compressai:arch={ARCH},checkpoint={path}"
    first = transcode(TranscodeConfig.create("imagefolder", photos[0], [spec], out=tmp_path / "out"))
    _save(path, seed=4)  # retrained, same name
    second = transcode(TranscodeConfig.create("imagefolder", photos[0], [spec], out=tmp_path / "out"))
    assert first.sets[0].tag != second.sets[0].tag
    assert sorted(p.name for p in (tmp_path / "out").rglob("index.json")) == ["index.json", "index.json"]


def test_bpp_with_several_checkpoints_picks_the_right_one(own_run, ckpts, photos, tmp_path):
    root, specs = own_run
    low, high = (make_codec(parse_spec(f"compressai:arch={ARCH},checkpoint={ckpts['low'].parent},quality={q}"))
                 for q in (1, 2))
    rgb = photos[1]["photo"]
    pixels = rgb.shape[0] * rgb.shape[1]
    bpp_low, bpp_high = (8 * len(c.encode(rgb).payload) / pixels for c in (low, high))
    assert bpp_low < bpp_high  # the scaled analysis transform spends more bits
    for target, chosen in [((bpp_low + bpp_high) / 2, 1), (bpp_high, 2)]:
        spec = specs[2].replace("BPP", repr(target))
        out = tmp_path / f"out-{chosen}"
        result = transcode(TranscodeConfig.create("imagefolder", photos[0], [spec], out=out))
        d = fx.set_members(Path(result.sets[0].folder))["photo"]
        record = json.loads(d["json"])
        assert record["chosen_quality"] == chosen and record["bpp"] <= target
        assert d["bin"] == (low, high)[chosen - 1].encode(rgb).payload
        assert np.array_equal(bitstream.decode_bytes(d["bin"], record=record), fx.rgb_pixels(d["png"]))


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_batched_and_one_at_a_time_bitstreams_are_equal(arch, tmp_path, monkeypatch):
    """Zoo-sized random models; images of one padded size in one batch, others in their own."""
    from compressai.zoo.image import cfgs

    from pipeline.codecs.compressai_zoo import CompressAIModel

    monkeypatch.setattr(CompressAIModel, "cpu_batch", 2)  # batches on the CPU too (a GPU's default is 8)

    path = _save(tmp_path / f"{arch}.pth", arch, *cfgs[arch][1], tables=True)
    codec = make_codec(parse_spec(f"compressai:arch={arch},checkpoint={path}"))
    rgbs = [fx.photo("astronaut", 120, 180), fx.photo("chelsea", 128, 190), fx.photo("coffee", 100, 170),
            fx.photo("rocket", 64, 64)]
    assert len({codec.batch_key(r) for r in rgbs[:3]}) == 1  # 128 x 192 once padded
    encs = codec.encode_batch(rgbs[:2])
    alone = [codec.encode(r) for r in rgbs]
    assert [e.payload for e in encs] == [a.payload for a in alone[:2]]
    assert all(np.array_equal(x, codec.decode(a.payload)) for x, a in zip(codec.decode_batch([e.payload for e in encs]),
                                                                           alone))
    model = codec._model()
    verdict = batching.batch_exact(("encode", batching.model_token(model), "cpu", (128, 192), 2))
    assert verdict is not None  # the first batch of this size was checked layer by layer
    # the modality's batch path: the same members and facts as one image at a time (timings aside, and
    # decoded_from: a batch's synthesis from kept latents is used only where exact on this CPU)
    options: dict = {}
    many = image_modality.encode_many(codec, rgbs, options)
    for rgb, got in zip(rgbs, many):
        assert not isinstance(got, Exception)
        members, m = image_modality.encode(codec, rgb, options)
        assert got[0] == members
        assert {k: v for k, v in got[1].items() if not k.endswith("_s") and k not in ROW_ONLY} == {
            k: v for k, v in m.items() if not k.endswith("_s") and k not in ROW_ONLY}


def test_the_cpu_codes_one_image_at_a_time_by_default(tmp_path):
    path = _save(tmp_path / "m.pth", "bmshj2018-hyperprior", 16, 24, tables=True)
    codec = make_codec(parse_spec(f"compressai:arch=bmshj2018-hyperprior,checkpoint={path}"))
    assert codec.max_batch == 1 and not batching.batchable(codec) and not image_modality.batched(codec, {})
    codec.gpu_batch = 8
    codec._device = "cuda"  # what a GPU worker would choose (nothing runs here)
    assert codec.max_batch == 8 and batching.batchable(codec) and image_modality.batched(codec, {})
    assert not image_modality.batched(codec, {"deep": True})


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_a_batched_transcode_writes_the_same_shards(arch, tmp_path, photos, monkeypatch):
    """The whole run, batched (windows of samples through encode_many) against one image at a time."""
    from pipeline.codecs.compressai_zoo import CompressAIModel

    path = _save(tmp_path / "m.pth", arch, 16, 24)
    spec = f"compressai:arch={arch},checkpoint={path}"
    shards = {}
    for batch in (1, 4):
        monkeypatch.setattr(CompressAIModel, "cpu_batch", batch)
        result = transcode(TranscodeConfig.create("imagefolder", photos[0], [spec], out=tmp_path / f"out{batch}"))
        assert not result.failed and result.sets[0].ok == len(SIZES)
        shards[batch] = {p.name: p.read_bytes() for p in sorted(Path(result.sets[0].folder).glob("*.tar"))}
    assert shards[1] == shards[4] and shards[1]
    model = make_codec(parse_spec(spec))._model()
    assert batching.batch_exact(("encode", batching.model_token(model), "cpu", (64, 128), 2)) is not None


def test_a_batch_dependent_network_is_coded_one_image_at_a_time(tmp_path, monkeypatch):
    """A layer whose floats depend on the batch (as a kernel chosen by shape can): seen, and not batched."""
    path = _save(tmp_path / "m.pth", "bmshj2018-hyperprior", 16, 24, tables=True)
    codec = make_codec(parse_spec(f"compressai:arch=bmshj2018-hyperprior,checkpoint={path}"))
    model = codec._model()
    layer = model.g_s[0]
    original = layer.forward

    def drifting(x):  # one ulp-sized change when more than one image runs: invisible in most bytes
        out = original(x)
        return out * (1 + 1e-7) if x.shape[0] > 1 else out

    monkeypatch.setattr(layer, "forward", drifting)
    rgbs = [fx.photo("astronaut", 64, 64), fx.photo("chelsea", 64, 64)]
    encs = codec.encode_batch(rgbs)
    assert [e.payload for e in encs] == [codec.encode(r).payload for r in rgbs]
    with pytest.warns(RuntimeWarning, match="batching changes the result"):
        decs = codec.decode_batch([e.payload for e in encs])
    key = ("decode", batching.model_token(model), "cpu", (1, 1), 2)
    assert batching.batch_exact(key) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = codec.decode_batch([e.payload for e in encs])  # decided: one image at a time, no new check
    assert all(np.array_equal(a, codec.decode(e.payload)) and np.array_equal(a, b)
               for a, b, e in zip(decs, again, encs))


def test_chunks_bucket_by_key_in_powers_of_two():
    keys = ["a", "b", "a", None, "a", "a", "a", "a"]
    parts = batching.chunks(keys, 4)
    assert sorted(i for p in parts for i in p) == list(range(len(keys)))
    assert all(len(p) in (1, 2, 4) and len({keys[i] for i in p}) == 1 for p in parts)
    assert [p for p in parts if keys[p[0]] == "a"] == [[0, 2, 4, 5], [6, 7]]


def test_model_caches_are_per_codec_family_and_least_recently_used():
    """Each family keeps its own models (MS-ILLM's 726 MB ones never crowd out the others, nor the reverse);
    a full cache drops the least recently used model before building the next, and builds a key once."""
    from pipeline.codecs import get_codec
    from pipeline.codecs.compressai_zoo import ModelCache

    assert get_codec("compressai").models is not get_codec("msillm-own").models
    assert (get_codec("compressai").models.size, get_codec("msillm-own").models.size) == (8, 2)
    built: list[str] = []
    cache = ModelCache(2)

    def get(key: str) -> str:
        return cache.get(key, lambda: built.append(key) or f"model {key}")

    assert [get("a"), get("b"), get("a"), get("c"), get("a"), get("b")] == [
        "model a", "model b", "model a", "model c", "model a", "model b"]
    assert built == ["a", "b", "c", "b"]  # c pushed out b (a was used more recently), so b is built again

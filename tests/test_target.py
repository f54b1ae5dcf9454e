"""Target-rate mode (``jpeg:bpp=0.25``, ``mp3:vbr_kbps=64``): never over the target, the best quality under it,
unreachable targets as error rows, and sweeps byte-identical to separate runs.

Every check re-encodes independently at the recorded quality and its neighbour, and recomputes the
rate from the stored payload.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import fixtures as fx
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.codecs import codec_names, get_codec, make_codec
from pipeline.errors import ConfigError, SampleError
from pipeline.modalities import image as image_modality
from pipeline.codecs.spec import parse_spec, parse_specs
from pipeline.codecs.target import knob_spec

TARGET_CODECS = [n for n in codec_names("image")
                 if "bpp" in {p.name for p in get_codec(n).params} and get_codec(n).unavailable() is None
                 and not get_codec(n).needs_gpu]  # learned codecs: tested with their random checkpoints below
PHOTOS = (("astronaut", 96, 128), ("coffee", 80, 120))


def _fixed(spec, value: int):
    return make_codec(knob_spec(spec, value))


def _bpp(payload: bytes, rgb: np.ndarray) -> float:
    return 8 * len(payload) / (rgb.shape[0] * rgb.shape[1])


def test_target_codecs_are_registered():
    have = {n for n in codec_names("image") if get_codec(n).rate_knob is not None}
    assert {"jpeg", "webp", "avif", "jxl", "bmshj2018-factorized", "cheng2020-attn"} <= have
    assert get_codec("mp3").rate_knob is not None


@pytest.mark.parametrize("name", TARGET_CODECS)
def test_target_spec_rejects_the_knob_too(name):
    knob = get_codec(name).rate_knob
    with pytest.raises(ConfigError, match="not both"):
        parse_spec(f"{name}:bpp=0.5,{knob.param}={knob.hi}")
    spec = parse_spec(f"{name}:bpp=0.5")
    assert spec[knob.param] is None and spec["bpp"] == 0.5 and "bpp0p5" in spec.tag
    assert parse_spec(spec.canonical) == spec


@pytest.mark.parametrize("name", TARGET_CODECS)
def test_highest_quality_at_or_under_the_target(name):
    knob = get_codec(name).rate_knob
    for photo in PHOTOS:
        rgb = fx.photo(*photo)
        # a target between two settings: the rate at the middle of the knob's range, plus a little
        mid = (knob.lo + knob.hi) // 2
        target = round(_bpp(_fixed(parse_spec(f"{name}:bpp=1"), mid).encode(rgb).payload, rgb) * 1.05, 4)
        spec = parse_spec(f"{name}:bpp={target}")
        members, m = image_modality.encode(make_codec(spec), rgb, {})
        payload = members[0][1]
        q = m["chosen_quality"]
        assert m["target_bpp"] == target and knob.lo <= q <= knob.hi
        assert _bpp(payload, rgb) == m["bpp"] <= target
        assert m["bits"] == 8 * len(payload)
        # the stored bytes are the fixed setting's bytes, and one step more quality is over the target
        again = _fixed(spec, q).encode(rgb).payload
        assert again == payload
        if q < knob.hi:
            assert _bpp(_fixed(spec, q + 1).encode(rgb).payload, rgb) > target
        # the decoded pixels the metrics used are the payload's
        assert m["mse"] == pytest.approx(float(np.mean((rgb.astype(float) - make_codec(spec).decode(payload)) ** 2)))


@pytest.mark.parametrize("name", TARGET_CODECS)
def test_unreachable_target_is_an_error(name):
    knob = get_codec(name).rate_knob
    rgb = fx.photo("astronaut", 48, 64)
    lowest = _bpp(_fixed(parse_spec(f"{name}:bpp=1"), knob.order()[0]).encode(rgb).payload, rgb)
    with pytest.raises(SampleError, match=r"unreachable \(lowest quality"):
        image_modality.encode(make_codec(parse_spec(f"{name}:bpp={lowest * 0.9:.4f}")), rgb, {})
    # exactly the lowest rate is reachable: "at or under"
    members, m = image_modality.encode(make_codec(parse_spec(f"{name}:bpp={lowest!r}")), rgb, {})
    assert m["bpp"] <= lowest and m["chosen_quality"] in knob.order()


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def sizes(tmp_path_factory) -> fx.Built:
    """A large and a tiny photo: at 0.6 bpp JPEG reaches the first, never the second (headers alone exceed it)."""
    root = tmp_path_factory.mktemp("sizes")
    built = fx.Built(root, {})
    for rel, arr in (("big.png", fx.photo("astronaut", 192, 256)), ("tiny.png", fx.photo("coffee", 24, 24))):
        Image.fromarray(arr).save(root / rel)
        built.samples[rel] = fx.Expected(rel, (root / rel).read_bytes(), None, None, {})
    return built


def _tar_members(folder: Path) -> dict[str, bytes]:
    out = {}
    for tar in sorted(folder.rglob("*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                out[member.name] = tf.extractfile(member).read()
    return out


def test_run_never_stores_over_budget(sizes, tmp_path):
    result = fx.transcode("imagefolder", sizes, tmp_path, codecs=("jpeg:bpp=0.6",))
    rows = pq.read_table(next(tmp_path.rglob("manifest.parquet"))).to_pylist()
    members = _tar_members(tmp_path)
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] == "error"]
    assert len(ok) == 1 and len(bad) == 1, rows
    assert "target 0.6 bpp unreachable" in bad[0]["error"]
    assert not any(name.startswith(bad[0]["key"] + ".") for name in members)
    for r in ok:
        payload = members[f"{r['key']}.jpg"]
        record = json.loads(members[f"{r['key']}.json"])
        pixels = np.asarray(Image.open(io.BytesIO(payload)))
        bpp = 8 * len(payload) / (pixels.shape[0] * pixels.shape[1])
        assert bpp == r["bpp"] == record["bpp"] <= 0.6
        assert r["target_bpp"] == record["target_bpp"] == 0.6
        assert r["chosen_quality"] == record["chosen_quality"]
        rgb = np.asarray(Image.open(sizes.root / r["source"]).convert("RGB"))
        spec = parse_spec("jpeg:bpp=0.6")
        assert _fixed(spec, r["chosen_quality"]).encode(rgb).payload == payload
        assert 8 * len(_fixed(spec, r["chosen_quality"] + 1).encode(rgb).payload) / rgb[..., 0].size > 0.6
    assert result.shards_written == 1


@pytest.mark.parametrize("sweep", ["jpeg:quality=5,25,50", "jpeg:bpp=0.8,1.5"])
def test_sweep_equals_separate_runs(sizes, tmp_path, sweep):
    specs = [s.canonical for s in parse_specs(sweep)]
    assert len(specs) > 1
    fx.transcode("imagefolder", sizes, tmp_path / "together", codecs=(sweep,))
    for spec in specs:
        fx.transcode("imagefolder", sizes, tmp_path / "apart", codecs=(spec,))
    together, apart = fx.tree_bytes(tmp_path / "together"), fx.tree_bytes(tmp_path / "apart")
    assert len(together) == len(specs) and together == apart


# --------------------------------------------------------------------------- audio: LAME VBR


def test_mp3_vbr_target_never_over(tmp_path):
    import audio_fixtures as af

    from pipeline.media.audio import Audio
    from pipeline.modalities import audio as audio_modality

    if get_codec("mp3").unavailable():
        pytest.skip(get_codec("mp3").unavailable())
    ints = af.music(2.0, seed=3)
    clip = audio_modality.PreparedAudio(Audio(af.as_float(ints), af.MUSIC_RATE))
    with pytest.raises(ConfigError, match="not both"):
        parse_spec("mp3:vbr=2,vbr_kbps=64")
    ref = audio_modality.encode(make_codec(parse_spec("mp3:vbr=5")), clip, {})[1]["kbps"]
    target = round(ref * 1.02, 3)
    spec = parse_spec(f"mp3:vbr_kbps={target}")
    members, m = audio_modality.encode(make_codec(spec), clip, {})
    v = m["chosen_quality"]
    assert m["target_kbps"] == target and m["kbps"] <= target and 0 <= v <= 9
    fixed = audio_modality.encode(make_codec(knob_spec(spec, v)), clip, {})
    assert fixed[0][0][1] == members[0][1] and fixed[1]["bits"] == m["bits"]
    if v > 0:  # one step better quality (LAME: a smaller vbr) is over the target
        assert audio_modality.encode(make_codec(knob_spec(spec, v - 1)), clip, {})[1]["kbps"] > target
    with pytest.raises(SampleError, match="unreachable"):
        audio_modality.encode(make_codec(parse_spec("mp3:vbr_kbps=1")), clip, {})


# --------------------------------------------------------------------------- CompressAI zoo (random weights)


def test_compressai_target_with_random_checkpoints(tmp_path, monkeypatch):
    """Every zoo quality of the factorized model as a seeded random checkpoint (no real weights here).

    Random weights need not give rates that grow with quality, so the test checks what the search
    promises for any encoder: the stored stream is under the target, it is the fixed quality's
    stream, the next quality up is over the target, and the target codec decodes its own streams.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressai")
    import hashlib

    from compressai.zoo.image import cfgs, model_architectures, model_urls

    arch = "bmshj2018-factorized"
    knob = get_codec(arch).rate_knob
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    for q in knob.order():
        torch.manual_seed(q)
        model = model_architectures[arch](*cfgs[arch][q])
        model.update(force=True)
        tmp = hub / "tmp"
        torch.save(model.state_dict(), tmp)
        name = f"{arch}-test-{q}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth.tar"
        tmp.rename(hub / name)
        monkeypatch.setitem(model_urls[arch]["mse"], q, "https://models.invalid/v1/" + name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MPQ_OFFLINE", "1")
    monkeypatch.delenv("MPQ_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("MPQ_DEVICE", "cpu")

    rgb = fx.photo("astronaut", 64, 96)
    probe = parse_spec(f"{arch}:bpp=1")
    rates = {q: _bpp(_fixed(probe, q).encode(rgb).payload, rgb) for q in knob.order()}
    spec = parse_spec(f"{arch}:bpp={rates[knob.lo]!r}")
    get_codec(arch).preflight(spec)  # every quality's checkpoint is there
    codec = make_codec(spec)
    members, m = image_modality.encode(codec, rgb, {})
    q, payload = m["chosen_quality"], members[0][1]
    assert m["bpp"] == _bpp(payload, rgb) == rates[q] <= spec["bpp"]
    assert payload == _fixed(spec, q).encode(rgb).payload
    assert q == knob.hi or rates[q + 1] > spec["bpp"]
    assert np.array_equal(make_codec(spec).decode(payload), _fixed(spec, q).decode(payload))
    with pytest.raises(SampleError, match="unreachable"):
        image_modality.encode(make_codec(parse_spec(f"{arch}:bpp={rates[knob.lo] * 0.5!r}")), rgb, {})

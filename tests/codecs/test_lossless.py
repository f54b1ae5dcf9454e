"""Lossless containers (PNG, lossless WebP, lossless JPEG XL) for the reference ``none`` and a learned
codec's stored decoded output: the pixels are PNG's in every container, PNG stays the default with
its tag and bytes, and every reader (loader, webdataset decoders, ``mpq verify``, report) takes each."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import fixtures as fx
from pipeline import TranscodeConfig, transcode
from pipeline.codecs import lossless, make_codec
from pipeline.codecs.spec import parse_spec, unique_specs
from pipeline.errors import ConfigError
from pipeline.loaders import load, wds_decoder, wds_sample_decoder
from pipeline.loaders.decoders import DECODERS, stored_pixels
from pipeline.store.verify import verify_output

CONTAINERS = tuple(lossless.CONTAINERS)


def _images() -> dict[str, np.ndarray]:
    """Photographs of odd sizes, and a grayscale one converted to RGB as the project converts sources."""
    from PIL import Image

    gray = Image.fromarray(fx.photo("camera", 61, 83)).convert("L").convert("RGB")
    return {"astronaut": fx.photo("astronaut", 75, 100), "chelsea": fx.photo("chelsea", 37, 129),
            "gray": np.asarray(gray).copy(), "one": fx.photo("coffee", 1, 1)}


@pytest.mark.parametrize("container", CONTAINERS)
def test_every_container_gives_back_the_pixels(container):
    for name, rgb in _images().items():
        data = lossless.encode(rgb, container)
        assert np.array_equal(lossless.decode(data, container), rgb), name
        assert np.array_equal(stored_pixels(lossless.extension(container))(data), rgb), name  # loaders' decoder
        assert np.array_equal(DECODERS[lossless.extension(container)](data), rgb), name  # webdataset's member table
        assert lossless.encode(rgb, container) == data  # fixed options: same pixels, same bytes


def test_png_container_is_the_bytes_shards_always_stored():
    from PIL import Image

    rgb = _images()["astronaut"]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=6, optimize=False)
    assert lossless.encode(rgb, "png") == buf.getvalue()


def test_container_in_spec_and_tag():
    assert parse_spec("none") == parse_spec("none:container=png")  # the default is never spelled out
    assert parse_spec("none").canonical == "none" and parse_spec("none").tag == "none"
    webp = parse_spec("none:container=webp")
    assert (webp.canonical, webp.tag) == ("none:container=webp", "none-cwebp")
    learned = parse_spec("mbt2018-mean:quality=3,container=jxl")
    assert learned.canonical == "mbt2018-mean:quality=3,metric=mse,container=jxl"
    assert learned.tag == "mbt2018-mean-q3-cjxl"
    assert parse_spec("mbt2018-mean:quality=3").tag == "mbt2018-mean-q3"
    assert len(unique_specs(["none:container=png,webp,jxl"])) == 3
    with pytest.raises(ConfigError, match="not one of"):
        parse_spec("none:container=gif")
    with pytest.raises(ConfigError, match="unknown parameter 'container'"):
        parse_spec("jpeg:quality=5,container=webp")  # a lossy payload has no container


def test_codec_instance_keeps_the_container_apart_from_its_setting():
    codec = make_codec(parse_spec("none:container=webp"))
    assert codec.container == "webp" and codec.spec.canonical == "none"
    rgb = _images()["chelsea"]
    enc = codec.encode(rgb)
    assert enc.extension == "webp" and np.array_equal(codec.decode(enc.payload), rgb)


def _tars(folder: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted(folder.glob("*.tar")):
        for key, items in fx.group_members(fx.read_tar(tar)).items():
            out[key] = dict(items)
    return out


@pytest.fixture(scope="module")
def reference_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("containers")
    src = root / "src"
    src.mkdir()
    for key, rgb in _images().items():
        (src / f"{key}.png").write_bytes(fx.png_bytes(rgb))
    (src / "photo.jpg").write_bytes(fx.jpeg_bytes(fx.photo("rocket", 50, 66)))
    specs = ["none", *(f"none:container={c}" for c in CONTAINERS if c != "png")]
    config = TranscodeConfig.create("imagefolder", src, specs, out=root / "out", samples_per_shard=2)
    assert not transcode(config).failed
    return root / "out", specs


def test_reference_sets_in_every_container_load_the_same_pixels(reference_sets):
    out, specs = reference_sets
    base = {s["__key__"]: s for s in load(out, "imagefolder", "all", "none", image_format="numpy")}
    assert len(base) == 5
    for spec in specs[1:]:
        tag = parse_spec(spec).tag
        members = _tars(out / "imagefolder" / "all" / tag)
        ext = lossless.extension(lossless.container_of(parse_spec(spec)))
        samples = list(load(out, "imagefolder", "all", spec, image_format="numpy"))
        assert {s["__key__"] for s in samples} == set(base)
        for s in samples:
            ref = base[s["__key__"]]
            assert np.array_equal(s["image"], ref["image"]), (spec, s["__key__"])
            assert s["bits"] == 8 * len(members[s["__key__"]][ext])  # the container's bytes are the rate
            assert json.loads(members[s["__key__"]]["json"])["codec"] == parse_spec(spec).canonical
            assert set(members[s["__key__"]]) == {ext, "json"}


def test_verify_report_and_webdataset_take_every_container(reference_sets, tmp_path):
    out, specs = reference_sets
    assert verify_output(str(out)).clean
    index = json.loads((out / "imagefolder" / "all" / "none-cjxl" / "index.json").read_text())
    assert "libjxl" in index["versions"]  # the container's library is recorded
    from pipeline.report import write_report

    target = write_report(out, report_dir=tmp_path / "rep")
    text = "".join(p.read_text() for p in target.glob("*.md"))
    assert all(parse_spec(s).tag in text or parse_spec(s).canonical in text for s in specs)
    wds = pytest.importorskip("webdataset")
    base = {s["__key__"]: s["image"] for s in load(out, "imagefolder", "all", "none", image_format="numpy")}
    for spec in specs:
        tag = parse_spec(spec).tag
        urls = [str(p) for p in sorted((out / "imagefolder" / "all" / tag).glob("*.tar"))]
        ext = lossless.extension(lossless.container_of(parse_spec(spec)))
        for s in wds.WebDataset(urls, shardshuffle=False).decode(wds_decoder()):
            assert np.array_equal(s[ext], base[s["__key__"]])
        for s in wds.WebDataset(urls, shardshuffle=False).map(wds_sample_decoder()):
            assert np.array_equal(s[ext], base[s["__key__"]])


def test_audio_references_refuse_an_image_container(tmp_path):
    import soundfile as sf

    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "tone.wav", np.zeros(800, dtype=np.int16), 8000, subtype="PCM_16")
    config = TranscodeConfig.create("audiofolder", src, ["none:container=webp"], out=tmp_path / "out")
    with pytest.raises(ConfigError, match="FLAC"):
        transcode(config)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.tar"))


# ---------------------------------------------------------------------- a learned codec's decoded output



@pytest.fixture(scope="module")
def learned_sets(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressai")
    from compressai.zoo.image import cfgs, model_architectures, model_urls

    arch, quality = "bmshj2018-factorized", 1
    root = tmp_path_factory.mktemp("learned_containers")
    hub = root / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.manual_seed(0)
    model = model_architectures[arch](*cfgs[arch][quality])
    model.update(force=True)
    tmp = hub / "w.tmp"
    torch.save(model.state_dict(), tmp)
    name = f"{arch}-test-{quality}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth.tar"
    tmp.rename(hub / name)
    src = root / "src"
    src.mkdir()
    for key, (photo, h, w) in {"a": ("astronaut", 48, 64), "b": ("chelsea", 45, 70)}.items():
        (src / f"{key}.png").write_bytes(fx.png_bytes(fx.photo(photo, h, w)))
    specs = [f"{arch}:quality={quality}", *(f"{arch}:quality={quality},container={c}" for c in CONTAINERS[1:]),
             f"{arch}:bpp=8,container=webp"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch"))
        mp.setenv("MPQ_OFFLINE", "1")
        mp.delenv("MPQ_WEIGHTS_DIR", raising=False)
        mp.delenv("MPQ_DEVICE", raising=False)
        for q in range(1, 9):  # a target searches every quality: one random model serves them all
            mp.setitem(model_urls[arch]["mse"], q, "https://models.invalid/v1/" + name)
        config = TranscodeConfig.create("imagefolder", src, specs, out=root / "out")
        assert not transcode(config).failed
        yield root / "out", specs


def test_learned_output_in_every_container(learned_sets):
    out, specs = learned_sets
    folder = out / "imagefolder" / "all"
    base = _tars(folder / parse_spec(specs[0]).tag)
    for spec in specs:
        parsed = parse_spec(spec)
        ext = lossless.extension(lossless.container_of(parsed))
        members = _tars(folder / parsed.tag)
        samples = {s["__key__"]: s for s in load(out, "imagefolder", "all", spec, image_format="numpy")}
        decoded = {s["__key__"]: s for s in load(out, "imagefolder", "all", spec, image_format="numpy",
                                                 decode_payload=True)}
        for key, m in members.items():
            assert set(m) == {"bin", ext, "json"}
            if "bpp" not in spec:  # the coded stream is the same whatever holds its decoded pixels
                assert m["bin"] == base[key]["bin"]
                assert json.loads(m["json"])["bits"] == json.loads(base[key]["json"])["bits"]
            stored = fx.pil_raw(base[key]["png"]) if "bpp" not in spec else decoded[key]["image"]
            assert np.array_equal(samples[key]["image"], stored), spec
            assert np.array_equal(decoded[key]["image"], samples[key]["image"]), spec  # what the metrics saw
    assert verify_output(str(out)).clean


def test_target_rate_set_stores_its_container(learned_sets):
    out, specs = learned_sets
    tag = parse_spec(specs[-1]).tag
    assert tag.endswith("-cwebp")
    for tar in (out / "imagefolder" / "all" / tag).glob("*.tar"):
        with tarfile.open(tar) as t:
            assert {n.rsplit(".", 1)[-1] for n in t.getnames()} == {"bin", "webp", "json"}


def test_qoi_bytes_are_read_by_an_independent_decoder():
    """QOI is written by imagecodecs (the reference C coder): Pillow's own pure-Python QOI reader gives
    the same pixels, and a 4-channel QOI (not ours) loses its alpha as any other RGBA payload does."""
    from PIL import Image

    for name, rgb in _images().items():
        data = lossless.encode(rgb, "qoi")
        assert data[:4] == b"qoif" and data[12] == 3, name
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "QOI" and np.array_equal(np.asarray(img.convert("RGB")), rgb), name
    rgba = np.dstack([_images()["astronaut"], np.full((75, 100), 7, np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="QOI")
    assert np.array_equal(DECODERS["qoi"](buf.getvalue()), _images()["astronaut"])

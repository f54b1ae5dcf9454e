"""Our shards read with the real ``webdataset`` package: ``.decode(wds_decoder())`` gives every
member as our loaders give it (audio: the whole stream), ``.map(wds_sample_decoder())`` gives audio
cut exactly as our loaders do, and neither ever unpickles a member."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
wds = pytest.importorskip("webdataset")

import audio_fixtures as af  # noqa: E402
import fixtures as fx  # noqa: E402
from pipeline import TranscodeConfig, transcode  # noqa: E402
from pipeline.codecs import codec_names, get_codec  # noqa: E402
from pipeline.codecs.spec import parse_spec  # noqa: E402
from pipeline.loaders import load, wds_decoder, wds_sample_decoder  # noqa: E402
from pipeline.loaders.wds import opus_input_rate  # noqa: E402

IMAGE_SETTINGS = {"jpeg": "jpeg:quality=5", "webp": "webp:quality=10", "jpeg2000": "jpeg2000:ratio=40",
                  "avif": "avif:quality=30", "jxl": "jxl:distance=3", "hevc": "hevc:quality=30"}
AUDIO_SETTINGS = {"mp3": "mp3:kbps=32", "opus": "opus:kbps=24,vbr=off", "aac": "aac:kbps=32",
                  "vorbis": "vorbis:kbps=48"}
AUDIO_SPLIT = "dev-clean"


def urls(out: Path, dataset: str, split: str, spec: str) -> list[str]:
    folder = out / dataset / split / parse_spec(spec).tag
    return sorted(str(p) for p in folder.glob("*.tar"))


def read(urls_: list[str], stage) -> dict[str, dict]:
    pipe = wds.WebDataset(urls_, shardshuffle=False)
    pipe = pipe.decode(stage) if isinstance(stage, type(wds_decoder())) else pipe.map(stage)
    return {s["__key__"]: s for s in pipe}


def test_every_codec_has_a_setting_here():
    assert set(codec_names("image")) - {"none"} - {n for n in codec_names("image")
                                                   if get_codec(n).extension == "bin"} <= set(IMAGE_SETTINGS)
    assert set(codec_names("audio")) - {"none", "encodec"} <= set(AUDIO_SETTINGS)


@pytest.fixture(scope="module")
def images(tmp_path_factory, imagefolder_classes):
    out = tmp_path_factory.mktemp("wds-images")
    specs = ["none", *(s for n, s in IMAGE_SETTINGS.items() if get_codec(n).unavailable() is None)]
    assert not fx.transcode("imagefolder", imagefolder_classes, out, codecs=tuple(specs), samples_per_shard=3).failed
    return out, specs


def test_image_members_are_our_loaders_pixels(images):
    out, specs = images
    assert len(specs) >= 5
    for spec in specs:
        ours = {s["__key__"]: s for s in load(out, "imagefolder", "all", spec, image_format="numpy", meta=True)}
        ext = get_codec(parse_spec(spec).name).extension
        for stage in (wds_decoder(), wds_sample_decoder()):
            theirs = read(urls(out, "imagefolder", "all", spec), stage)
            assert sorted(theirs) == sorted(ours) and len(ours) >= 5, spec
            for key, s in ours.items():
                got = theirs[key]
                assert got[ext].dtype == np.uint8 and got[ext].shape == s["image"].shape, (spec, key)
                assert np.array_equal(got[ext], s["image"]), (spec, key)
                assert got["cls"] == s["label"] and isinstance(got["cls"], int)
                assert got["json"] == s["json"] and got["json"]["codec"] == parse_spec(spec).canonical


@pytest.fixture(scope="module")
def libri(tmp_path_factory):
    built = af.build_librispeech(tmp_path_factory.mktemp("wds-libri-src"))
    out = tmp_path_factory.mktemp("wds-libri-out")
    specs = ["none", *(s for n, s in AUDIO_SETTINGS.items() if get_codec(n).unavailable() is None)]
    config = TranscodeConfig.create("librispeech", built.root, specs, out=out, split=AUDIO_SPLIT,
                                    samples_per_shard=2)
    assert not transcode(config).failed
    return out, specs


def test_audio_whole_sample_map_equals_our_loader(libri):
    out, specs = libri
    assert len(specs) == 5
    for spec in specs:
        ext = "flac" if spec == "none" else get_codec(parse_spec(spec).name).extension
        ours = {s["__key__"]: s for s in load(out, "librispeech", AUDIO_SPLIT, spec, image_format="numpy")}
        theirs = read(urls(out, "librispeech", AUDIO_SPLIT, spec), wds_sample_decoder())
        assert sorted(theirs) == sorted(ours) and len(ours) >= 2
        for key, s in ours.items():
            got = theirs[key][ext]
            assert got.dtype == np.float32 and got.shape == s["audio"].shape, (spec, key)
            assert np.array_equal(got, s["audio"]), (spec, key)
            assert theirs[key]["txt"] == s["transcript"] if "txt" in theirs[key] else True


def test_audio_members_are_whole_streams_at_their_rate(libri):
    """The member handler has no record: it gives the decoded stream, which holds the loader's samples."""
    out, specs = libri
    for spec in specs:
        ext = "flac" if spec == "none" else get_codec(parse_spec(spec).name).extension
        ours = {s["__key__"]: s for s in load(out, "librispeech", AUDIO_SPLIT, spec, image_format="numpy", meta=True)}
        theirs = read(urls(out, "librispeech", AUDIO_SPLIT, spec), wds_decoder())
        for key, s in ours.items():
            got, rec = theirs[key][ext], s["json"]
            assert got.dtype == np.float32 and got.ndim == 2 and got.shape[0] == rec.get("codec_channels", 1)
            if spec == "none":
                assert np.array_equal(got, s["audio"])
            elif rec["codec_rate"] == rec["sample_rate"]:  # the same rate: the loader's samples are a cut
                assert got.shape[1] >= rec["codec_samples"], (spec, key)
                assert np.array_equal(got[:, :rec["codec_samples"]], s["audio"]), (spec, key)
            else:  # Opus: 48 kHz unless its header names another input rate
                raw = next(m for m in _tar_members(urls(out, "librispeech", AUDIO_SPLIT, spec))
                           if m[0] == f"{key}.{ext}")[1]
                rate = opus_input_rate(raw) or 48000
                assert abs(got.shape[1] - rec["codec_samples"] * rate / rec["codec_rate"]) <= 2, (spec, key)


def _tar_members(paths: list[str]) -> list[tuple[str, bytes]]:
    out = []
    for p in paths:
        with tarfile.open(p) as tf:
            out += [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]
    return out


class _Booby:
    """Unpickling this writes a file: the side effect that must never happen."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def test_never_unpickles(tmp_path):
    flag = tmp_path / "unpickled"
    evil = pickle.dumps(_Booby(str(flag)))
    shard = tmp_path / "evil-000000.tar"
    with tarfile.open(shard, "w") as tf:
        for name, data in {"k.jpg": fx.jpeg_bytes(fx.photo("chelsea", 32, 48)), "k.cls": b"2",
                           "k.json": b'{"codec": "none"}', "k.pyd": evil, "k.pickle": evil, "k.pkl": evil,
                           "k.pth": evil, "k.mystery": evil}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    # the control: webdataset's own default handlers do unpickle it
    list(wds.WebDataset([str(shard)], shardshuffle=False).decode(only=["pyd"]))
    assert flag.exists()
    flag.unlink()
    for stage in (wds_decoder(), wds_decoder(decode_payload=True)):
        (s,) = read([str(shard)], stage)
        sample = read([str(shard)], stage)[s]
        for ext in ("pyd", "pickle", "pkl", "pth", "mystery"):
            assert sample[ext] == evil
        assert sample["jpg"].shape == (32, 48, 3) and sample["cls"] == 2
    (s,) = read([str(shard)], wds_sample_decoder())
    assert read([str(shard)], wds_sample_decoder())[s]["pyd"] == evil
    assert not flag.exists()
    with pytest.raises(ValueError, match="runs code"):
        wds_decoder(extra={"pyd": pickle.loads})


def test_handler_pickles_for_dataloader_workers(images):
    out, _ = images
    pipe = wds.WebDataset(urls(out, "imagefolder", "all", "jpeg:quality=5"), shardshuffle=False)
    pipe = pipe.decode(pickle.loads(pickle.dumps(wds_decoder()))).map(pickle.loads(pickle.dumps(wds_sample_decoder())))
    assert all(isinstance(s["jpg"], np.ndarray) for s in pipe)


def test_learned_bin_through_its_png_or_its_codec(tmp_path, monkeypatch):
    """A bmshj2018-factorized with random weights written here: ``.png`` is the loader's pixels;
    ``.bin`` stays bytes, or with ``decode_payload=True`` decodes through the codec its header names."""
    pytest.importorskip("compressai")
    import hashlib

    from compressai.zoo.image import cfgs, model_architectures, model_urls

    arch, quality = "bmshj2018-factorized", 1
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.manual_seed(0)
    model = model_architectures[arch](*cfgs[arch][quality])
    model.update(force=True)
    torch.save(model.state_dict(), hub / "w.tmp")
    name = f"{arch}-test-{quality}-{hashlib.sha256((hub / 'w.tmp').read_bytes()).hexdigest()[:8]}.pth.tar"
    (hub / "w.tmp").rename(hub / name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("MPQ_OFFLINE", "1")
    monkeypatch.delenv("MPQ_WEIGHTS_DIR", raising=False)
    monkeypatch.setitem(model_urls[arch]["mse"], quality, "https://models.invalid/v1/" + name)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(fx.png_bytes(fx.photo("astronaut", 48, 64)))
    spec = f"{arch}:quality={quality}"
    assert not transcode(TranscodeConfig.create("imagefolder", src, [spec], out=tmp_path / "out")).failed
    shards = urls(tmp_path / "out", "imagefolder", "all", spec)
    ours = {s["__key__"]: s["image"] for s in load(tmp_path / "out", "imagefolder", "all", spec, image_format="numpy")}
    plain, decoded = read(shards, wds_decoder()), read(shards, wds_decoder(decode_payload=True))
    whole, whole_bin = read(shards, wds_sample_decoder()), read(shards, wds_sample_decoder(decode_payload=True))
    for key, pixels in ours.items():
        assert np.array_equal(plain[key]["png"], pixels) and isinstance(plain[key]["bin"], bytes)
        assert np.array_equal(decoded[key]["bin"], pixels)  # the same device decodes to the same pixels
        assert np.array_equal(whole[key]["png"], pixels) and np.array_equal(whole_bin[key]["bin"], pixels)


def test_encodec_ecdc_members(tmp_path, monkeypatch):
    """EnCodec with random weights written here: the member is the 24 kHz stream its header names,
    the whole-sample map the loader's samples at the source's 16 kHz."""
    pytest.importorskip("encodec")
    af.random_encodec_24khz(tmp_path, monkeypatch)
    built = af.build_librispeech(tmp_path / "src", seconds=0.5)
    spec = "encodec:kbps=6"
    config = TranscodeConfig.create("librispeech", built.root, [spec], out=tmp_path / "out", split=AUDIO_SPLIT,
                                    samples_per_shard=4, limit=3)
    assert not transcode(config).failed
    shards = urls(tmp_path / "out", "librispeech", AUDIO_SPLIT, spec)
    ours = {s["__key__"]: s for s in load(tmp_path / "out", "librispeech", AUDIO_SPLIT, spec, image_format="numpy",
                                          meta=True)}
    members, whole = read(shards, wds_decoder()), read(shards, wds_sample_decoder())
    assert len(ours) >= 2 and sorted(members) == sorted(ours)
    for key, s in ours.items():
        rec = s["json"]
        assert rec["codec_rate"] == 24000 and rec["sample_rate"] == 16000
        assert members[key]["ecdc"].shape[0] == 1 and members[key]["ecdc"].shape[1] >= rec["codec_samples"]
        assert np.array_equal(whole[key]["ecdc"], s["audio"])

"""Deep similarity metrics: LPIPS and DISTS plumbing on random backbones, CDPAM for real, transcode columns.

No network: ImageNet backbones are not available here, so LPIPS and DISTS run with the heads
shipped in their packages on a seeded random backbone; backbone loading is exercised with a small
random SqueezeNet file placed where torchvision's cache would hold it. CDPAM's trained weights
ship inside its wheel, so it runs for real.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import audio_fixtures as af
import fixtures as fx
from pipeline import TranscodeConfig, parse_spec
from pipeline.codecs import make_codec
from pipeline.codecs.runtime import CodecRuntime, use
from pipeline.errors import ConfigError, MissingWeightsError
from pipeline.metrics import deep
from pipeline.metrics.deep.audio import CDPAM_RATE, to_cdpam_input
from pipeline.metrics.deep.image import backbone_file
from pipeline.modalities.audio import decode_payload
from pipeline.run.driver import plan, transcode
from pipeline.run.task import ShardTask


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    codec = make_codec(parse_spec(f"jpeg:quality={quality}"))
    return codec.decode(codec.encode(rgb).payload)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return fx.photo("astronaut", 128, 128)


@pytest.fixture(scope="module")
def lpips_alex():
    torch.manual_seed(0)
    return deep.get_metric("lpips:alex").from_backbone(None)


def test_registry_names_and_columns():
    assert deep.metric_names() == ["cdpam", "dists", "dists-full", "lpips:alex", "lpips:squeeze", "lpips:vgg"]
    assert deep.columns("image") == ["dists", "dists_full", "lpips_alex", "lpips_squeeze", "lpips_vgg"]
    assert deep.columns("audio") == ["cdpam"]
    with pytest.raises(ValueError, match="registered twice"):
        deep.register(deep.get_metric("dists"))
    with pytest.raises(ConfigError, match="unknown deep metric"):
        deep.get_metric("lpips:resnet")


def test_lpips_identical_is_zero_and_jpeg_5_worse_than_90(lpips_alex, photo):
    q5, q90 = jpeg_round_trip(photo, 5), jpeg_round_trip(photo, 90)
    same, d5, d90 = lpips_alex.distances([photo, photo, photo], [photo, q5, q90])
    assert same == 0.0
    assert d5 > d90 > 0.0


def test_lpips_scales_pixels_to_minus_one_one_and_refuses_floats(lpips_alex, photo):
    """The published mistake: 0-255 values into LPIPS. Our input is uint8, mapped to [-1, 1]."""
    test = jpeg_round_trip(photo, 10)
    (ours,) = lpips_alex.distances([photo], [test])
    a = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    b = torch.from_numpy(test).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        right = float(lpips_alex.model(a / 127.5 - 1, b / 127.5 - 1))
        wrong = float(lpips_alex.model(a, b))  # 0-255 fed as is
    assert ours == pytest.approx(right, rel=1e-5)
    # 0-255 inputs give another number (off by 40 % on this backbone): our value is the [-1, 1] one
    assert abs(wrong - right) > 0.1 * right
    with pytest.raises(ValueError, match="uint8"):
        lpips_alex.distances([photo.astype(np.float32)], [test.astype(np.float32)])


def test_batches_by_size_give_the_one_at_a_time_values(lpips_alex, photo):
    small = fx.photo("chelsea", 64, 96)
    refs = [photo, small, photo, small]
    tests = [jpeg_round_trip(photo, 20), jpeg_round_trip(small, 20), jpeg_round_trip(photo, 60), small]
    batched = lpips_alex.distances(refs, tests)
    alone = [lpips_alex.distances([r], [t])[0] for r, t in zip(refs, tests)]
    assert batched == pytest.approx(alone, rel=1e-4, abs=1e-7)
    with pytest.raises(ValueError, match="differ in size"):
        lpips_alex.distances([photo], [small])


def test_images_too_small_for_the_network_give_nan(lpips_alex):
    tiny, edge = fx.photo("chelsea", 30, 40), fx.photo("chelsea", 31, 40)
    d_tiny, d_edge = lpips_alex.distances([tiny, edge], [tiny[::-1], edge[::-1]])
    assert np.isnan(d_tiny) and d_edge > 0


def test_dists_against_the_package_forward(photo):
    torch.manual_seed(1)
    metric = deep.get_metric("dists").from_backbone(None)
    q5, q90 = jpeg_round_trip(photo, 5), jpeg_round_trip(photo, 90)
    same, d5, d90 = metric.distances([photo] * 3, [photo, q5, q90])
    assert abs(same) < 1e-5 and d5 > d90 > 0
    x = torch.from_numpy(np.stack([photo, photo])).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(np.stack([q5, q90])).permute(0, 3, 1, 2).float() / 255
    assert [d5, d90] == pytest.approx(metric.model(x, y).tolist(), rel=1e-5)


def test_dists_prepares_images_as_its_authors(photo):
    """``dists``: shorter side to 256 when larger, as ``DISTS_pytorch.prepare_image(resize=True)``;
    ``dists-full`` scores full size. The independent reference is the package's own preparation."""
    from DISTS_pytorch.DISTS_pt import prepare_image
    from PIL import Image

    from pipeline.metrics.deep.image import dists_prepare, to_tensor

    big = fx.photo("astronaut", 330, 270)  # taller than wide, shorter side over 256
    assert min(big.shape[:2]) > 256 and big.shape[0] > big.shape[1]
    want = prepare_image(Image.fromarray(big), resize=True)[0]  # (3, H, W) in [0, 1]
    got = dists_prepare(big)
    assert got.shape[:2] == tuple(want.shape[1:]) and min(got.shape[:2]) == 256
    assert np.array_equal(got, (want.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    small = photo[:200, :250]
    assert dists_prepare(small) is small  # not larger than 256: untouched
    torch.manual_seed(1)
    resized = deep.get_metric("dists").from_backbone(None)
    full = deep.get_metric("dists-full").from_backbone(None)
    full.model.load_state_dict(resized.model.state_dict())
    q5 = jpeg_round_trip(big, 5)
    (d_resized,), (d_full,) = resized.distances([big], [q5]), full.distances([big], [q5])
    x, y = (to_tensor([want_image], "cpu", 0.0, 1.0) for want_image in (dists_prepare(big), dists_prepare(q5)))
    with torch.inference_mode():  # the same forward on the prepared pair: the same float operations
        assert d_resized == float(resized.forward(x, y).double())
    assert d_full != pytest.approx(d_resized, rel=1e-5)
    with pytest.raises(ValueError, match="differ in size"):  # no resize hides a size mismatch
        resized.distances([big], [big[:-2]])


def _random_squeezenet_file(folder: Path) -> tuple[Path, dict]:
    import torchvision.models as tvm

    torch.manual_seed(2)
    state = tvm.squeezenet1_1(weights=None).state_dict()
    path = folder / backbone_file("squeeze").filename
    torch.save(state, path)
    return path, state


def test_missing_backbone_names_file_and_folder(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        deep.get_metric("lpips:alex").load(weights_dir=tmp_path, offline=True)
    assert "alexnet-owt-7be5be79.pth" in str(err.value) and str(tmp_path) in str(err.value)
    # the torchvision name carries a SHA-256 prefix: a different file under that name is refused
    _random_squeezenet_file(tmp_path)
    with pytest.raises(ConfigError, match="SHA-256"):
        deep.get_metric("lpips:squeeze").load(weights_dir=tmp_path, offline=True)


def test_backbone_loaded_from_the_cache_folder(tmp_path, monkeypatch, photo):
    path, state = _random_squeezenet_file(tmp_path)
    monkeypatch.setattr("pipeline.codecs.weights.verify", lambda *a: None)  # a random file, not the real one
    metric = deep.get_metric("lpips:squeeze").load(weights_dir=tmp_path, offline=True)
    net = metric.model.net  # slices keep torchvision's layer index as the module name
    assert torch.equal(getattr(net.slice2, "3").squeeze.weight, state["features.3.squeeze.weight"])
    assert torch.equal(getattr(net.slice7, "12").expand3x3.bias, state["features.12.expand3x3.bias"])
    twin = deep.get_metric("lpips:squeeze").from_backbone(state)
    test = jpeg_round_trip(photo, 15)
    assert metric.distances([photo], [test]) == twin.distances([photo], [test])


def test_image_transcode_columns_equal_the_standalone_metric(tmp_path, monkeypatch, imagefolder_classes):
    weights = tmp_path / "weights"
    weights.mkdir()
    _, state = _random_squeezenet_file(weights)
    monkeypatch.setattr("pipeline.codecs.weights.verify", lambda *a: None)
    result = fx.transcode("imagefolder", imagefolder_classes, tmp_path / "out", codecs=("jpeg:quality=20",),
                          limit=3, lpips="squeeze", weights_dir=weights, offline=True)
    (s,) = result.sets
    assert s.ok == 3, s
    metric = deep.get_metric("lpips:squeeze").from_backbone(state)
    codec = make_codec(parse_spec("jpeg:quality=20"))
    from pipeline.media.image import decode_to_rgb

    checked = 0
    tars = sorted(Path(s.folder).glob("*.tar"))
    assert tars, sorted(p.name for p in Path(s.folder).iterdir())
    for tar in tars:
        members = fx.group_members(fx.read_tar(tar))
        for key, files in members.items():
            files = dict(files)
            record = json.loads(files["json"])
            source = decode_to_rgb(imagefolder_classes.samples[record["source"]].data)
            expected = metric.distances([source], [codec.decode(files["jpg"])])[0]
            assert record["lpips_squeeze"] == pytest.approx(expected, rel=1e-5)
            checked += 1
    assert checked >= 2
    import pyarrow.parquet as pq

    manifest = pq.read_table(Path(s.folder) / "manifest.parquet").to_pandas()
    ok = manifest[manifest["status"] == "ok"]
    assert ok["lpips_squeeze"].notna().all() and (ok["deep_s"] > 0).all()


def test_missing_backbone_stops_a_transcode_before_work(tmp_path, imagefolder_classes):
    config = TranscodeConfig.create("imagefolder", imagefolder_classes.root, ["jpeg:quality=20"],
                                    out=tmp_path / "out", lpips="vgg", weights_dir=tmp_path / "none", offline=True)
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        plan(config)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="--lpips must be one of"):
        TranscodeConfig.create("imagefolder", imagefolder_classes.root, ["jpeg:quality=20"], lpips="resnet")
    full = TranscodeConfig.create("imagefolder", imagefolder_classes.root, ["jpeg:quality=20"], dists="full")
    assert full.deep_metrics == ("dists-full",) and TranscodeConfig.from_dict(full.to_dict()) == full
    with pytest.raises(ConfigError, match="--dists must be one of"):
        TranscodeConfig.create("imagefolder", imagefolder_classes.root, ["jpeg:quality=20"], dists="half")
    with pytest.raises(ConfigError, match="audio metric"):
        plan(TranscodeConfig.create("imagefolder", imagefolder_classes.root, ["jpeg:quality=20"], cdpam=True))


def test_deep_metrics_ask_for_a_gpu_and_weights_folder_stays_out_of_the_plan(imagefolder_classes, monkeypatch):
    config = TranscodeConfig.create("imagefolder", imagefolder_classes.root, ["jpeg:quality=20"], dists=True)
    assert config.deep_metrics == ("dists",)
    assert TranscodeConfig.from_dict(config.to_dict()) == config
    source = plan(TranscodeConfig.create("imagefolder", imagefolder_classes.root, ["jpeg:quality=20"]))[0]
    spec = parse_spec("jpeg:quality=20")
    plain = ShardTask(source, "imagefolder", (), 0, (spec,), "o")
    a = ShardTask(source, "imagefolder", (), 0, (spec,), "o", {"deep": ["dists"]})
    b = ShardTask(source, "imagefolder", (), 0, (spec,), "o", {"deep": ["dists"]},
                  runtime=CodecRuntime(weights_dir="/w", offline=True))
    assert plain.resources is None and a.resources == {"GPU": 1}
    assert a.plan_hash(spec) == b.plan_hash(spec) != plain.plan_hash(spec)
    # the weights folder and offline travel in the task's runtime only, one way for every worker setting
    moved = TranscodeConfig.create("imagefolder", imagefolder_classes.root, ["jpeg:quality=20"], dists=True,
                                   weights_dir="/elsewhere", offline=True)
    monkeypatch.setattr("pipeline.run.driver.check_deep_metrics", lambda *a: None)  # no backbone here
    tasks = plan(moved)[1]
    assert tasks and all(t.options == {"deep": ["dists"]} and t.runtime.weights_dir == "/elsewhere" and t.runtime.offline
               for t in tasks)


def test_measure_finds_backbones_in_the_runs_weights_folder(tmp_path, photo, monkeypatch):
    """Transcode-time deep metrics read the run's settings (applied around each task), not the task's options."""
    monkeypatch.delenv("MPQ_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("MPQ_OFFLINE", raising=False)
    deep.base._cache.clear()
    empty = tmp_path / "empty"
    empty.mkdir()
    with use(CodecRuntime(weights_dir=str(empty), offline=True)):
        with pytest.raises(MissingWeightsError) as err:
            deep.measure({"deep": ["lpips:squeeze"]}, photo, photo)
    assert str(empty) in str(err.value)
    _random_squeezenet_file(tmp_path)
    monkeypatch.setattr("pipeline.codecs.weights.verify", lambda *a: None)  # a random file, not the real one
    with use(CodecRuntime(weights_dir=str(tmp_path), offline=True)):
        out = deep.measure({"deep": ["lpips:squeeze"]}, photo, photo)
    assert out == {"lpips_squeeze": pytest.approx(0.0, abs=1e-6)}
    deep.base._cache.clear()


# --------------------------------------------------------------------------- CDPAM, for real


@pytest.fixture(scope="module")
def cdpam():
    return deep.get_metric("cdpam").load()


def test_cdpam_input_is_22050_hz_mono_in_16_bit_units():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((CDPAM_RATE, 2)) * 0.1).astype(np.float32)
    expected = np.round(x.mean(axis=1).astype(np.float64) * 32768).astype(np.float32)
    assert np.array_equal(to_cdpam_input(x, CDPAM_RATE), expected)
    assert to_cdpam_input(x[:16000], 16000).shape == (CDPAM_RATE,)  # 1 s at 16 kHz -> 22,050 samples


def test_cdpam_zero_for_identical_and_mp3_16_worse_than_128(cdpam):
    ints = af.music(1.0, seed=3, rate=44100, channels=2)  # short: CDPAM costs seconds per second on a CPU
    source = af.as_float(ints)
    decoded = {}
    for kbps in (16, 128):
        codec = make_codec(parse_spec(f"mp3:kbps={kbps}"))
        rate, channels = codec.codec_format(44100, 2)
        assert rate == 44100  # so the decoded stream compares sample for sample after the cut
        enc = codec.encode(source, 44100)
        record = {"codec_rate": rate, "codec_channels": channels, "codec_samples": len(source),
                  "sample_rate": 44100, "channels": 2, "num_samples": len(source)}
        decoded[kbps] = decode_payload(codec, enc.payload, record)
    same, d16, d128 = cdpam.distances([source] * 3, [source, decoded[16], decoded[128]], rate=44100)
    assert same == 0.0
    assert d16 > d128 > 0.0


def test_audio_transcode_cdpam_column_equals_the_standalone_metric(tmp_path, cdpam):
    libri = af.build_librispeech(tmp_path / "libri")
    config = TranscodeConfig.create("librispeech", libri.root, ["mp3:kbps=24"], out=tmp_path / "out",
                                    split="dev-clean", limit=1, cdpam=True)
    (s,) = transcode(config).sets
    assert s.ok == 1, s
    (tar,) = sorted(Path(s.folder).glob("*.tar"))
    with tarfile.open(tar) as t:
        files = {m.name.partition(".")[2]: t.extractfile(m).read() for m in t.getmembers()}
    record = json.loads(files["json"])
    source = af.as_float(libri.samples[record["key"]])
    decoded = decode_payload(make_codec(parse_spec("mp3:kbps=24")), files["mp3"], record)
    expected = cdpam.distances([source], [decoded], rate=record["sample_rate"])[0]
    assert record["cdpam"] == pytest.approx(expected, rel=1e-5) and record["cdpam"] > 0


def test_cli_options_reach_the_config_and_stop_before_work(tmp_path, monkeypatch, imagefolder_classes):
    from click.testing import CliRunner

    from pipeline.cli import cli

    for name in ("MPQ_WEIGHTS_DIR", "MPQ_OFFLINE"):  # the CLI sets these for learned codecs: restored after
        monkeypatch.delenv(name, raising=False)

    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["transcode", "imagefolder", str(imagefolder_classes.root), "--codec", "jpeg:quality=50",
            "--out", str(tmp_path / "out"), "--workers", "0", "--weights-dir", str(empty), "--offline"]
    for extra, filename in ((["--lpips", "--dists"], "alexnet-owt-7be5be79.pth"),
                            (["--lpips", "squeeze"], "squeezenet1_1-b8a52dc0.pth"),
                            (["--dists"], "vgg16-397923af.pth")):
        res = CliRunner().invoke(cli, base + extra)
        assert res.exit_code == 2, res.output
        assert filename in res.output and str(empty) in res.output
    assert not (tmp_path / "out").exists()


def test_cdpam_equals_the_package_own_forward(cdpam):
    """Fed as the package's CDPAM.forward is fed (22,050 Hz mono in 16-bit units), the same distance."""
    package = pytest.importorskip("cdpam")  # pulls librosa and resampy: here only, as the reference
    # its constructor's torch.load fails on torch >= 2.6 (weights_only default): give its forward our network
    theirs = package.CDPAM.__new__(package.CDPAM)
    theirs.device, theirs.model = torch.device("cpu"), cdpam.model
    ref = af.as_float(af.speech(0.5, seed=5, rate=CDPAM_RATE))
    test = ref + np.float32(0.01) * np.random.default_rng(5).standard_normal(ref.shape).astype(np.float32)
    (ours,) = cdpam.distances([ref], [test], rate=CDPAM_RATE)
    with torch.no_grad():
        expected = float(theirs.forward(np.round(ref.T * 32768.0), np.round(test.T * 32768.0))[0])
    assert ours == pytest.approx(expected, rel=1e-5) and ours > 0

"""MS-ILLM's architecture with a researcher's own checkpoint (``msillm-own:checkpoint=PATH``).

The checkpoints are RANDOMLY INITIALISED HiFiC autoencoders (:mod:`pipeline.codecs.msillm_net`) written
here, much smaller than the published ones (three analysis widths instead of five, so a stride of 16,
one residual block, 8 latent channels), so the sizes must be read from the state dict's shapes and
the runs stay quick. What the two own-checkpoint codecs share (:mod:`pipeline.codecs.own`) is tested
further with ``compressai:`` in ``test_own_codec.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import checkpoints as ck
import fixtures as fx
import numpy as np
import pytest
from PIL import Image

from pipeline import TranscodeConfig, transcode
from pipeline.codecs import bitstream, get_codec, make_codec
from pipeline.codecs.spec import parse_spec
from pipeline.errors import ConfigError

torch = pytest.importorskip("torch")
pytest.importorskip("compressai")

SIZES = {"photo": ("astronaut", 64, 64), "odd": ("chelsea", 45, 70)}
#: smaller than published (220 / 320 channels, 9 blocks, widths 60..960), and the synthesis not the
#: analysis reversed, so every size is read from the shapes
SMALL = {"in_channels": 3, "latent_features": 8, "hyper_features": 6, "residual_blocks": 1,
         "encoder_widths": (8, 12, 16), "decoder_widths": (14, 10, 6)}


pytestmark = pytest.mark.usefixtures("offline_cpu")


def _save(path: Path, seed: int = 0, scale: float = 1.0, tables: bool = False, strip: bool = False,
          old_names: bool = False) -> Path:
    """A random small HiFiC model (see :func:`checkpoints.save_state`); ``old_names``: CompressAI 1.2.4's."""
    from pipeline.codecs.msillm_net import HiFiCAutoencoder

    torch.manual_seed(seed)
    model = HiFiCAutoencoder(**SMALL)
    return ck.save_state(model, path, scale_layer=model.encoder.blocks[-1], scale=scale, tables=tables,
                         strip=strip, rename=ck.published_names if old_names else None)


# --------------------------------------------------------------------------- architecture and specs


def test_sizes_are_read_from_the_state_dict(ckpts):
    from pipeline.codecs.msillm_net import HiFiCAutoencoder, sizes

    state = torch.load(ckpts["a"], weights_only=True)
    assert sizes(state) == SMALL
    model = HiFiCAutoencoder.from_state_dict(state)
    assert model.downsampling_factor == 16  # three analysis widths: two stride-2 convolutions, then the hyperprior's 4
    with torch.device("meta"):  # the published sizes read back from the published architecture
        published = sizes(HiFiCAutoencoder().state_dict())
    assert published == {"in_channels": 3, "latent_features": 220, "hyper_features": 320, "residual_blocks": 9,
                         "encoder_widths": (60, 120, 240, 480, 960), "decoder_widths": (960, 480, 240, 120, 60)}
    assert HiFiCAutoencoder.downsampling_factor == 64  # the published stride
    with pytest.raises(KeyError, match="hyper_analysis.0.weight missing"):
        sizes({k: v for k, v in state.items() if not k.startswith("hyper_analysis.0.")})


def test_spec_names_the_checkpoint_by_hash_and_no_licence_of_its_own(ckpts, capsys):
    from pipeline.cli import main

    spec = parse_spec(f"msillm-own:checkpoint={ckpts['a']}")
    sha = ck.sha256(ckpts["a"])
    assert spec.canonical == f"msillm-own:checkpoint={ckpts['a']},quality=1,sha256={sha}"
    assert spec.tag == f"msillm-own-q1-h{sha[:10]}"  # the path is never in the tag
    assert parse_spec(f"msillm-own:checkpoint={ckpts['b']}").tag != spec.tag
    assert parse_spec(spec.canonical) == spec
    several = parse_spec(f"msillm-own:checkpoint={ckpts['low'].parent},bpp=0.5")
    assert several["sha256"] == f"{ck.sha256(ckpts['low'])}|{ck.sha256(ckpts['high'])}"  # a folder: its files by name
    assert several.tag.startswith("msillm-own-bpp0p5-h")
    cls = get_codec("msillm-own")
    assert "MS-ILLM's architecture" in cls.summary and "CC-BY-NC" not in cls.summary + cls.library
    assert main(["codecs", "--modality", "image"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("msillm-own "))
    assert "CC-BY-NC" not in line  # the weights are the researcher's


def test_refusals_name_the_codec_and_the_file(ckpts, tmp_path, photos):
    ck.check_spec_refusals("msillm-own:", ckpts, tmp_path)
    with pytest.raises(ConfigError, match="msillm-own: give checkpoint=PATH"):
        parse_spec("msillm-own")
    # a CompressAI model's file: refused before any work, naming the file and the codec
    from compressai.zoo.image import model_architectures

    other = tmp_path / "mbt.pth"
    torch.save(model_architectures["mbt2018-mean"](8, 8).state_dict(), other)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=f"checkpoint {other} does not fit msillm-own"):
        transcode(TranscodeConfig.create("imagefolder", photos[0], [f"msillm-own:checkpoint={other}"], out=out))
    assert not out.exists()


def test_offline_hash_not_in_the_weights_folder_is_refused_before_any_work(ckpts, photos, tmp_path, capsys):
    from pipeline.cli import main

    empty = tmp_path / "weights"
    empty.mkdir()
    sha = ck.sha256(ckpts["a"])
    out = tmp_path / "out"
    code = main(["transcode", "imagefolder", str(photos[0]), "--codec", "jpeg:quality=50", "--codec",
                 f"msillm-own:sha256={sha}", "--out", str(out), "--weights-dir", str(empty), "--offline",
                 "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"no checkpoint with SHA-256 {sha}" in err and str(empty) in err
    assert not out.exists()  # nothing written, not even for the jpeg setting
    missing = tmp_path / "gone.pth"
    code = main(["transcode", "imagefolder", str(photos[0]), "--codec", f"msillm-own:checkpoint={missing}",
                 "--out", str(out), "--offline", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"checkpoint gone.pth does not exist in {tmp_path}" in err and not out.exists()


def test_missing_tables_are_rebuilt_and_code_as_the_stored_ones(tmp_path, photos):
    rgb = photos[1]["odd"]
    files = {"empty": _save(tmp_path / "empty.pth"),  # saved before update(): empty tables
             "stripped": _save(tmp_path / "stripped.pth", strip=True),  # no table keys at all
             "old": _save(tmp_path / "old.pth", strip=True, old_names=True),  # and CompressAI 1.2.4's names
             "given": _save(tmp_path / "given.pth", tables=True)}
    streams = {k: bitstream.unpack(make_codec(parse_spec(f"msillm-own:checkpoint={p}")).encode(rgb).payload)
               for k, p in files.items()}
    assert len({s.groups for s in streams.values()}) == 1  # update(force=True) rebuilt the same tables
    assert len({s.spec for s in streams.values()}) == 4  # four files, four hashes in the headers
    assert torch.load(files["given"], weights_only=True)["latent_bottleneck._quantized_cdf"].numel() > 0


# --------------------------------------------------------------------------- the pipeline run


def test_two_checkpoints_two_sets_exact_bits_and_decode(ckpts, photos, tmp_path, monkeypatch):

    specs = [f"msillm-own:checkpoint={ckpts['a']}", f"msillm-own:checkpoint={ckpts['b']}"]
    result = transcode(TranscodeConfig.create("imagefolder", photos[0], specs, out=tmp_path / "out"))
    assert not result.failed and len(result.sets) == 2
    assert len({s.folder for s in result.sets}) == 2
    for summary, name in zip(result.sets, ["a", "b"]):
        folder = Path(summary.folder)
        index = json.loads((folder / "index.json").read_text())
        assert index["spec"]["params"]["sha256"] == ck.sha256(ckpts[name])  # the index records the file's SHA-256
        assert folder.name.endswith(ck.sha256(ckpts[name])[:10])
        members = fx.set_members(folder)
        assert sorted(members) == sorted(SIZES)
        for key, d in members.items():
            stream = ck.check_stored_sample(d, photos[1][key])
            assert stream.spec == f"msillm-own:sha256={ck.sha256(ckpts[name])[:16]}"  # no path in the bits
            assert len(stream.groups) == 2  # latent, hyper-latent
    d = fx.set_members(Path(result.sets[0].folder))["odd"]
    ck.check_decode_finds_the_checkpoint(d, tmp_path, ckpts["a"].parent,
                                         f"msillm-own: no checkpoint with SHA-256 {ck.sha256(ckpts['a'])[:16]}",
                                         monkeypatch)


def test_bpp_with_several_checkpoints_picks_per_image_and_records_it(ckpts, photos, tmp_path):
    folder = ckpts["low"].parent
    low, high = (make_codec(parse_spec(f"msillm-own:checkpoint={folder},quality={q}")) for q in (1, 2))
    pixels = {k: v.shape[0] * v.shape[1] for k, v in photos[1].items()}
    rates = {k: [8 * len(c.encode(rgb).payload) / pixels[k] for c in (low, high)] for k, rgb in photos[1].items()}
    assert all(lo < hi for lo, hi in rates.values())  # the scaled analysis transform spends more bits
    # a target between the two images' high rates: the second checkpoint for one, the first for the other
    (cheap, _), (dear, _) = sorted(rates.items(), key=lambda kv: kv[1][1])
    target = (rates[cheap][1] + rates[dear][1]) / 2
    assert max(r[0] for r in rates.values()) <= target < rates[dear][1]
    expected = {cheap: 2, dear: 1}
    result = transcode(TranscodeConfig.create("imagefolder", photos[0], [f"msillm-own:checkpoint={folder},"
                                                                         f"bpp={target!r}"], out=tmp_path / "out"))
    assert not result.failed
    for key, d in fx.set_members(Path(result.sets[0].folder)).items():
        record = json.loads(d["json"])
        assert record["chosen_quality"] == expected[key] and record["bpp"] <= target
        chosen = (low, high)[expected[key] - 1]
        assert d["bin"] == chosen.encode(photos[1][key]).payload
        sha = ck.sha256((ckpts["low"], ckpts["high"])[expected[key] - 1])
        assert bitstream.unpack(d["bin"]).spec == f"msillm-own:sha256={sha[:16]}"
        assert np.array_equal(bitstream.decode_bytes(d["bin"], record=record), fx.rgb_pixels(d["png"]))


# --------------------------------------------------------------------------- batching


@pytest.mark.filterwarnings("ignore::pipeline.codecs.batching.BatchInexactWarning")
def test_batched_and_one_at_a_time_bitstreams_are_equal(ckpts, photos, tmp_path, monkeypatch):
    """Whether a batch runs the same kernels as one image depends on the CPU (oneDNN picks by shape): the
    check decides per size, and the bytes are those of one image at a time either way."""
    from pipeline.codecs import batching
    from pipeline.codecs.compressai_zoo import CompressAIModel

    monkeypatch.setattr(CompressAIModel, "cpu_batch", 2)  # batches on the CPU too (a GPU's default is 8)
    codec = make_codec(parse_spec(f"msillm-own:checkpoint={ckpts['a']}"))
    rgbs = [fx.photo("astronaut", 60, 60), fx.photo("chelsea", 64, 50), fx.photo("rocket", 30, 90)]
    assert codec.batch_key(rgbs[0]) == codec.batch_key(rgbs[1]) == (64, 64)  # the stride is 16 here
    encs = codec.encode_batch(rgbs[:2])
    alone = [codec.encode(r) for r in rgbs]
    assert [e.payload for e in encs] == [a.payload for a in alone[:2]]
    assert all(np.array_equal(x, codec.decode(a.payload))
               for x, a in zip(codec.decode_batch([e.payload for e in encs]), alone))
    model = codec._model()
    assert batching.batch_exact(("encode", batching.model_token(model), "cpu", (64, 64), 2)) is not None  # checked
    # the whole run, batched (windows of samples through encode_many) against one image at a time
    root = tmp_path / "same-size"
    root.mkdir()
    for i, rgb in enumerate(rgbs):
        Image.fromarray(rgb).save(root / f"{i}.png")
    spec = f"msillm-own:checkpoint={ckpts['a']}"
    shards = {}
    for batch in (1, 4):
        monkeypatch.setattr(CompressAIModel, "cpu_batch", batch)
        result = transcode(TranscodeConfig.create("imagefolder", root, [spec], out=tmp_path / f"out{batch}"))
        assert not result.failed and result.sets[0].ok == len(rgbs)
        shards[batch] = {p.name: p.read_bytes() for p in sorted(Path(result.sets[0].folder).glob("*.tar"))}
    assert shards[1] == shards[4] and shards[1]

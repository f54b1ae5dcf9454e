"""Codec spec strings: canonical forms, defaults, tags, sweeps, and one-line ConfigErrors on bad input."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import pipeline.codecs as registry
from pipeline.codecs import codec_names, get_codec
from pipeline.codecs.base import Encoded, ImageCodec
from pipeline.run.config import TranscodeConfig
from pipeline.errors import ConfigError
from pipeline.codecs.spec import CodecSpec, Param, format_value, parse_spec, parse_specs, unique_specs


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the codec registry for tests that register codecs; the real one is restored after."""
    registry.codec_names()  # load the real families first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry


@pytest.mark.parametrize("text, canonical, tag", [
    ("jpeg", "jpeg:quality=75,subsampling=420", "jpeg-q75"),
    ("jpeg:quality=5", "jpeg:quality=5,subsampling=420", "jpeg-q5"),
    (" JPEG : Subsampling = 444 , Quality = 90 ", "jpeg:quality=90,subsampling=444", "jpeg-q90-s444"),
    ("webp:method=6,quality=30", "webp:quality=30,method=6", "webp-q30-m6"),
    ("avif", "avif:quality=50,speed=6,subsampling=420", "avif-q50"),
    ("jxl:distance=1", "jxl:distance=1,effort=7", "jxl-d1"),
    ("jxl:distance=0.5,effort=3", "jxl:distance=0.5,effort=3", "jxl-d0p5-e3"),
    ("jxl:quality=90", "jxl:quality=90,effort=7", "jxl-q90"),
    ("jpeg2000:ratio=20.0", "jpeg2000:ratio=20", "jpeg2000-r20"),
    ("jpeg2000:psnr=32.5", "jpeg2000:psnr=32.5", "jpeg2000-db32p5"),
    ("hevc", "hevc:quality=50,subsampling=420", "hevc-q50"),
    ("none", "none", "none"),
])
def test_canonical_form_defaults_and_tag(text, canonical, tag):
    spec = parse_spec(text)
    assert spec.canonical == canonical == str(spec)
    assert spec.tag == tag
    assert parse_spec(canonical) == spec  # the canonical form parses back to the same setting
    assert CodecSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert hash(spec) == hash(parse_spec(canonical))


def test_defaults_are_filled_in_declared_order():
    spec = parse_spec("jpeg:subsampling=444")
    assert spec.params == (("quality", 75), ("subsampling", "444"), ("bpp", None))
    assert spec["quality"] == 75 and spec.get("missing", "x") == "x"
    with pytest.raises(KeyError):
        spec["missing"]
    assert spec.to_dict() == {"name": "jpeg", "params": {"quality": 75, "subsampling": "444"}}
    assert parse_spec("jxl:distance=2").to_dict() == {"name": "jxl", "params": {"distance": 2.0, "effort": 7}}


@pytest.mark.parametrize("text, message", [
    ("jpeg:quality=0", "below the minimum"),
    ("jpeg:quality=101", "above the maximum"),
    ("jpeg:quality=abc", "not a valid int"),
    ("jpeg:quality=7.5", "not a valid int"),
    ("jpeg:quality=5_0", "not a valid int"),
    ("jpeg:subsampling=411", "not one of 444, 422, 420"),
    ("jpeg:colour=1", "unknown parameter 'colour'"),
    ("jpeg:quality", "expected key=value"),
    ("jpeg:quality=5,quality=6", "given twice"),
    ("jpeg:=5", "given twice or empty"),
    ("", "empty codec spec"),
    ("   ", "empty codec spec"),
    ("jpg:quality=5", "unknown codec 'jpg'"),
    ("jxl", "give distance"),
    ("jxl:distance=1,quality=90", "not both"),
    ("jxl:distance=nan", "not a valid float"),
    ("jxl:distance=inf", "not a valid float"),
    ("jxl:distance=26", "above the maximum"),
    ("jpeg2000", "give ratio"),
    ("jpeg2000:ratio=0.5", "below the minimum"),
    ("none:quality=5", "unknown parameter"),
    ("jpeg:quality=5,10", "names 2 settings"),
])
def test_bad_specs_raise_one_line_config_errors(text, message):
    with pytest.raises(ConfigError) as err:
        parse_spec(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("params, message", [
    ({"quality": True}, "not a valid int"),
    ({"quality": 5.5}, "not a valid int"),
    ({"quality": [5]}, "not a valid int"),
    ({"quality": None, "subsampling": 420}, None),  # None means the default; 420 is read as "420"
    ({"subsampling": "4:2:0"}, "not one of"),
])
def test_from_dict_checks_types(params, message):
    data = {"name": "jpeg", "params": params}
    if message is None:
        assert CodecSpec.from_dict(data) == parse_spec("jpeg:subsampling=420")
        return
    with pytest.raises(ConfigError, match=message):
        CodecSpec.from_dict(data)


def test_from_dict_without_name_or_unknown_codec():
    with pytest.raises(ConfigError, match="no 'name'"):
        CodecSpec.from_dict({"params": {}})
    with pytest.raises(ConfigError, match="unknown codec"):
        CodecSpec.from_dict({"name": "no-such-codec"})


def test_hand_built_specs_are_validated():
    """A CodecSpec built by hand gets the same checks and defaults as a parsed one."""
    assert parse_spec(CodecSpec("jpeg", (("quality", 5),))) == parse_spec("jpeg:quality=5")
    with pytest.raises(ConfigError, match="above the maximum"):
        parse_spec(CodecSpec("jpeg", (("quality", 500),)))
    with pytest.raises(ConfigError, match="above the maximum"):
        TranscodeConfig.create("imagefolder", ".", [CodecSpec("jpeg", (("quality", 500),))])


def test_sweeps_expand_in_order_and_deduplicate():
    assert [s.canonical for s in parse_specs("jpeg:quality=5,10,25")] == [
        f"jpeg:quality={q},subsampling=420" for q in (5, 10, 25)]
    combos = parse_specs("jpeg:quality=5,10,subsampling=444,420")
    assert [s.tag for s in combos] == ["jpeg-q5-s444", "jpeg-q5", "jpeg-q10-s444", "jpeg-q10"]
    assert len(parse_specs("jpeg:quality=5,5,05")) == 1
    assert len(parse_specs("jxl:distance=1,2,effort=3")) == 2
    with pytest.raises(ConfigError, match="below the minimum"):
        parse_specs("jpeg:quality=5,0")


def test_unique_specs_and_config():
    specs = unique_specs(["jpeg:quality=5,10", "jpeg:quality=10", parse_spec("webp")])
    assert [s.tag for s in specs] == ["jpeg-q5", "jpeg-q10", "webp-q75"]
    with pytest.raises(ConfigError, match="no codec"):
        unique_specs([])
    cfg = TranscodeConfig.create("imagefolder", "/data", "jpeg:quality=5,10")
    assert [c.canonical for c in cfg.codecs] == ["jpeg:quality=5,subsampling=420", "jpeg:quality=10,subsampling=420"]
    assert TranscodeConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad, message in (({"samples_per_shard": 0}, "samples-per-shard"), ({"limit": 0}, "limit")):
        with pytest.raises(ConfigError, match=message):
            TranscodeConfig.create("imagefolder", "/data", "jpeg", **bad)


def test_every_registered_codec_has_a_safe_tag_across_a_sweep():
    for name in codec_names():
        for param in get_codec(name).params:
            for value in (param.default, param.minimum, param.maximum, *(param.choices or ())):
                if value is None:
                    continue
                try:
                    spec = CodecSpec.from_dict({"name": name, "params": {param.name: value}})
                except ConfigError:
                    continue  # needs another parameter (jxl, jpeg2000)
                assert re.fullmatch(r"[a-z0-9][A-Za-z0-9_-]*", spec.tag), spec.tag
                assert parse_spec(spec.canonical) == spec


def test_two_settings_sharing_a_tag_are_refused(scratch_registry):
    @scratch_registry.register
    class Tagged(ImageCodec):
        name = "mpq-test-tagged"
        extension = "bin"
        params = (Param("mode", str, "a", "a free-text parameter", short="m"),)

        def encode(self, rgb: np.ndarray) -> Encoded:
            return Encoded(rgb.tobytes(), self.extension)

        def decode(self, payload: bytes) -> np.ndarray:
            raise NotImplementedError

    assert parse_spec("mpq-test-tagged:mode=x y").tag == "mpq-test-tagged-mx_y"
    with pytest.raises(ConfigError, match="share the tag"):
        unique_specs(["mpq-test-tagged:mode=x y", "mpq-test-tagged:mode=x_y"])


@pytest.mark.parametrize("ptype, raw, value", [
    (bool, "yes", True), (bool, "OFF", False), (bool, True, True), (int, "007", 7), (int, 8.0, 8),
    (float, "2.50", 2.5), (float, 3, 3.0), (str, "444", "444"),
])
def test_param_coerce_and_format(ptype, raw, value):
    p = Param("x", ptype, None)
    got = p.coerce("c", raw)
    assert got == value and type(got) is ptype
    assert p.coerce("c", format_value(got)) == got  # format_value is the inverse


@pytest.mark.parametrize("ptype, raw", [(bool, "maybe"), (int, True), (float, False), (float, "1_0"), (int, "")])
def test_param_coerce_refuses_wrong_types(ptype, raw):
    with pytest.raises(ConfigError, match="not a valid"):
        Param("x", ptype, None).coerce("c", raw)

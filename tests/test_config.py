"""The run configuration: fields declared once (create, CLI), settings that travel with the run."""
from __future__ import annotations

import dataclasses

import click
import pytest

from pipeline import TranscodeConfig
from pipeline.cli import cli
from pipeline.codecs import weights
from pipeline.codecs.runtime import CodecRuntime, current, use
from pipeline.errors import ConfigError
from pipeline.run.config import cli_fields
from pipeline.run.driver import plan
from pipeline.sources import declared_options, get_source

RUNTIME_ENV = ("MPQ_WEIGHTS_DIR", "MPQ_OFFLINE", "MPQ_DEVICE", "MPQ_INFERENCE_THREADS")


@pytest.fixture
def clean_env(monkeypatch):
    for var in RUNTIME_ENV:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _transcode_options() -> dict[str, click.Option]:
    command = cli.commands["transcode"]
    return {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}


def test_round_trip_and_old_dicts(tmp_path, clean_env):
    config = TranscodeConfig.create("imagefolder", tmp_path, ["jpeg:quality=5,10"], limit=3, ms_ssim=True,
                                    weights_dir=tmp_path / "w", offline=True, device="cpu", inference_threads=2,
                                    source_options={"a": 1, "b": None}, shard_compression="none")
    data = config.to_dict()
    assert len(config.codecs) == 2 and data["codecs"] == [c.canonical for c in config.codecs]
    assert data["source_options"] == {"a": 1} and data["shard_compression"] is None
    assert data["weights_dir"] == str(tmp_path / "w") and data["offline"] is True
    assert TranscodeConfig.from_dict(data) == config
    old = {k: v for k, v in data.items() if k not in ("weights_dir", "offline", "device", "inference_threads")}
    loaded = TranscodeConfig.from_dict(old)  # written before these fields existed
    assert loaded.runtime == CodecRuntime() and loaded.codecs == config.codecs and loaded.limit == 3
    with pytest.raises(TypeError, match="nonsense"):
        TranscodeConfig.create("imagefolder", tmp_path, "jpeg", nonsense=1)


def test_environment_defaults_are_read_once_on_the_client(tmp_path, clean_env):
    clean_env.setenv("MPQ_WEIGHTS_DIR", str(tmp_path / "client"))
    clean_env.setenv("MPQ_OFFLINE", "yes")
    clean_env.setenv("MPQ_INFERENCE_THREADS", "3")
    config = TranscodeConfig.create("imagefolder", tmp_path, "jpeg")
    assert config.runtime == CodecRuntime(str(tmp_path / "client"), True, None, 3)
    explicit = TranscodeConfig.create("imagefolder", tmp_path, "jpeg", weights_dir=tmp_path / "flag", offline=False)
    assert explicit.weights_dir == str(tmp_path / "flag") and explicit.offline is False
    # later, "on the worker": another environment; the run's settings win inside use()
    clean_env.setenv("MPQ_WEIGHTS_DIR", str(tmp_path / "worker"))
    clean_env.delenv("MPQ_OFFLINE")
    assert weights.weights_dir_override() == tmp_path / "worker"  # outside a run: the environment
    with use(config.runtime):
        assert weights.weights_dir_override() == tmp_path / "client" and weights.offline()
        from pipeline.codecs import devices

        assert devices.inference_threads() == 3
    assert current() == CodecRuntime(str(tmp_path / "worker"), inference_threads=3)


def test_bad_settings_fail_when_the_config_is_made(tmp_path, clean_env):
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        TranscodeConfig.create("imagefolder", tmp_path, "jpeg", device="tpu")
    with pytest.raises(ConfigError, match="at least 1"):
        TranscodeConfig.create("imagefolder", tmp_path, "jpeg", inference_threads=0)
    clean_env.setenv("MPQ_OFFLINE", "maybe")
    with pytest.raises(ConfigError, match="MPQ_OFFLINE takes true or false"):
        TranscodeConfig.create("imagefolder", tmp_path, "jpeg")


def test_tasks_carry_the_run_settings(tmp_path, clean_env):
    src = tmp_path / "src"
    src.mkdir()
    import fixtures as fx

    (src / "a.png").write_bytes(fx.png_bytes(fx.photo("rocket", 16, 16)))
    config = TranscodeConfig.create("imagefolder", src, "jpeg", out=tmp_path / "out", weights_dir=tmp_path / "w",
                                    offline=True, device="cpu")
    _, tasks = plan(config)
    assert tasks and all(t.runtime == config.runtime for t in tasks)


def test_cli_options_come_from_the_declarations():
    options = _transcode_options()
    for name, opt in cli_fields():
        assert options[opt.name].name == name, opt.name
    for option, sources in declared_options():
        flag = "--" + option.name.replace("_", "-")
        assert options[flag].is_flag == option.flag
        assert all(option in get_source(s).options for s in sources)
        assert options[flag].help.startswith(", ".join(sources) + ": ")
    # what the README documents, with its defaults
    for flag in ("--codec", "--out", "--split", "--samples-per-shard", "--limit", "--ms-ssim", "--image-column",
                 "--label-column", "--hf-config", "--key-column", "--audio-column", "--encode-stems",
                 "--weights-dir", "--offline", "--no-store-bin", "--no-store-png", "--pesq", "--stoi",
                 "--store-decoded", "--shard-compression", "--max-pixels", "--workers", "--scheduler",
                 "--cluster", "--isolate", "--no-progress"):
        assert flag in options, flag
    assert options["--out"].default == "shards" and options["--samples-per-shard"].default == 1000
    assert options["--shard-compression"].default == "none" and options["--codec"].required
    fields = {f.name for f in dataclasses.fields(TranscodeConfig)}
    assert {name for name, _ in cli_fields()} <= fields


def test_cli_builds_the_same_config_as_the_api(tmp_path, clean_env, monkeypatch):
    """``mpq transcode`` options map onto create(): flags, negated flags, source options, paths."""
    import pipeline.run.driver as driver

    seen = {}

    def fake_plan(config):
        seen["config"] = config
        raise ConfigError("stop here")

    monkeypatch.setattr(driver, "plan", fake_plan)
    from pipeline.cli import main

    code = main(["transcode", "hf", str(tmp_path), "--codec", "jpeg:quality=5", "--codec", "webp", "--limit", "2",
                 "--no-store-png", "--image-column", "img", "--weights-dir", str(tmp_path / "w"), "--offline",
                 "--shard-compression", "gzip", "--max-pixels", "100"])
    assert code == 2
    expected = TranscodeConfig.create("hf", tmp_path, ["jpeg:quality=5", "webp"], limit=2,
                                      store_reconstruction=False, source_options={"image_column": "img"},
                                      weights_dir=tmp_path / "w", offline=True, shard_compression="gzip",
                                      max_pixels=100)
    assert seen["config"] == expected


def test_source_option_checks(tmp_path):
    from pipeline.sources import make_source

    with pytest.raises(ConfigError, match="musdb: option encode_stems takes true or false, not 'perhaps'"):
        make_source("musdb", str(tmp_path), "test", {"encode_stems": "perhaps"})
    assert make_source("musdb", str(tmp_path), "test", {"encode_stems": "on"}).encode_stems is True
    with pytest.raises(ConfigError, match="unknown option 'image_column'"):
        make_source("imagenet", str(tmp_path), "val", {"image_column": "x"})


@pytest.mark.parametrize("isolate", [False, True])
def test_workers_and_isolated_children_use_the_run_settings_not_their_environment(tmp_path, clean_env, isolate):
    """The checkpoint sits where this process's $MPQ_WEIGHTS_DIR points, not in the run's folder:
    encoding (here, or in an isolated child that inherits this environment) must still look only in
    the run's folder, offline, and say so in the error rows."""
    pytest.importorskip("compressai")
    import importlib

    import pyarrow.parquet as pq

    import fixtures as fx
    from pipeline.run.driver import transcode

    with importlib.import_module("weights_codecs").registered() as wc:
        src = tmp_path / "src"
        src.mkdir()
        for i in range(2):
            (src / f"s{i}.png").write_bytes(fx.png_bytes(fx.photo("rocket", 16 + 8 * i, 24)))
        run_dir, env_dir = tmp_path / "run-weights", tmp_path / "env-weights"
        config = TranscodeConfig.create("imagefolder", src, [f"{wc.NAME}:quality=1"], out=tmp_path / "out",
                                        weights_dir=run_dir, offline=True, device="cpu")
        wc.save_checkpoint(run_dir)
        planned = plan(config)  # the client's check passes
        (run_dir / wc.CHECKPOINT).rename(env_dir.mkdir() or env_dir / wc.CHECKPOINT)
        clean_env.setenv("MPQ_WEIGHTS_DIR", str(env_dir))  # what a worker's own environment might say
        result = transcode(config, planned=planned, isolate=isolate)
    (s,) = result.sets
    rows = pq.read_table(f"{s.folder}/manifest.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["error", "error"]
    for r in rows:
        assert str(run_dir / wc.CHECKPOINT) in r["error"] and "downloads are off" in r["error"], r["error"]

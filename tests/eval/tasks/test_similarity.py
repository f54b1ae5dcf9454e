"""similarity: per-sample deep distances to the set ``none`` equal the transcode-time columns.

No network: LPIPS runs on a seeded random SqueezeNet placed where torchvision's cache keeps the
real one (``$TORCH_HOME/hub/checkpoints``, its name's hash check turned off); CDPAM runs for real
(its weights ship in its wheel) on one short clip.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import audio_fixtures as af
import fixtures as fx
from eval_fixtures import rows_of
from pipeline.errors import ConfigError, MissingWeightsError
from pipeline.eval import EvalConfig, evaluate, model_kinds, plan_eval
from pipeline.eval.tasks import get_task
from pipeline.metrics import deep


def _manifest_column(folder: Path, column: str) -> dict[str, float]:
    import pyarrow.parquet as pq

    rows = pq.read_table(folder / "manifest.parquet").to_pylist()
    return {r["key"]: r[column] for r in rows if r["status"] == "ok"}


@pytest.fixture()
def squeeze_cache(tmp_path, monkeypatch) -> Path:
    """A random SqueezeNet 1.1 under torchvision's name in a private torch cache."""
    import torch
    import torchvision.models as tvm

    from pipeline.metrics.deep.image import backbone_file

    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(2)
    torch.save(tvm.squeezenet1_1(weights=None).state_dict(), folder / backbone_file("squeeze").filename)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("pipeline.codecs.weights.verify", lambda *a: None)  # a random file, not the real one
    return folder


@pytest.fixture()
def lpips_out(tmp_path, squeeze_cache, imagefolder_classes) -> tuple[Path, str, str]:
    """none and jpeg:quality=20 with the transcode-time --lpips=squeeze column; (out, dataset, split)."""
    out = tmp_path / "out"
    result = fx.transcode("imagefolder", imagefolder_classes, out, codecs=("none", "jpeg:quality=20"), limit=4,
                          lpips="squeeze", offline=True)
    assert not result.failed and all(s.ok >= 3 for s in result.sets), result.sets
    folder = Path(result.sets[0].folder)
    return out, folder.parts[-3], folder.parts[-2]


def test_registry_names_come_from_the_deep_metrics():
    kinds = {n.partition(":")[0] for n in deep.metric_names()}
    assert kinds <= set(model_kinds())
    sim = get_task("similarity")
    assert sim.reference == "none" and not sim.perception and not sim.higher_is_better
    for name in deep.metric_names():
        config = EvalConfig.create("OUT", "d", "s", "similarity", name)
        bound = sim.bind(config)
        metric = deep.get_metric(name)
        assert bound.columns()[0][0] == metric.column and bound.requires == (metric.modality,)
    with pytest.raises(ConfigError, match="unknown deep metric"):
        from pipeline.eval.models import get_model_kind

        get_model_kind("lpips").check(EvalConfig.create("OUT", "d", "s", "similarity", "lpips:resnet"))


def test_aggregate_is_numpy_on_the_rows():
    cls = get_task("similarity").bind(EvalConfig.create("OUT", "d", "s", "similarity", "dists"))
    values = [0.1, 0.4, 0.2, 0.9, 0.3]
    rows = [{"status": "ok", "dists": v} for v in values] + [{"status": "ok", "dists": float("nan")},
                                                             {"status": "error", "dists": None}]
    got = cls.aggregate(rows)
    assert got == {"mean": pytest.approx(np.mean(values)), "median": pytest.approx(0.3),
                   "p05": pytest.approx(np.percentile(values, 5)), "p95": pytest.approx(np.percentile(values, 95))}
    assert cls.aggregate([]) == {"mean": None, "median": None, "p05": None, "p95": None}


def test_lpips_rows_equal_the_transcode_column(lpips_out):
    out, dataset, split = lpips_out
    config = EvalConfig.create(str(out), dataset, split, "similarity", "lpips:squeeze", batch_size=2, offline=True)
    plan = plan_eval(config)
    assert [s.tag for s in plan.sets] == ["jpeg-q20"]  # none is the reference, not evaluated
    result = evaluate(config, planned=plan)
    assert not result.failed and result.shards_run == len(plan.tasks) > 1
    (doc,) = result.published
    folder = out / dataset / split / "jpeg-q20"
    rows = rows_of(folder / "eval" / "similarity-lpips_squeeze.parquet")
    expected = _manifest_column(folder, "lpips_squeeze")
    assert sorted(r["key"] for r in rows) == sorted(expected) and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert r["lpips_squeeze"] == pytest.approx(expected[r["key"]], rel=1e-5, abs=1e-7)
        assert r["lpips_squeeze"] > 0
    v = np.array([r["lpips_squeeze"] for r in rows])
    assert doc["figures"] == {"mean": pytest.approx(v.mean()), "median": pytest.approx(np.median(v)),
                              "p05": pytest.approx(np.percentile(v, 5)), "p95": pytest.approx(np.percentile(v, 95))}
    assert doc["samples"] == len(rows) and doc["errors"] == 0 and doc["model"]["library"] == "lpips"
    assert doc["model"]["weights"].endswith(deep.get_metric("lpips:squeeze").weights_files()[0].filename)
    assert "lpips_squeeze" in doc["definitions"]["mean"]
    assert not (out / dataset / split / "none" / "eval").exists()
    again = evaluate(config)  # a rerun does no work
    assert again.shards_run == 0 and not again.plan.tasks and not again.published


def test_plan_checks_and_gpu_resource(lpips_out, squeeze_cache, tmp_path):
    out, dataset, split = lpips_out
    plan = plan_eval(EvalConfig.create(str(out), dataset, split, "similarity", "lpips:squeeze", device="cuda"))
    assert plan.tasks and all(t.resources == {"GPU": 1} for t in plan.tasks)
    with pytest.raises(ConfigError, match="--weights does not apply"):
        plan_eval(EvalConfig.create(str(out), dataset, split, "similarity", "lpips:squeeze",
                                    weights=str(next(squeeze_cache.iterdir()))))
    with pytest.raises(ConfigError, match="audio"):  # cdpam does not fit an image set
        plan_eval(EvalConfig.create(str(out), dataset, split, "similarity", "cdpam"))
    with pytest.raises(MissingWeightsError) as err:  # the alexnet backbone is not in this cache
        plan_eval(EvalConfig.create(str(out), dataset, split, "similarity", "lpips:alex", offline=True))
    assert "alexnet-owt-7be5be79.pth" in str(err.value) and str(squeeze_cache) in str(err.value)
    shutil.rmtree(out / dataset / split / "none")
    with pytest.raises(ConfigError, match="no finished set none"):
        plan_eval(EvalConfig.create(str(out), dataset, split, "similarity", "lpips:squeeze"))
    assert not list(out.rglob("eval"))


def test_cli_stops_with_one_line_without_none(lpips_out):
    from click.testing import CliRunner

    from pipeline.cli import cli

    out, dataset, split = lpips_out
    shutil.rmtree(out / dataset / split / "none")
    res = CliRunner().invoke(cli, ["eval", str(out), "--dataset", dataset, "--split", split, "--task", "similarity",
                                   "--model", "lpips:squeeze", "--workers", "0", "--offline"])
    assert res.exit_code == 2, res.output
    assert "no finished set none" in res.output and not list(out.rglob("eval"))


def test_cdpam_rows_equal_the_transcode_column(tmp_path):
    libri = af.build_librispeech(tmp_path / "libri")
    out = tmp_path / "out"
    from pipeline import TranscodeConfig
    from pipeline.run.driver import transcode

    result = transcode(TranscodeConfig.create("librispeech", libri.root, ["none", "mp3:kbps=24"], out=out,
                                              split="dev-clean", limit=1, cdpam=True))
    assert not result.failed and all(s.ok == 1 for s in result.sets), result.sets
    from click.testing import CliRunner

    from pipeline.cli import cli

    res = CliRunner().invoke(cli, ["eval", str(out), "--dataset", "librispeech", "--split", "dev-clean",
                                   "--task", "similarity", "--model", "cdpam", "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    folder = out / "librispeech" / "dev-clean" / "mp3-k24"
    (row,) = rows_of(folder / "eval" / "similarity-cdpam.parquet")
    expected = _manifest_column(folder, "cdpam")
    assert row["status"] == "ok" and row["cdpam"] == pytest.approx(expected[row["key"]], rel=1e-5)
    assert row["cdpam"] > 0


def _break_payload(folder: Path, key: str) -> None:
    """Overwrite the first 8 bytes of a sample's payload in its tar (its signature): it no longer decodes."""
    import tarfile

    for shard in folder.glob("*.tar"):
        with tarfile.open(shard) as tar:
            member = next((m for m in tar if m.name.split(".")[0] == key and m.name.endswith((".png", ".jpg"))), None)
        if member is not None:
            with open(shard, "r+b") as fh:
                fh.seek(member.offset_data)
                fh.write(b"\0" * 8)
            return
    raise AssertionError(f"{key} not in {folder}")


def _paired_rows(config: EvalConfig, codec: str, shard: str, keys: tuple[str, ...] | None) -> list[dict]:
    """One set's rows of one shard as a unit of that set alone reads them: the loader's paired join of none and
    the set (the reference decoded once per set)."""
    from pipeline.eval.models import loaded
    from pipeline.eval.unit import evaluate_samples, rows_table
    from pipeline.loaders import load

    task_cls = get_task("similarity").bind(config)
    errors: list = []
    ds = load(config.out, config.dataset, config.split, ["none", codec], paired=True, shards=[shard],
              image_format="numpy", on_error=lambda k, e: errors.append((k, e)))
    rows = evaluate_samples(task_cls(), loaded(config), ds, config.batch_size, errors, keys)
    return rows_table(task_cls, rows).to_pylist()


def _no_address(rows: list[dict]) -> list[dict]:
    """Rows with object addresses (``<_io.BytesIO object at 0x...>`` in an error) blanked: they differ per run."""
    import re

    return [{**r, "error": re.sub(r" at 0x[0-9a-f]+", "", r["error"]) if r["error"] else None} for r in rows]


@pytest.mark.parametrize("limit", [None, 4])
def test_the_reference_is_decoded_once_for_every_set(squeeze_cache, imagefolder_classes, tmp_path, monkeypatch,
                                                     limit):
    """Three lossy sets (one lacking two keys its bpp target cannot reach), a sample that does not decode in
    none and one in a lossy set: each none shard is read once for all sets, and every part holds the rows a
    unit of that set alone writes (the loader's paired join), to the bit."""
    import pipeline.loaders

    out = tmp_path / "out"
    fx.transcode("imagefolder", imagefolder_classes, out, codecs=("none", "jpeg:quality=20", "jpeg:quality=50",
                                                                  "jpeg:bpp=0.75"), samples_per_shard=3)
    base = out / "imagefolder" / "all"
    _break_payload(base / "none", "things_coins")  # an error row in every set that holds it
    _break_payload(base / "jpeg-q50", "cats_chelsea")  # an error row in that set only
    reads: list[tuple[str, tuple[str, ...]]] = []
    real_load = pipeline.loaders.load

    def counting_load(root, dataset, split, codec=None, *args, **kwargs):
        reads.append((str(codec), tuple(kwargs.get("shards") or ())))
        return real_load(root, dataset, split, codec, *args, **kwargs)

    monkeypatch.setattr(pipeline.loaders, "load", counting_load)
    config = EvalConfig.create(str(out), "imagefolder", "all", "similarity", "lpips:squeeze", batch_size=2,
                               offline=True, limit=limit)
    plan = plan_eval(config)
    assert len(plan.units) == (2 if limit else 3) and all(len(u.members) == 3 for u in plan.units)  # shard j, 3 sets
    assert pickle.loads(pickle.dumps(plan.units[0])) == plan.units[0]  # it travels to Dask workers
    result = evaluate(config, planned=plan)
    assert not result.failed and len(result.published) == 3
    none_reads = [shards for codec, shards in reads if codec == "none"]
    assert len(none_reads) == len(set(none_reads)) == len({t.shard[-10:] for t in plan.tasks})  # shard indices
    assert not any(codec.startswith("[") for codec, _ in reads)  # no paired load: one decode of none per shard
    monkeypatch.setattr(pipeline.loaders, "load", real_load)
    statuses = set()
    for t in plan.tasks:
        got = _no_address(rows_of(Path(t.part)))
        assert got == _no_address(_paired_rows(config, t.codec, t.shard, t.keys)), (t.codec, t.shard)
        statuses |= {(r["key"], r["status"]) for r in got}
    assert ("things_coins", "error") in statuses and ("cats_chelsea", "error") in statuses
    bpp = next(d for d in result.published if d["tag"] == "jpeg-bpp0p75")
    assert bpp["coverage"]["failed_transcode"] == (1 if limit else 2)


def test_a_set_from_another_listing_is_refused_before_work(lpips_out, imagefolder_classes):
    """Shard j of every set must hold the keys of none's shard j: a set cut into other shards stops the plan."""
    out, dataset, split = lpips_out
    fx.transcode("imagefolder", imagefolder_classes, out, codecs=("jpeg:quality=50",), limit=4, samples_per_shard=3)
    with pytest.raises(ConfigError, match="jpeg-q50 and the reference set none were written from different "
                                          r"listings \(samples_per_shard differs\)"):
        plan_eval(EvalConfig.create(str(out), dataset, split, "similarity", "lpips:squeeze", offline=True))

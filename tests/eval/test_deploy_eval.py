"""`mpq eval` on a real deployment (`dask scheduler` + 2 `dask worker` processes): the same rows as in-process."""
from __future__ import annotations

import pytest

from eval_fixtures import classify_loss_tolerance, fresh_copy, rows_of
from pipeline.eval import EvalConfig, evaluate, plan_eval
from pipeline.run.cluster import dask_executor
from test_deploy import DASK, Deployment  # noqa: F401 - the harness of tests/test_deploy.py

NAME = "classify-torchvision_resnet18"


@pytest.fixture
def deployment(tmp_path):
    made = []

    def make(workers):
        d = Deployment(tmp_path / f"deploy{len(made)}")
        d.folder.mkdir()
        made.append(d)
        return d.start(workers)

    yield make
    for d in made:
        d.stop()


@pytest.mark.skipif(DASK is None, reason="the dask command line is not installed")
def test_dask_workers_give_the_same_rows(imagenet_out, resnet_weights, tmp_path, deployment):
    inline, dist = tmp_path / "inline", tmp_path / "dist"
    for d in (inline, dist):
        fresh_copy(imagenet_out, d)
    make = lambda out: EvalConfig.create(str(out), "imagenet", "val", "classify",  # noqa: E731
                                         "torchvision:resnet18", weights=str(resnet_weights), batch_size=2)
    evaluate(make(inline))
    dep = deployment({"w1": [], "w2": []})
    with dask_executor(cluster=dep.config(), log=None) as executor:
        result = evaluate(make(dist), executor)
    assert not result.failed and result.shards_run == 4
    for tag in ("none", "jpeg-q10"):
        a = rows_of(inline / "imagenet" / "val" / tag / "eval" / f"{NAME}.parquet")
        b = rows_of(dist / "imagenet" / "val" / tag / "eval" / f"{NAME}.parquet")
        assert [(r["key"], r["pred"], r["top5"], r["status"]) for r in a] == \
            [(r["key"], r["pred"], r["top5"], r["status"]) for r in b]
        tol = classify_loss_tolerance(inline, resnet_weights, "none" if tag == "none" else "jpeg:quality=10")
        assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=tol)


def test_gpu_models_ask_for_the_gpu_resource(imagenet_out, resnet_weights, tmp_path):
    imagenet_out = fresh_copy(imagenet_out, tmp_path / "out")
    cuda = EvalConfig.create(str(imagenet_out), "imagenet", "val", "classify", "torchvision:resnet18",
                             weights=str(resnet_weights), device="cuda")
    cpu = EvalConfig.create(str(imagenet_out), "imagenet", "val", "classify", "torchvision:resnet18",
                            weights=str(resnet_weights), limit=1)
    assert {tuple((t.resources or {}).items()) for t in plan_eval(cuda).tasks} == {(("GPU", 1),)}
    assert {t.resources for t in plan_eval(cpu).tasks} == {None}

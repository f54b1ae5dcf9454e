"""Dask at the edge: a LocalCluster run gives the same bytes as an in-process run; cluster
configuration files (cluster/*.yaml) parse, render their SLURM job script and Kubernetes spec, fail
with one clear line when wrong; GPU routing; the --cluster option."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import TranscodeConfig
from pipeline.cli import main
from pipeline.run.cluster import (
    ClusterConfig,
    dask_executor,
    kubernetes_specs,
    load_cluster_config,
    parse_cluster_config,
    slurm_kwargs,
)
from pipeline.errors import ConfigError
from pipeline.run.driver import transcode


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tar"))}


def test_local_cluster_matches_in_process(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        arr = np.clip(rng.normal(128, 40, (40, 56, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(src / f"im{i}.png")
    specs = ["jpeg:quality=20", "webp:quality=30"]
    inline = transcode(TranscodeConfig.create("imagefolder", src, specs, out=tmp_path / "a", samples_per_shard=2))
    logs: list[str] = []
    with dask_executor(2, dashboard=":0", log=logs.append) as ex:
        dask = transcode(TranscodeConfig.create("imagefolder", src, specs, out=tmp_path / "b", samples_per_shard=2),
                         ex)
    assert "dashboard: http" in logs[0] and "2 workers" in logs[0]
    assert inline.shards_written == dask.shards_written == 6
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a and a == b


def test_existing_scheduler_address(tmp_path):
    """--scheduler: connect to a cluster someone else started (here a LocalCluster on loopback)."""
    from distributed import LocalCluster

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(src / f"x{i}.png")
    cfg = TranscodeConfig.create("imagefolder", src, ["jpeg:quality=30"], out=tmp_path / "o", samples_per_shard=1)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1") as cluster:
        logs: list[str] = []
        with dask_executor(scheduler=cluster.scheduler_address, log=logs.append) as ex:
            res = transcode(cfg, ex)
    assert cluster.scheduler_address in logs[0]
    assert res.shards_written == 3 and res.sets[0].ok == 3


# --------------------------------------------------------------------------- cluster configuration files

CLUSTER_DIR = Path(__file__).parents[1] / "cluster"
SHIPPED = sorted(CLUSTER_DIR.glob("*.yaml"))


def test_shipped_configurations_cover_every_kind():
    kinds = {load_cluster_config(p).kind for p in SHIPPED}
    assert kinds == {"local", "scheduler", "slurm", "kubernetes"}
    readme = (CLUSTER_DIR / "README.md").read_text()
    assert all(f"`{p.name}`" in readme for p in SHIPPED), "each configuration is described in cluster/README.md"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configuration_parses(path):
    cfg = load_cluster_config(path)
    assert cfg.path == str(path)
    if cfg.kind == "slurm":
        kw = slurm_kwargs(cfg)
        assert kw["processes"] >= 1 and "export OMP_NUM_THREADS=1" in kw["job_script_prologue"]
        assert "export MALLOC_ARENA_MAX=1" in kw["job_script_prologue"]
    if cfg.kind == "kubernetes":
        spec, _ = kubernetes_specs(cfg)
        assert spec["kind"] == "DaskCluster"


@pytest.mark.parametrize("data,message", [
    ("kind: cloud", "kind must be one of local, scheduler, slurm, kubernetes"),
    ("[1, 2]", "expected a mapping"),
    ("kind: local\nworker: 3", "unknown key 'worker'"),
    ("kind: local\nworkers: -1", "workers must be a whole number"),
    ("kind: local\nworkers: two", "workers must be a whole number"),
    ("kind: scheduler", "needs address"),
    ("kind: scheduler\naddress: head:8786", "must look like tcp://host:8786"),
    ("kind: scheduler\naddress: tcp://h:1\nworkers: 2", "'workers' does not apply to kind scheduler"),
    ("kind: slurm\nresources: {GPU: yes}", "resources must map names to positive numbers"),
    ("kind: slurm\nadapt: {minimum: 5, maximum: 2}", "adapt minimum is above its maximum"),
    ("kind: slurm\nadapt: {most: 2}", "adapt takes minimum and maximum"),
    ("kind: slurm\ngpu_workers: 2", "'gpu_workers' does not apply to kind slurm"),
    ("kind: kubernetes\nworkers: 2", "kubernetes needs options.image"),
    ("kind: local\n  bad: [", "not valid YAML"),
])
def test_bad_configuration_is_one_clear_error(tmp_path, data, message):
    path = tmp_path / "c.yaml"
    path.write_text(data)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")) as err:
        load_cluster_config(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_slurm_job_script_renders_without_slurm():
    """dask-jobqueue renders the batch script from our keyword arguments; nothing is submitted."""
    pytest.importorskip("dask_jobqueue")
    from dask_jobqueue import SLURMCluster

    cfg = load_cluster_config(CLUSTER_DIR / "slurm-gpu.yaml")
    kw = slurm_kwargs(cfg)
    kw["scheduler_options"] = {**kw["scheduler_options"], "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    with SLURMCluster(**kw) as cluster:
        script = cluster.job_script()
    assert "#SBATCH -p gpu" in script and "#SBATCH --gres=gpu:1" in script and "#SBATCH -t 04:00:00" in script
    assert "export OMP_NUM_THREADS=1" in script and "--resources GPU=1" in script
    assert "dask_worker tcp://127.0.0.1:" in script

    cpu = slurm_kwargs(load_cluster_config(CLUSTER_DIR / "slurm.yaml"))
    assert cpu["processes"] == cpu["cores"] == 16 and "--resources" not in cpu["worker_extra_args"]
    with pytest.raises(ConfigError, match="slurm needs options.cores"):
        slurm_kwargs(parse_cluster_config({"kind": "slurm", "options": {"memory": "4GB"}}))


def test_kubernetes_spec_and_gpu_worker_group():
    pytest.importorskip("dask_kubernetes")
    cfg = parse_cluster_config({"kind": "kubernetes", "workers": 3, "gpu_workers": 2,
                                "options": {"image": "example/mpq:1", "env": {"X": "1"}}})
    spec, gpu = kubernetes_specs(cfg)
    worker = spec["spec"]["worker"]
    container = worker["spec"]["containers"][0]
    assert worker["replicas"] == 3 and container["image"] == "example/mpq:1"
    assert container["args"][:3] == ["dask-worker", "--nthreads", "1"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["OMP_NUM_THREADS"] == "1" and env["X"] == "1" and "DASK_DISTRIBUTED__WORKER__RESOURCES__GPU" not in env
    assert env["MALLOC_ARENA_MAX"] == "1"
    assert gpu["n_workers"] == 2 and gpu["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert gpu["env"]["DASK_DISTRIBUTED__WORKER__RESOURCES__GPU"] == "1"
    with pytest.raises(ConfigError, match="unknown kubernetes option 'replicas'"):
        kubernetes_specs(parse_cluster_config({"kind": "kubernetes", "options": {"image": "x", "replicas": 2}}))


def test_kubernetes_without_a_cluster_is_a_clear_error(tmp_path, monkeypatch):
    """No kubeconfig or credentials here: the operator cannot be reached, and the error says so."""
    pytest.importorskip("dask_kubernetes")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = parse_cluster_config({"kind": "kubernetes", "workers": 1, "options": {"image": "example/mpq:1"}},
                               where="k8s.yaml")
    with pytest.raises(ConfigError, match="k8s.yaml: cannot start the Kubernetes cluster"):
        with dask_executor(cluster=cfg, log=None):
            pass


@pytest.mark.parametrize("module,extra", [("dask_jobqueue", "slurm"), ("dask_kubernetes.operator", "kubernetes")])
def test_missing_extra_names_the_install_command(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    kind = "slurm" if extra == "slurm" else "kubernetes"
    cfg = parse_cluster_config({"kind": kind, "options": {"cores": 2, "memory": "4GB"} if kind == "slurm"
                                else {"image": "x"}})
    with pytest.raises(ConfigError, match=rf"pip install 'mpq-pipeline\[{extra}\]'"):
        with dask_executor(cluster=cfg, log=None):
            pass


def test_local_gpu_workers_get_the_learned_codec_tasks(tmp_path):
    """gpu_workers: a worker declaring GPU=1 (and seeing only GPU 0) takes every task of a codec that
    needs a GPU; the other settings' tasks go to any worker."""
    with importlib.import_module("fault_codecs").registered():
        src = tmp_path / "src"
        src.mkdir()
        rng = np.random.default_rng(3)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(src / f"g{i}.png")
        cfg = ClusterConfig(kind="local", workers=1, gpu_workers=1, dashboard=":0")
        logs: list[str] = []
        with dask_executor(cluster=cfg, log=logs.append) as ex:
            env = ex._client.run(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES"))
            arenas = ex._client.run(lambda: __import__("os").environ.get("MALLOC_ARENA_MAX"))
            res = transcode(TranscodeConfig.create("imagefolder", src, ["test-gpu-png", "test-where-png"],
                                                   out=tmp_path / "o", samples_per_shard=1), ex)
    assert "2 workers" in logs[0] and "GPU workers: 1" in logs[1]
    assert sorted(env.values(), key=str) == ["0", None], "the GPU worker sees GPU 0 only"
    assert list(arenas.values()) == ["1", "1"], "one malloc arena in every worker process (cluster.py)"
    where = {s.tag: {r["on_gpu_worker"] for r in pq.read_table(Path(s.folder) / "manifest.parquet").to_pylist()}
             for s in res.sets}
    assert where["test-gpu-png"] == {"True"} and "False" in where["test-where-png"]


def test_cli_cluster_option(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(src / f"c{i}.png")
    cfg = tmp_path / "local.yaml"
    cfg.write_text("kind: local\nworkers: 1\ndashboard: ':0'\n")
    args = ["transcode", "imagefolder", str(src), "--codec", "jpeg:quality=30", "--out", str(tmp_path / "o"),
            "--no-progress", "--samples-per-shard", "2"]
    assert main([*args, "--cluster", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "Dask: LocalCluster with 1 workers" in out and "shards written 2" in out
    assert main([*args, "--cluster", str(cfg), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "give --cluster or --scheduler, not both" in capsys.readouterr().err
    cfg.write_text("kind: local\nworkers: many\n")
    assert main([*args, "--cluster", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "workers must be a whole number" in err[0]


def test_cluster_option_is_one_check_for_every_command(tmp_path):
    """``mpq transcode`` and ``mpq eval`` read --cluster through one function: a file, or a scheduler, not both."""
    from pipeline.run.cluster import cluster_option

    cfg = tmp_path / "local.yaml"
    cfg.write_text("kind: local\nworkers: 2\n")
    assert cluster_option(None, "tcp://127.0.0.1:1") is None
    assert cluster_option(cfg, None) == load_cluster_config(cfg)
    with pytest.raises(ConfigError, match="not both"):
        cluster_option(cfg, "tcp://127.0.0.1:1")

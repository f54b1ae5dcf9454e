"""A real multi-process deployment on this machine: `dask scheduler` and two `dask worker` processes
on 127.0.0.1, started and stopped here; the pipeline runs through them with `--cluster` files.

1. One worker is killed with SIGKILL while it is encoding a shard: the run completes, every sample
   is in the output exactly once, and the shards are byte-identical to an uninterrupted run.
2. Routing: one worker declares `--resources GPU=1`; tasks of a codec that needs a GPU run only
   there, the other codec's tasks run on both.
3. Settings travel with the run: workers started without `MPQ_WEIGHTS_DIR` or `MPQ_OFFLINE` use the
   `--weights-dir` and `--offline` of the run, never their own torch cache.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import fixtures as fx
from pipeline import TranscodeConfig
from pipeline.run.cluster import dask_executor
from pipeline.run.driver import transcode

REPO = Path(__file__).parents[1]
DASK = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
pytestmark = pytest.mark.skipif(DASK is None, reason="the dask command line is not installed")


class Deployment:
    """A scheduler and named workers as separate OS processes, all on loopback."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.scheduler_file = folder / "scheduler.json"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
                    "OMP_NUM_THREADS": "1", "MPQ_TEST_SLOW_S": "0.2"}

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.folder / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            cwd=self.folder)
        log.close()

    def start(self, workers: dict[str, list[str]]) -> Deployment:
        self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                                  "127.0.0.1:0", "--scheduler-file", str(self.scheduler_file)])
        self._wait(lambda: self.scheduler_file.is_file(), "scheduler")
        for name, extra in workers.items():
            # no nanny: the worker is this very process, so a SIGKILL ends it for good
            self._start(name, ["worker", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1",
                               "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", name, *extra])
        from distributed import Client

        with Client(scheduler_file=str(self.scheduler_file), timeout="20s") as client:
            client.wait_for_workers(len(workers), timeout=60)
        return self

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + 60
        while not ready():
            proc = self.procs[what]
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start: " + (self.folder / f"{what}.log").read_text()[-2000:])
            time.sleep(0.1)

    def config(self) -> Path:
        path = self.folder / "cluster.yaml"
        path.write_text(f"kind: scheduler\nscheduler_file: {self.scheduler_file}\n")
        return path

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:  # a worker whose scheduler is gone may wait for it
                proc.kill()
                proc.wait()


@pytest.fixture
def deployment(tmp_path):
    deployments: list[Deployment] = []

    def make(workers: dict[str, list[str]], env: dict[str, str | None] | None = None) -> Deployment:
        d = Deployment(tmp_path / f"deploy{len(deployments)}")
        d.folder.mkdir()
        for k, v in (env or {}).items():  # None: not set in the scheduler's and workers' environment
            if v is None:
                d.env.pop(k, None)
            else:
                d.env[k] = v
        deployments.append(d)
        return d.start(workers)

    yield make
    for d in deployments:
        d.stop()


@pytest.fixture
def fault_codecs():
    with importlib.import_module("fault_codecs").registered() as module:
        yield module


def make_source(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    names = ("astronaut", "coffee", "chelsea", "rocket", "china", "cat", "flower")
    for i in range(n):
        arr = fx.photo(names[i % len(names)], 40 + 4 * (i % 5), 56)
        Image.fromarray(arr if arr.ndim == 3 else np.repeat(arr[:, :, None], 3, 2)).save(root / f"s{i:02d}.png")
    return root


def test_sigkill_one_worker_mid_run(deployment, fault_codecs, tmp_path):
    n, per_shard = 16, 2
    codecs = ["test-slow-png", "jpeg:quality=40"]
    src = make_source(tmp_path / "src", n)
    reference = tmp_path / "ref"
    os.environ[fault_codecs.SLOW_ENV] = "0"
    try:
        transcode(TranscodeConfig.create("imagefolder", src, codecs, out=reference, samples_per_shard=per_shard))
    finally:
        os.environ.pop(fault_codecs.SLOW_ENV)

    d = deployment({"alpha": [], "victim": []})
    victim = d.procs["victim"]
    out = tmp_path / "out"
    config = TranscodeConfig.create("imagefolder", src, codecs, out=out, samples_per_shard=per_shard)
    killed: dict[str, object] = {}

    def kill_when_busy() -> None:
        """SIGKILL the victim once it is running a task and some shard is already published."""
        from distributed import Client

        with Client(scheduler_file=str(d.scheduler_file), timeout="20s") as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                processing = client.processing()
                busy = [a for a, keys in processing.items() if keys and "victim" in _names(client).get(a, "")]
                if busy and list(out.rglob("*_stats.json")):
                    killed["tasks"] = processing[busy[0]]
                    victim.send_signal(signal.SIGKILL)
                    return
                time.sleep(0.02)

    killer = threading.Thread(target=kill_when_busy)
    start = time.monotonic()
    with dask_executor(cluster=d.config(), log=None) as ex:
        killer.start()
        result = transcode(config, ex)
    killer.join()
    elapsed = time.monotonic() - start

    assert killed.get("tasks"), "the victim was killed while it was running a task"
    assert victim.wait(timeout=5) == -signal.SIGKILL
    assert not result.failed, result.failed
    assert fx.tree_bytes(out) == fx.tree_bytes(reference), "byte-identical to an uninterrupted run"
    for s in result.sets:
        rows = pq.read_table(Path(s.folder) / "manifest.parquet").to_pylist()
        assert sorted(r["key"] for r in rows) == [f"s{i:02d}" for i in range(n)], "every sample exactly once"
        assert all(r["status"] == "ok" for r in rows)
        stored = [k for tar in sorted(Path(s.folder).glob("*.tar")) for k in fx.group_members(fx.read_tar(tar))]
        assert sorted(stored) == [f"s{i:02d}" for i in range(n)]
        assert json.loads((Path(s.folder) / "index.json").read_text())["counts"] == {"listed": n, "ok": n, "error": 0}
    assert not [p for p in out.rglob(".*")], "no temporary file or attempt marker left"
    assert elapsed < 90


def _names(client) -> dict[str, str]:
    return {a: w.get("name", "") for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}


def test_gpu_tasks_only_on_gpu_workers(deployment, fault_codecs, tmp_path):
    src = make_source(tmp_path / "src", 12)
    d = deployment({"gpu": ["--resources", "GPU=1"], "cpu": []})
    logs: list[str] = []
    with dask_executor(cluster=d.config(), log=logs.append) as ex:
        result = transcode(TranscodeConfig.create("imagefolder", src, ["test-gpu-png", "test-where-png"],
                                                  out=tmp_path / "out", samples_per_shard=2), ex)
    assert not result.failed
    assert any("GPU workers: 1" in line for line in logs), logs
    assert result.shards_written == 2 * 6, "learned-codec and other settings are separate tasks"
    where = {}
    for s in result.sets:
        rows = pq.read_table(Path(s.folder) / "manifest.parquet").to_pylist()
        assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
        where[s.tag] = {r["on_gpu_worker"] for r in rows}
    assert where["test-gpu-png"] == {"True"}, "needs_gpu tasks ran only on the worker declaring GPU"
    assert "False" in where["test-where-png"], "other tasks also ran on the worker without a GPU"


@pytest.fixture
def weights_codecs():
    pytest.importorskip("compressai")
    with importlib.import_module("weights_codecs").registered() as module:
        yield module


def test_weights_dir_and_offline_reach_workers_started_elsewhere(deployment, weights_codecs, tmp_path, monkeypatch,
                                                                 capsys):
    """Neither the workers nor this client have MPQ_WEIGHTS_DIR or MPQ_OFFLINE: the run's flags decide."""
    from pipeline.cli import main
    from pipeline.run.driver import plan

    for var in ("MPQ_WEIGHTS_DIR", "MPQ_OFFLINE", "MPQ_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    worker_hub = tmp_path / "worker-torch"  # the workers' own cache: empty, and it must stay unused
    d = deployment({"w1": []}, env={"MPQ_WEIGHTS_DIR": None, "MPQ_OFFLINE": None, "MPQ_DEVICE": None,
                                     "TORCH_HOME": str(worker_hub)})
    address = json.loads(d.scheduler_file.read_text())["address"]
    src = make_source(tmp_path / "src", 3)
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    spec = f"{weights_codecs.NAME}:quality=1"
    args = ["transcode", "imagefolder", str(src), "--codec", spec, "--samples-per-shard", "2", "--weights-dir",
            str(weights_dir), "--offline", "--scheduler", address, "--no-progress"]

    # missing: the client's check names the folder of the run (and stops before any work)
    assert main([*args, "--out", str(tmp_path / "out0")]) == 2
    err = capsys.readouterr().err
    assert str(weights_dir / weights_codecs.CHECKPOINT) in err and "downloads are off" in err

    # present in DIR only: the worker finds it there, offline (a download from models.invalid would fail)
    weights_codecs.save_checkpoint(weights_dir)
    out = tmp_path / "out1"
    assert main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
    (folder,) = [p.parent for p in out.rglob("index.json")]
    rows = pq.read_table(folder / "manifest.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 3
    stored = {k: dict(m) for tar in sorted(folder.glob("*.tar")) for k, m in fx.group_members(fx.read_tar(tar)).items()}
    assert sorted(stored) == ["s00", "s01", "s02"] and all("bin" in m and "png" in m for m in stored.values())
    assert not worker_hub.exists() or not any(worker_hub.rglob("*.pth.tar")), "the worker's cache stayed unused"

    # missing on the worker (removed after the client's check): the error row names DIR, not a torch cache
    config = TranscodeConfig.create("imagefolder", src, [spec], out=tmp_path / "out2", samples_per_shard=2,
                                    weights_dir=weights_dir, offline=True)
    planned = plan(config)
    (weights_dir / weights_codecs.CHECKPOINT).unlink()
    with dask_executor(scheduler=address, log=None) as ex:
        result = transcode(config, ex, planned=planned)
    (s,) = result.sets
    rows = pq.read_table(Path(s.folder) / "manifest.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["error"] * 3
    for r in rows:
        assert str(weights_dir / weights_codecs.CHECKPOINT) in r["error"] and "downloads are off" in r["error"], r
        assert str(worker_hub) not in r["error"]

"""Dask at the edge: the one place that starts or connects to a cluster and hands the core an executor.

The core (:func:`pipeline.run.driver.transcode`) only sees a ``concurrent.futures.Executor``. Here we build
one from a cluster configuration (``cluster/*.yaml``, see ``cluster/README.md``):

- ``local``: a Dask ``LocalCluster`` on this machine (one single-threaded worker process per core by
  default), optionally with ``gpu_workers`` that each see one GPU;
- ``scheduler``: a running scheduler's address (workers started by hand or by another tool);
- ``slurm``: ``dask_jobqueue.SLURMCluster`` (extra ``mpq-pipeline[slurm]``), one batch job per group
  of workers;
- ``kubernetes``: ``dask_kubernetes.operator.KubeCluster`` (extra ``mpq-pipeline[kubernetes]``).

Each worker runs :class:`WorkerSetup` once, which pins codec and BLAS threads to one so that N
workers use N cores and nothing oversubscribes. Tasks that encode with a learned codec declare the
Dask resource ``GPU`` (:attr:`pipeline.run.task.ShardTask.resources`); when the cluster has workers that
declare a GPU, those tasks go only there and the other tasks go anywhere. A cluster without GPU
workers runs learned codecs on CPUs (``pipeline.codecs.devices`` chooses the device in each worker).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..errors import ConfigError

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS")

#: times a task is retried after its worker died (a killed worker); the task is idempotent, and a
#: retried task encodes in a child process, so a sample that kills its process becomes an error row
TASK_RETRIES = 3

KINDS = ("local", "scheduler", "slurm", "kubernetes")
#: the Dask resource a learned codec's task asks for, and a GPU worker declares
GPU = "GPU"
#: Dask reads worker resources from this environment variable (used for Kubernetes pods)
_RESOURCE_ENV = "DASK_DISTRIBUTED__WORKER__RESOURCES__{}"


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------- configuration files


@dataclass(frozen=True)
class ClusterConfig:
    """A parsed ``cluster/*.yaml``. ``options`` go verbatim to the cluster class of ``kind``."""

    kind: str = "local"
    workers: int | None = None  # worker processes without a GPU (local: default one per core)
    gpu_workers: int = 0  # local, kubernetes: further workers with one GPU each (resource GPU=1)
    resources: Mapping[str, float] = field(default_factory=dict)  # Dask resources every worker declares
    address: str | None = None  # scheduler: tcp://host:8786
    scheduler_file: str | None = None  # scheduler: or the JSON file `dask scheduler --scheduler-file` wrote
    adapt: Mapping[str, int] | None = None  # {minimum: 0, maximum: 100}: scale with the queue instead
    options: Mapping[str, Any] = field(default_factory=dict)
    dashboard: str = ":8787"
    path: str = ""  # where it was read from, for messages

    @property
    def declares_gpu(self) -> bool:
        return self.gpu_workers > 0 or GPU in self.resources


_KEYS = {f.name for f in fields(ClusterConfig)} - {"path"}
_ALLOWED = {
    "local": {"kind", "workers", "gpu_workers", "resources", "adapt", "options", "dashboard"},
    "scheduler": {"kind", "address", "scheduler_file"},
    "slurm": {"kind", "workers", "resources", "adapt", "options", "dashboard"},
    "kubernetes": {"kind", "workers", "gpu_workers", "resources", "adapt", "options"},
}


def parse_cluster_config(data: Any, *, where: str = "cluster configuration") -> ClusterConfig:
    """Validate a mapping (the YAML document) into a ClusterConfig; raises ConfigError, one line."""
    kind = _kind(data, where)
    resources, options, adapt = _mappings(data, where)
    address, scheduler_file = data.get("address"), data.get("scheduler_file")
    if kind == "scheduler":
        if bool(address) == bool(scheduler_file):
            raise ConfigError(f"{where}: kind scheduler needs address (tcp://host:8786) or scheduler_file")
        if address and "://" not in str(address):
            raise ConfigError(f"{where}: address must look like tcp://host:8786 (got {address!r})")
    dashboard = data.get("dashboard", ":8787")
    if not isinstance(dashboard, str):
        raise ConfigError(f"{where}: dashboard must be an address such as ':8787'")
    workers = _count(data, "workers", None, where)
    gpu_workers = _count(data, "gpu_workers", 0, where) or 0
    if kind == "kubernetes":
        image = options.get("image")
        if not image and "custom_cluster_spec" not in options:
            raise ConfigError(f"{where}: kubernetes needs options.image, an image with mpq-pipeline installed")
    return ClusterConfig(kind=kind, workers=workers, gpu_workers=gpu_workers, resources=dict(resources),
                         address=str(address) if address else None,
                         scheduler_file=str(scheduler_file) if scheduler_file else None,
                         adapt=dict(adapt) if adapt is not None else None, options=dict(options),
                         dashboard=dashboard, path=where)


def _kind(data: Any, where: str) -> str:
    """The document's kind, once its keys are known ones and apply to that kind."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with 'kind: {'|'.join(KINDS)}'")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)} (got {kind!r})")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(sorted(_KEYS))})")
    wrong = sorted(set(data) - _ALLOWED[kind])
    if wrong:
        raise ConfigError(f"{where}: {wrong[0]!r} does not apply to kind {kind} "
                          f"(it takes {', '.join(sorted(_ALLOWED[kind]))})")
    return str(kind)


def _count(data: Mapping[str, Any], name: str, default: int | None, where: str) -> int | None:
    v = data.get(name, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"{where}: {name} must be a whole number of 0 or more (got {v!r})")
    return v


def _mappings(data: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], Mapping[str, Any], Mapping | None]:
    """(resources, options, adapt), each checked: positive amounts, keyword names, worker counts."""
    resources = data.get("resources") or {}
    if not isinstance(resources, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
            for k, v in resources.items()):
        raise ConfigError(f"{where}: resources must map names to positive numbers, e.g. {{GPU: 1}}")
    options = data.get("options") or {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise ConfigError(f"{where}: options must be a mapping of keyword arguments")
    adapt = data.get("adapt")
    if adapt is not None:
        if not isinstance(adapt, Mapping) or set(adapt) - {"minimum", "maximum"} or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in adapt.values()):
            raise ConfigError(f"{where}: adapt takes minimum and maximum worker counts")
        if adapt.get("minimum", 0) > adapt.get("maximum", adapt.get("minimum", 0)):
            raise ConfigError(f"{where}: adapt minimum is above its maximum")
    return resources, options, adapt


def cluster_option(cluster_file: str | os.PathLike | None, scheduler: str | None) -> ClusterConfig | None:
    """What ``--cluster FILE`` asks for (None without it); with ``--scheduler`` too it is refused."""
    if not cluster_file:
        return None
    if scheduler:
        raise ConfigError("give --cluster or --scheduler, not both")
    return load_cluster_config(cluster_file)


def load_cluster_config(path: str | os.PathLike) -> ClusterConfig:
    """Read and validate a YAML cluster configuration (``mpq transcode --cluster FILE``)."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read cluster configuration {p}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_cluster_config(data, where=str(p))


# --------------------------------------------------------------------------- per-kind construction


#: glibc's malloc: one arena per worker process. A worker runs its tasks on a thread, and a thread's own
#: arena cannot hold a block larger than its heap (64 MB): MS-ILLM's ~94 MB activations at 512x768 were
#: then mapped and page-faulted afresh for every image, whatever the thresholds (restore_malloc_thresholds).
#: Workers run one task thread, so one arena costs no contention.
_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1"}


def _thread_env() -> dict[str, str]:
    """The environment of worker processes we start: one thread for BLAS and OpenMP, one malloc arena."""
    return {**{var: "1" for var in _THREAD_VARS}, **_MALLOC_ENV}


def _resource_args(resources: Mapping[str, float]) -> list[str]:
    """``dask worker`` arguments declaring resources (``--resources "GPU=1 MEM=2"``)."""
    if not resources:
        return []
    return ["--resources", " ".join(f"{k}={_num(v)}" for k, v in sorted(resources.items()))]


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _import_extra(module: str, extra: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{what} needs {module.split('.')[0].replace('_', '-')}: "
                          f"pip install 'mpq-pipeline[{extra}]' ({exc})") from None


def slurm_kwargs(cfg: ClusterConfig) -> dict[str, Any]:
    """Keyword arguments for ``SLURMCluster``: the configuration's options, with single-threaded
    workers (``processes`` = ``cores`` unless given), resources declared on the worker command line,
    and the thread variables exported in the job script."""
    kw = dict(cfg.options)
    if "cores" not in kw:
        raise ConfigError(f"{cfg.path}: slurm needs options.cores (cores per job) and options.memory")
    if "memory" not in kw:
        raise ConfigError(f"{cfg.path}: slurm needs options.memory (memory per job, e.g. 32GB)")
    kw.setdefault("processes", kw["cores"])  # one single-threaded worker process per core
    kw["worker_extra_args"] = [*kw.get("worker_extra_args", []), *_resource_args(cfg.resources)]
    exports = [f"export {k}={v}" for k, v in _thread_env().items()]
    kw["job_script_prologue"] = [*exports, *kw.get("job_script_prologue", [])]
    kw["scheduler_options"] = {"dashboard_address": cfg.dashboard, **(kw.get("scheduler_options") or {})}
    return kw


def kubernetes_specs(cfg: ClusterConfig) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The ``DaskCluster`` resource for the operator and, with ``gpu_workers``, the keyword arguments of
    a second worker group of one-GPU pods. Built without a cluster, so it can be checked anywhere."""
    operator = _import_extra("dask_kubernetes.operator", "kubernetes", "kind kubernetes")
    opts = dict(cfg.options)
    if "custom_cluster_spec" in opts:
        return opts["custom_cluster_spec"], None
    name = opts.pop("name", "mpq")
    image = opts.pop("image")
    env = {**_thread_env(), **{_RESOURCE_ENV.format(k): _num(v) for k, v in cfg.resources.items()},
           **opts.pop("env", {})}
    command = ["dask-worker", "--nthreads", "1"]
    spec = operator.make_cluster_spec(name=name, image=image, n_workers=cfg.workers if cfg.workers is not None else 1,
                                      resources=opts.pop("resources", None), env=env, worker_command=command,
                                      **{k: opts.pop(k) for k in ("scheduler_service_type", "idle_timeout")
                                         if k in opts})
    if opts:
        raise ConfigError(f"{cfg.path}: unknown kubernetes option {sorted(opts)[0]!r} (image, name, env, "
                          "resources, scheduler_service_type, idle_timeout, custom_cluster_spec)")
    gpu = None
    if cfg.gpu_workers:
        gpu = {"name": "gpu", "n_workers": cfg.gpu_workers, "image": image, "worker_command": command,
               "resources": {"limits": {"nvidia.com/gpu": "1"}},
               "env": {**env, _RESOURCE_ENV.format(GPU): "1"}}
    return spec, gpu


def _local_cluster(cfg: ClusterConfig, memory_limit: str):
    import dask

    # the dashboard's statistical profiler samples every 10 ms by default; every 100 ms costs a tenth
    # (measured: 2 workers on 2 cores went from 1.80x to 1.82x one worker) and still fills the profile
    with dask.config.set({"distributed.worker.profile.interval": "100ms"}):
        return _make_local_cluster(cfg, memory_limit)


def _make_local_cluster(cfg: ClusterConfig, memory_limit: str):
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    n = cfg.workers if cfg.workers is not None else default_workers()
    if not cfg.gpu_workers:
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=cfg.dashboard,
                            memory_limit=memory_limit, env=_thread_env(), silence_logs=logging.WARNING,
                            resources=dict(cfg.resources) or None, **dict(cfg.options))
    # some workers with one GPU each: a SpecCluster, since LocalCluster's workers are all alike
    base = {"nthreads": 1, "memory_limit": memory_limit, "silence_logs": logging.WARNING, **dict(cfg.options)}
    workers = {f"cpu-{i}": {"cls": Nanny, "options": {**base, "env": _thread_env(),
                                                      "resources": dict(cfg.resources)}} for i in range(n)}
    for g in range(cfg.gpu_workers):
        workers[f"gpu-{g}"] = {"cls": Nanny, "options": {
            **base, "env": {**_thread_env(), "CUDA_VISIBLE_DEVICES": str(g)},
            "resources": {**cfg.resources, GPU: 1}}}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": cfg.dashboard, "host": "127.0.0.1"}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.WARNING, name="mpq-local")


def _start(cfg: ClusterConfig, memory_limit: str):
    """(cluster we started or None, client)."""
    from distributed import Client

    if cfg.kind == "scheduler":
        if cfg.scheduler_file:
            return None, Client(scheduler_file=cfg.scheduler_file, timeout="30s")
        return None, Client(cfg.address, timeout="30s")
    if cfg.kind == "local":
        cluster = _local_cluster(cfg, memory_limit)
    elif cfg.kind == "slurm":
        jobqueue = _import_extra("dask_jobqueue", "slurm", "kind slurm")
        cluster = jobqueue.SLURMCluster(**slurm_kwargs(cfg))
        if cfg.adapt is None:
            cluster.scale(n=cfg.workers if cfg.workers is not None else 1)
    else:
        spec, gpu = kubernetes_specs(cfg)
        operator = _import_extra("dask_kubernetes.operator", "kubernetes", "kind kubernetes")
        try:
            cluster = operator.KubeCluster(custom_cluster_spec=spec)
            if gpu:
                cluster.add_worker_group(**gpu)
        except Exception as exc:  # no credentials, no operator, no API server
            _forget_kube_clusters(operator)
            raise ConfigError(f"{cfg.path}: cannot start the Kubernetes cluster: {type(exc).__name__}: {exc}") \
                from None
    if cfg.adapt is not None:
        cluster.adapt(**dict(cfg.adapt))
    return cluster, Client(cluster)


def _forget_kube_clusters(operator) -> None:
    """A KubeCluster that failed to start stays registered for an exit-time clean-up that fails again
    (with a long traceback); it has nothing to clean up, so drop it."""
    with contextlib.suppress(Exception):
        operator.KubeCluster._instances.clear()


# --------------------------------------------------------------------------- executor


#: glibc thresholds set in every worker process (bytes): blocks up to MMAP come from the heap and are
#: reused, and up to TRIM of free heap is kept rather than returned to the system
MALLOC_MMAP_THRESHOLD = 256 << 20
MALLOC_TRIM_THRESHOLD = 512 << 20


def restore_malloc_thresholds() -> bool:
    """Undo the effect of Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` on glibc's allocator in this process.

    Setting that variable switches off glibc's adaptive mmap threshold, so every image-sized buffer
    (> 128 KiB) is mmap-ed and page-faulted afresh: decoding ran 3x slower in Dask workers than in a
    plain process (measured here). We set explicit, generous thresholds instead, above the ~94 MB
    activations of MS-ILLM at 512x768 (with one malloc arena, ``_MALLOC_ENV``, that image's system
    time went from 0.9 s to 0.0 s: ``bench/bench_arena.py``); returns True if done.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers in glibc's malloc.h
        ok = libc.mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD) == 1
        return libc.mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to undo
        return False


def _worker_plugin():
    from distributed.diagnostics.plugin import WorkerPlugin

    class WorkerSetup(WorkerPlugin):
        """Per-worker set-up: one thread for codecs and BLAS (parallelism comes from workers)."""

        name = "mpq-worker-setup"

        def setup(self, worker) -> None:  # noqa: D401 - Dask hook
            for var in _THREAD_VARS:
                os.environ[var] = "1"
            # (torch threads are set where a learned codec loads its model: pipeline/codecs/devices.py)
            restore_malloc_thresholds()

    return WorkerSetup()


def _routing_executor(client, *, route_gpu: bool):
    """``client.get_executor`` whose submit adds the task's own resources (a GPU) when routing."""
    from distributed.cfexecutor import ClientExecutor

    class RoutingExecutor(ClientExecutor):
        # the same call as ClientExecutor.submit (which mypy sees as Executor's generic one), plus resources
        def submit(self, fn, *args, **kwargs):  # type: ignore[override]
            if route_gpu and args and "resources" not in kwargs:
                resources = getattr(args[0], "resources", None)
                if resources:
                    kwargs["resources"] = resources
            return super().submit(fn, *args, **kwargs)

    return RoutingExecutor(client, pure=False, retries=TASK_RETRIES)


def _gpu_workers_connected(client) -> int:
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return sum(1 for w in workers.values() if (w.get("resources") or {}).get(GPU))


@contextlib.contextmanager
def dask_executor(workers: int | None = None, scheduler: str | None = None, *,
                  cluster: ClusterConfig | str | os.PathLike | None = None,
                  dashboard: str = ":8787", log: Callable[[str], None] | None = print,
                  memory_limit: str = "auto") -> Iterator:
    """Yield a ``concurrent.futures`` executor backed by Dask and close what we started on exit.

    ``cluster``: a :class:`ClusterConfig` or the path of a YAML file (``cluster/*.yaml``); ``workers``
    then overrides its worker count. Without it: ``scheduler``, the address of a running scheduler
    (``tcp://host:8786``), or else a LocalCluster with ``workers`` single-threaded worker processes.
    """
    if cluster is not None and scheduler:
        raise ConfigError("give a cluster configuration or a scheduler address, not both")
    if isinstance(cluster, (str, os.PathLike)):
        cluster = load_cluster_config(cluster)
    if cluster is None:
        cluster = ClusterConfig(kind="scheduler", address=scheduler) if scheduler else \
            ClusterConfig(kind="local", workers=workers, dashboard=dashboard)
    elif workers is not None and cluster.kind != "scheduler":
        cluster = ClusterConfig(**{**{f.name: getattr(cluster, f.name) for f in fields(cluster)}, "workers": workers})

    logging.getLogger("distributed").setLevel(logging.WARNING)
    started, client = _start(cluster, memory_limit)
    try:
        client.register_plugin(_worker_plugin())
        gpus = _gpu_workers_connected(client)
        route_gpu = cluster.declares_gpu or gpus > 0
        if log is not None:
            nworkers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            where = cluster.address or cluster.scheduler_file or (
                "LocalCluster" if cluster.kind == "local" else f"{cluster.kind} cluster")
            log(f"Dask: {where} with {nworkers} workers; dashboard: {client.dashboard_link}")
            if route_gpu:
                log(f"GPU workers: {gpus} now; tasks with a learned codec go only to workers declaring {GPU}")
        yield _routing_executor(client, route_gpu=route_gpu)
    finally:
        client.close()
        if started is not None:
            started.close()

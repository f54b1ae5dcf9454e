"""Dask at the edge: the one place that starts or connects to a cluster and hands the core an executor.

The core (:func:`pipeline.run.transcode`) only sees a ``concurrent.futures.Executor``. Here we build
one from a Dask ``LocalCluster`` (one single-threaded worker process per core by default) or from an
existing scheduler address. Each worker runs :class:`WorkerSetup` once, which pins codec and BLAS
threads to one so that N workers use N cores and nothing oversubscribes.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Iterator

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS")

#: times a task is retried after its worker died (a killed worker); the task is idempotent
TASK_RETRIES = 3


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _worker_plugin():
    from distributed.diagnostics.plugin import WorkerPlugin

    class WorkerSetup(WorkerPlugin):
        """Per-worker set-up: one thread for codecs and BLAS (parallelism comes from workers)."""

        name = "mpq-worker-setup"

        def setup(self, worker) -> None:  # noqa: D401 - Dask hook
            for var in _THREAD_VARS:
                os.environ[var] = "1"
            try:
                import torch  # only if a neural codec is installed and used

                torch.set_num_threads(max(1, int(worker.state.nthreads)))
            except Exception:  # torch absent or already initialised: fine
                pass

    return WorkerSetup()


@contextlib.contextmanager
def dask_executor(workers: int | None = None, scheduler: str | None = None, *,
                  dashboard: str = ":8787", log: Callable[[str], None] | None = print,
                  memory_limit: str = "auto") -> Iterator:
    """Yield a ``concurrent.futures`` executor backed by Dask and close what we started on exit.

    ``scheduler``: address of a running scheduler (``tcp://host:8786``); otherwise a LocalCluster
    with ``workers`` single-threaded worker processes is started here.
    """
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
    else:
        n = workers or default_workers()
        env = {var: "1" for var in _THREAD_VARS}
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=dashboard,
                               memory_limit=memory_limit, env=env, silence_logs=logging.WARNING)
        client = Client(cluster)
    try:
        client.register_plugin(_worker_plugin())
        if log is not None:
            nworkers = len(client.scheduler_info().get("workers", {}))
            where = scheduler or "LocalCluster"
            log(f"Dask: {where} with {nworkers} workers; dashboard: {client.dashboard_link}")
        yield client.get_executor(pure=False, retries=TASK_RETRIES)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

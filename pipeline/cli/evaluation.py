"""``mpq eval``: machine perception on every finished set of a dataset split, on Dask or in-process."""
from __future__ import annotations

import sys
import time
from typing import Sequence

import click

from ..errors import ConfigError, OutputError
from .base import cli, fail, output_failed


def _eval_summary(planned) -> None:
    """One line per set with its figures, read back from the published JSON files."""
    from ..eval.run import read_result, result_paths
    from ..store.storage import open_store

    store = open_store(planned.config.out)
    for s in planned.sets:
        doc = read_result(store, result_paths(s, planned.config)[2])
        if doc is None:
            continue
        figures = ", ".join(f"{k} {v:.4g}" for k, v in doc["figures"].items() if isinstance(v, (int, float)))
        cov = doc.get("coverage") or {}
        covered = f"  coverage {cov['fraction']:.1%}" if isinstance(cov.get("fraction"), float) else ""
        click.echo(f"  {doc['tag']:<24} ok {doc['samples']:>6}  error {doc['errors']:>4}{covered}  {figures}")


def _task_choices() -> list[str]:
    from ..eval.tasks import task_names

    return task_names()


@cli.command(name="eval")
@click.argument("out")
@click.option("--dataset", required=True, help="dataset folder under OUT (imagenet, ade20k, librispeech, musdb, ...)")
@click.option("--split", required=True, help="split folder under OUT/DATASET")
@click.option("--task", required=True, type=click.Choice(_task_choices()), help="what the model does")
@click.option("--model", default=None,
              help="torchvision:NAME, timm:NAME, hf:NAME_OR_FOLDER, pocketsphinx, umxhq, umxl, htdemucs, "
                   "lpips:alex|vgg|squeeze, dists, cdpam (similarity) "
                   "[default: the task's default model where it has one]")
@click.option("--codec", "codecs", multiple=True,
              help="only these settings (repeatable) [default: every finished set]; none is always added when present")
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="a state dict (tensors only) loaded into the named architecture")
@click.option("--variant", default=None,
              help="name of these weights (e.g. ft-jpeg5): results go to <task>-<model>-VARIANT beside the model's "
                   "own, and the report gives the fraction of the drop from none that it recovers")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
@click.option("--limit", type=int, default=None,
              help="only the first N reference keys (ok samples of the set none, in shard order), in every set")
@click.option("--offline", is_flag=True, help="never download weights; missing weights stop the run")
@click.option("--normalizer", type=click.Choice(["basic", "whisper"]), default="basic", show_default=True,
              help="asr: text normalization before word errors (whisper: the Whisper English normalizer)")
@click.option("--language", default=None,
              help="asr with a multilingual Whisper: the spoken language [default: English]; the task is always "
                   "transcribe")
@click.option("--workers", type=int, default=None,
              help="Dask worker processes on this machine [default: one per core]; 0 runs in this process")
@click.option("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)")
@click.option("--cluster", "cluster_file", default=None, type=click.Path(dir_okay=False),
              help="cluster configuration file (as for transcode)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def eval_(out: str, dataset: str, split: str, task: str, model: str | None, codecs: Sequence[str],
          weights: str | None, variant: str | None, batch_size: int, device: str, limit: int | None, offline: bool,
          normalizer: str, language: str | None, workers: int | None, scheduler: str | None,
          cluster_file: str | None, no_progress: bool) -> None:
    """Measure machine perception (TASK with MODEL) on every finished set of DATASET/SPLIT under OUT."""
    from ..eval import EvalConfig
    from ..eval.run import evaluate, plan_eval
    from ..eval.tasks import get_task

    cluster = None
    try:
        if workers is not None and workers < 0:
            raise ConfigError("--workers must be 0 or more")
        model = model or get_task(task).default_model
        if model is None:
            raise ConfigError(f"task {task} has no default model: give --model")
        config = EvalConfig.create(out, dataset, split, task, model, codecs=codecs, weights=weights,
                                   batch_size=batch_size, device=device, limit=limit, offline=offline,
                                   normalizer=normalizer, language=language, variant=variant)
        planned = plan_eval(config)  # every check happens here, before any cluster starts
        from ..run.cluster import cluster_option

        cluster = cluster_option(cluster_file, scheduler)
    except ConfigError as exc:
        fail(str(exc))
    start = time.perf_counter()
    try:
        if not planned.tasks or (workers == 0 and not scheduler and cluster is None):
            result = evaluate(config, progress=not no_progress, planned=planned)
        else:
            from ..run.cluster import dask_executor

            with dask_executor(workers, scheduler, cluster=cluster, log=click.echo) as executor:
                result = evaluate(config, executor, progress=not no_progress, planned=planned)
    except ConfigError as exc:
        fail(str(exc))
    except OutputError as exc:  # the results' store failed mid-run: what is published is whole, rerun resumes
        output_failed(exc)
    click.echo(f"{len(planned.sets)} sets, {len(planned.todo)} to evaluate; shard units run {result.shards_run}, "
               f"already done {result.shards_cached}; {time.perf_counter() - start:.1f} s")
    _eval_summary(planned)
    for f in result.failed:
        click.echo(f"  FAILED {f}", err=True)
    if result.failed:
        click.echo("some shards failed; rerun the same command to resume", err=True)
        sys.exit(1)

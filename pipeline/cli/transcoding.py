"""``mpq transcode`` and ``mpq demo``: options built from the run config's declarations, a run and its summary."""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import click

from ..errors import ConfigError, OutputError
from ..run.config import CliOption, TranscodeConfig, cli_fields
from .base import cli, fail, output_failed

if TYPE_CHECKING:
    from ..sources.base import SourceOption


def _summary(result, seconds: float) -> None:
    click.echo(f"listed {result.listed} samples"
               + (f" ({result.skipped_files} non-image files skipped)" if result.skipped_files else "")
               + f"; shards written {result.shards_written}"
               + (f" ({result.shards_changed} because their sources changed)" if result.shards_changed else "")
               + f", already complete {result.shards_cached}"
               + (f" ({result.shards_adopted} of an older set, now keyed on their sources)"
                  if result.shards_adopted else "") + ";"
               f" {seconds:.1f} s")
    for note in result.notes:
        click.echo(f"  warning: {note}")
    for s in result.sets:
        click.echo(f"  {s.tag:<24} ok {s.ok:>7}  error {s.errors:>5}  shards {s.shards:>5}  "
                   f"{_means(s)}  {s.bytes / 1e6:9.2f} MB  {s.folder}")
    for f in result.failed:
        click.echo(f"  FAILED {f}", err=True)


def _means(s) -> str:
    """Mean rate and quality of one set, as the report's summary table has them (ok samples)."""
    unit = getattr(s, "rate_unit", "") or "bpp"
    rate = "-" if getattr(s, "rate_mean", None) is None else f"{s.rate_mean:.4f}"
    quality = getattr(s, "quality_mean", None)
    q = "-" if quality is None else ("lossless" if quality == float("inf") else f"{quality:.2f} dB")
    return f"{rate:>9} {unit:<4}  {(getattr(s, 'quality', '') or 'psnr').upper():<4} {q:>9}"


def run_config(config: TranscodeConfig, workers: int | None, scheduler: str | None, progress: bool = True, *,
               cluster=None, isolate: bool = False, planned=None):
    """Run a config on Dask (or in-process with workers=0) and print a summary; used by transcode and demo.

    ``cluster``: a :class:`pipeline.run.cluster.ClusterConfig` (``--cluster FILE``). An output location that
    cannot be written ends the run with one line and exit code 1.
    """
    from ..run.driver import transcode

    start = time.perf_counter()
    try:
        if workers == 0 and not scheduler and cluster is None:
            result = transcode(config, progress=progress, isolate=isolate, planned=planned)
        else:
            from ..run.cluster import dask_executor

            with dask_executor(workers, scheduler, cluster=cluster, log=click.echo) as executor:
                result = transcode(config, executor, progress=progress, isolate=isolate, planned=planned)
    except OutputError as exc:
        output_failed(exc)
    except ConfigError as exc:  # a cluster that cannot start
        fail(str(exc))
    _summary(result, time.perf_counter() - start)
    if result.failed:
        click.echo("some shards failed; rerun the same command to resume", err=True)
        sys.exit(1)
    return result


def _click_option(name: str, opt: CliOption) -> Callable[[Callable], Callable]:
    """The click option for one config field, from its declaration (:class:`pipeline.run.config.CliOption`)."""
    kw: dict[str, Any] = {"help": opt.help or None, "show_default": opt.show_default}
    if opt.kind in ("flag", "off"):
        kw["is_flag"] = True
    elif opt.kind == "multiple":
        kw.update(multiple=True, required=opt.required)
    elif opt.kind == "folder":
        kw["type"] = click.Path(file_okay=False)
    elif opt.kind == "optional":
        kw.update(is_flag=False, flag_value=opt.flag_value, default=None, type=click.Choice(list(opt.choices or ())))
    elif opt.choices is not None:
        kw.update(type=click.Choice(list(opt.choices)), default=opt.default)
    else:
        kw.update(type=opt.type, default=opt.default)
    return click.option(opt.name, name, **kw)


def _source_option(option: SourceOption, sources: list[str]) -> Callable[[Callable], Callable]:
    help_text = f"{', '.join(sources)}: {option.help}"
    if option.flag:
        return click.option(f"--{option.name.replace('_', '-')}", f"source_{option.name}", is_flag=True, help=help_text)
    return click.option(f"--{option.name.replace('_', '-')}", f"source_{option.name}", default=None, help=help_text)


def _config_options(command: Callable) -> Callable:
    """Add an option per config field and per source option, all from their declarations."""
    from ..sources import declared_options

    taken = {opt.name for _, opt in cli_fields()}
    for option, sources in declared_options():
        if f"--{option.name.replace('_', '-')}" in taken:
            raise ValueError(f"source option {option.name!r} ({', '.join(sources)}) clashes with a run option")
    for option, sources in reversed(declared_options()):
        command = _source_option(option, sources)(command)
    for name, opt in reversed(cli_fields()):
        command = _click_option(name, opt)(command)
    return command


def _config_from_options(dataset: str, root: str, values: dict[str, Any]) -> TranscodeConfig:
    """The config the given options describe: an option not given passes None (the field's default)."""
    settings: dict[str, Any] = {}
    for name, opt in cli_fields():
        value = values.pop(name)
        if opt.kind == "flag":
            value = True if value else None
        elif opt.kind == "off":
            value = False if value else None
        elif opt.kind == "multiple":
            value = list(value)
        settings[name] = value
    source_options = {k.removeprefix("source_"): (v or None) for k, v in list(values.items())
                      if k.startswith("source_")}
    codecs = settings.pop("codecs")
    return TranscodeConfig.create(dataset, root, codecs, source_options=source_options, **settings)


@cli.command()
@click.argument("dataset")
@click.argument("root")
@click.option("--workers", type=int, default=None,
              help="Dask worker processes on this machine [default: one per core]; 0 runs in this process")
@click.option("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)")
@click.option("--cluster", "cluster_file", default=None, type=click.Path(dir_okay=False),
              help="cluster configuration (cluster/local.yaml, slurm.yaml, kubernetes.yaml, scheduler.yaml); "
                   "--workers then overrides its worker count")
@click.option("--isolate", is_flag=True,
              help="encode in a child process per shard from the first attempt, so a codec that crashes its "
                   "process costs one sample (retried shards always do this)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@_config_options
def transcode(dataset: str, root: str, workers: int | None, scheduler: str | None, cluster_file: str | None,
              isolate: bool, no_progress: bool, **options: Any) -> None:
    """Transcode DATASET stored at ROOT with one or more codec settings."""
    from ..run.checks import check_output
    from ..run.driver import plan

    try:
        config = _config_from_options(dataset, root, options)
        planned = plan(config)  # every configuration error surfaces here, before any cluster starts
        source = planned[0]
        from ..run.cluster import cluster_option

        cluster = cluster_option(cluster_file, scheduler)
    except ConfigError as exc:
        fail(str(exc))
    if workers is not None and workers < 0:
        fail("--workers must be 0 or more")
    try:
        check_output(config, source)  # a read-only, full or unreachable output fails here, before any cluster
    except OutputError as exc:
        output_failed(exc)
    run_config(config, workers, scheduler, progress=not no_progress, cluster=cluster, isolate=isolate,
               planned=planned)


#: the demo's sweep: two families of four settings each (curves and BD-rates in the report), and the reference
DEMO_CODECS = ("jpeg:quality=5,10,25,50", "webp:quality=5,10,25,50", "none")


@cli.command()
@click.option("--out", default="shards", show_default=True, help="output folder")
@click.option("--workers", type=int, default=2, show_default=True, help="Dask worker processes (0: in-process)")
@click.option("--codec", "codecs", multiple=True, default=DEMO_CODECS, show_default=True)
@click.option("--no-report", is_flag=True, help="do not write the report at the end (print its command instead)")
def demo(out: str, workers: int, codecs: Sequence[str], no_report: bool) -> None:
    """Make a small ImageNet-layout sample from photographs shipped in scikit-image, transcode a sweep, report it."""
    from pathlib import Path

    from ..demo import make_demo_imagenet

    root = make_demo_imagenet(Path(out) / "_demo_source" / "imagenet")
    click.echo(f"demo dataset: {root}")
    try:
        config = TranscodeConfig.create("imagenet", root, list(codecs), out=out, split="val", samples_per_shard=4)
    except ConfigError as exc:
        fail(str(exc))
    run_config(config, workers, None)
    command = f"mpq report {out} --dataset imagenet --split val"
    if no_report:
        click.echo(f"next: {command}")
        return
    from ..report import write_report

    try:
        folder = write_report(out, dataset="imagenet", split="val")
    except ConfigError as exc:
        fail(str(exc))
    click.echo(f"report: {Path(folder) / 'report.html'}  (written by: {command})")

"""The ``mpq`` command: a thin click layer over the same config objects as the Python API."""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import click

from .errors import ConfigError, OutputError
from .run.config import CliOption, TranscodeConfig, cli_fields

if TYPE_CHECKING:
    from .sources.base import SourceOption


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _output_failed(exc: Exception) -> None:
    click.echo(f"error: {exc}; nothing partial is left under a final name, rerun to resume once it is writable",
               err=True)
    sys.exit(1)


def _summary(result, seconds: float) -> None:
    click.echo(f"listed {result.listed} samples"
               + (f" ({result.skipped_files} non-image files skipped)" if result.skipped_files else "")
               + f"; shards written {result.shards_written}"
               + (f" ({result.shards_changed} because their sources changed)" if result.shards_changed else "")
               + f", already complete {result.shards_cached}"
               + (f" ({result.shards_adopted} of an older set, now keyed on their sources)"
                  if result.shards_adopted else "") + ";"
               f" {seconds:.1f} s")
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
    from .run.driver import transcode

    start = time.perf_counter()
    try:
        if workers == 0 and not scheduler and cluster is None:
            result = transcode(config, progress=progress, isolate=isolate, planned=planned)
        else:
            from .run.cluster import dask_executor

            with dask_executor(workers, scheduler, cluster=cluster, log=click.echo) as executor:
                result = transcode(config, executor, progress=progress, isolate=isolate, planned=planned)
    except OutputError as exc:
        _output_failed(exc)
    except ConfigError as exc:  # a cluster that cannot start
        _fail(str(exc))
    _summary(result, time.perf_counter() - start)
    if result.failed:
        click.echo("some shards failed; rerun the same command to resume", err=True)
        sys.exit(1)
    return result


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpq-pipeline")
def cli() -> None:
    """Re-encode datasets with lossy codecs into per-codec WebDataset shards with exact bitrates."""


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
    from .sources import declared_options

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
    from .run.driver import check_output, plan

    try:
        config = _config_from_options(dataset, root, options)
        planned = plan(config)  # every configuration error surfaces here, before any cluster starts
        source = planned[0]
        cluster = None
        if cluster_file:
            from .run.cluster import load_cluster_config

            if scheduler:
                raise ConfigError("give --cluster or --scheduler, not both")
            cluster = load_cluster_config(cluster_file)
    except ConfigError as exc:
        _fail(str(exc))
    if workers is not None and workers < 0:
        _fail("--workers must be 0 or more")
    try:
        check_output(config, source)  # a read-only, full or unreachable output fails here, before any cluster
    except OutputError as exc:
        _output_failed(exc)
    run_config(config, workers, scheduler, progress=not no_progress, cluster=cluster, isolate=isolate,
               planned=planned)


def codec_table(modality: str | None = None) -> str:
    """The Markdown codec table of the README, generated from the registry (a test keeps them equal)."""
    from .codecs import codec_names, get_codec
    from .codecs.spec import format_value

    lines = ["| codec | kind | payload | parameters (default) | library |", "|---|---|---|---|---|"]
    for name in codec_names(modality):
        c = get_codec(name)
        params = ", ".join(f"`{p.name}`" + (f"={format_value(p.default)}" if p.default is not None else "")
                           for p in c.params) or "none"
        payload = getattr(c, "payload_doc", f"`.{c.extension}`")
        lines.append(f"| `{name}` | {c.modality} | {payload} | {params} | {c.library} |")
    return "\n".join(lines)


def dataset_table() -> str:
    """The Markdown dataset table of the README, generated from the source registry."""
    from .sources import get_source, source_names

    lines = ["| dataset | kind | splits | layout |", "|---|---|---|---|"]
    for name in source_names():
        s = get_source(name)
        splits = ", ".join(f"`{x}`" for x in s.splits) if s.splits else f"any name (default `{s.default_split}`)"
        lines.append(f"| `{name}` | {getattr(s, 'modality_doc', s.modality)} | {splits} | {s.summary} |")
    return "\n".join(lines)


@cli.command()
@click.option("--modality", type=click.Choice(["image", "audio"]), default=None)
@click.option("--markdown", is_flag=True, help="print the README's Markdown table")
def codecs(modality: str | None, markdown: bool) -> None:
    """List the registered codecs and their parameters."""
    from .codecs import codec_names, get_codec

    if markdown:
        click.echo(codec_table(modality))
        return
    for name in codec_names(modality):
        c = get_codec(name)
        why = c.unavailable()
        click.echo(f"{name}  [{c.modality}, .{c.extension}]  {c.summary}" + (f"  (UNAVAILABLE: {why})" if why else ""))
        for p in c.params:
            rng = f" {p.choices}" if p.choices else (
                f" [{p.minimum}..{p.maximum}]" if p.minimum is not None or p.maximum is not None else "")
            click.echo(f"    {p.name}={p.default}  ({p.type.__name__}{rng}) {p.help}")


@cli.command()
@click.option("--markdown", is_flag=True, help="print the README's Markdown table")
def datasets(markdown: bool) -> None:
    """List the supported dataset layouts."""
    from .sources import get_source, source_names

    if markdown:
        click.echo(dataset_table())
        return
    for name in source_names():
        s = get_source(name)
        splits = ", ".join(s.splits) if s.splits else f"any name (default {s.default_split})"
        click.echo(f"{name}  [{s.modality}; splits: {splits}]  {s.summary}")


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write")
@click.option("--device", default=None, help="cpu, cuda or cuda:N [default: a GPU when present]")
def decode(file: str, output: str, device: str | None) -> None:
    """Decode a learned codec's stored bitstream (FILE.bin, e.g. taken out of a shard) to a PNG.

    A FILE.json beside it (the sample's record) is read to warn when the device or library versions
    differ from the encoder's: learned codecs may decode differently across devices.
    """
    from .codecs.bitstream import decode_to_png

    try:
        rgb = decode_to_png(file, output, device=device)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
    click.echo(f"{output}: {rgb.shape[1]}x{rgb.shape[0]}")


@cli.command()
@click.argument("spec")
def spec(spec: str) -> None:
    """Show the canonical form and folder tag of a codec setting (sweeps expand)."""
    from .codecs.spec import parse_specs

    try:
        for s in parse_specs(spec):
            click.echo(f"{s.canonical}\t{s.tag}")
    except ConfigError as exc:
        _fail(str(exc))


@cli.command()
@click.argument("out")
@click.option("--dataset", default=None, help="only this dataset [default: every dataset under OUT]")
@click.option("--split", default=None, help="only this split [default: every split]")
@click.option("--out", "report_dir", default=None, help="report folder [default: OUT/_report]")
@click.option("--anchor", default=None,
              help="codec family the BD-rates are measured against [default: jpeg where present]")
@click.option("--breakdown-shards", type=int, default=1, show_default=True,
              help="tar files per setting whose headers are read for the storage breakdown (0: none, -1: all)")
def report(out: str, dataset: str | None, split: str | None, report_dir: str | None, anchor: str | None,
           breakdown_shards: int) -> None:
    """Rate-distortion report of the finished sets under OUT: tables, RD plots, BD-rates, storage."""
    from .report import write_report

    try:
        folder = write_report(out, dataset=dataset, split=split, report_dir=report_dir, anchor=anchor,
                              breakdown_shards=None if breakdown_shards < 0 else breakdown_shards)
    except ConfigError as exc:
        _fail(str(exc))
    click.echo(f"report: {folder / 'report.html'}  (also report.md, summary.csv, bdrate.csv, plots) in {folder}")


#: the demo's sweep: two families of four settings each (curves and BD-rates in the report), and the reference
DEMO_CODECS = ("jpeg:quality=5,10,25,50", "webp:quality=5,10,25,50", "none")


@cli.command()
@click.argument("out")
@click.option("--dataset", default=None, help="only this dataset [default: every dataset under OUT]")
@click.option("--split", default=None, help="only this split [default: every split]")
@click.option("--sources", default=None,
              help="source root: also rehash every sample's source and compare it with its recorded source_sha256")
def verify(out: str, dataset: str | None, split: str | None, sources: str | None) -> None:
    """Check the finished sets under OUT without writing: shards, manifests, and (--sources) the sources.

    Lists what is stale or damaged and exits with 1 when anything is.
    """
    from .store.verify import verify_output

    report = verify_output(out, dataset=dataset, split=split, sources=sources)
    for problem in report.problems:
        click.echo(f"  {problem}")
    checked = f"{report.sets} sets, {report.shards} shards" + (
        f", {report.sources_checked} sources rehashed" if sources else "")
    if not report.clean:
        click.echo(f"{len(report.problems)} problems in {checked}", err=True)
        sys.exit(1)
    click.echo(f"clean: {checked}")


def _eval_summary(planned) -> None:
    """One line per set with its figures, read back from the published JSON files."""
    import json

    from .eval.run import result_paths

    for s in planned.sets:
        path = result_paths(s, planned.config)[2]
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        figures = ", ".join(f"{k} {v:.4g}" for k, v in doc["figures"].items() if isinstance(v, (int, float)))
        click.echo(f"  {doc['tag']:<24} ok {doc['samples']:>6}  error {doc['errors']:>4}  {figures}")


def _task_choices() -> list[str]:
    from .eval.tasks import task_names

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
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
@click.option("--limit", type=int, default=None, help="only the first N samples of each set")
@click.option("--offline", is_flag=True, help="never download weights; missing weights stop the run")
@click.option("--workers", type=int, default=None,
              help="Dask worker processes on this machine [default: one per core]; 0 runs in this process")
@click.option("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)")
@click.option("--cluster", "cluster_file", default=None, type=click.Path(dir_okay=False),
              help="cluster configuration file (as for transcode)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def eval_(out: str, dataset: str, split: str, task: str, model: str | None, codecs: Sequence[str],
          weights: str | None, batch_size: int, device: str, limit: int | None, offline: bool,
          workers: int | None, scheduler: str | None, cluster_file: str | None, no_progress: bool) -> None:
    """Measure machine perception (TASK with MODEL) on every finished set of DATASET/SPLIT under OUT."""
    from .eval import EvalConfig
    from .eval.run import evaluate, plan_eval
    from .eval.tasks import get_task

    cluster = None
    try:
        if workers is not None and workers < 0:
            raise ConfigError("--workers must be 0 or more")
        model = model or get_task(task).default_model
        if model is None:
            raise ConfigError(f"task {task} has no default model: give --model")
        config = EvalConfig.create(out, dataset, split, task, model, codecs=codecs, weights=weights,
                                   batch_size=batch_size, device=device, limit=limit, offline=offline)
        planned = plan_eval(config)  # every check happens here, before any cluster starts
        if cluster_file:
            from .run.cluster import load_cluster_config

            if scheduler:
                raise ConfigError("give --cluster or --scheduler, not both")
            cluster = load_cluster_config(cluster_file)
    except ConfigError as exc:
        _fail(str(exc))
    start = time.perf_counter()
    try:
        if not planned.tasks or (workers == 0 and not scheduler and cluster is None):
            result = evaluate(config, progress=not no_progress, planned=planned)
        else:
            from .run.cluster import dask_executor

            with dask_executor(workers, scheduler, cluster=cluster, log=click.echo) as executor:
                result = evaluate(config, executor, progress=not no_progress, planned=planned)
    except ConfigError as exc:
        _fail(str(exc))
    click.echo(f"{len(planned.sets)} sets, {len(planned.todo)} to evaluate; shard units run {result.shards_run}, "
               f"already done {result.shards_cached}; {time.perf_counter() - start:.1f} s")
    _eval_summary(planned)
    for f in result.failed:
        click.echo(f"  FAILED {f}", err=True)
    if result.failed:
        click.echo("some shards failed; rerun the same command to resume", err=True)
        sys.exit(1)


@cli.command()
@click.option("--out", default="shards", show_default=True, help="output folder")
@click.option("--workers", type=int, default=2, show_default=True, help="Dask worker processes (0: in-process)")
@click.option("--codec", "codecs", multiple=True, default=DEMO_CODECS, show_default=True)
@click.option("--no-report", is_flag=True, help="do not write the report at the end (print its command instead)")
def demo(out: str, workers: int, codecs: Sequence[str], no_report: bool) -> None:
    """Make a small ImageNet-layout sample from photographs shipped in scikit-image, transcode a sweep, report it."""
    from pathlib import Path

    from .demo import make_demo_imagenet

    root = make_demo_imagenet(Path(out) / "_demo_source" / "imagenet")
    click.echo(f"demo dataset: {root}")
    try:
        config = TranscodeConfig.create("imagenet", root, list(codecs), out=out, split="val", samples_per_shard=4)
    except ConfigError as exc:
        _fail(str(exc))
    run_config(config, workers, None)
    command = f"mpq report {out} --dataset imagenet --split val"
    if no_report:
        click.echo(f"next: {command}")
        return
    from .report import write_report

    try:
        folder = write_report(out, dataset="imagenet", split="val")
    except ConfigError as exc:
        _fail(str(exc))
    click.echo(f"report: {folder / 'report.html'}  (written by: {command})")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code instead of exiting when called from Python (tests)."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="mpq", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("interrupted; rerun the same command to resume", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted; rerun the same command to resume", err=True)
        return 130
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``mpq`` command: a thin click layer over the same config objects as the Python API."""
from __future__ import annotations

import sys
import time
from typing import Sequence

import click

from .run.config import DEFAULT_SAMPLES_PER_SHARD, TranscodeConfig
from .errors import ConfigError, OutputError


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
               + f"; shards written {result.shards_written}, already complete {result.shards_cached};"
               f" {seconds:.1f} s")
    for s in result.sets:
        click.echo(f"  {s.tag:<24} ok {s.ok:>7}  error {s.errors:>5}  shards {s.shards:>5}  "
                   f"{s.bytes / 1e6:9.2f} MB  {s.folder}")
    for f in result.failed:
        click.echo(f"  FAILED {f}", err=True)


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


@cli.command()
@click.argument("dataset")
@click.argument("root")
@click.option("--split", help="split to transcode (imagenet/ade20k: train or val; imagefolder: an output name, "
                              "default 'all'; hf: the dataset split, default 'train')")
@click.option("--codec", "codecs", multiple=True, required=True,
              help="codec setting 'name:key=value,...' (repeatable; 'jpeg:quality=5,10' sweeps); see `mpq codecs`")
@click.option("--out", default="shards", show_default=True, help="output folder")
@click.option("--workers", type=int, default=None,
              help="Dask worker processes on this machine [default: one per core]; 0 runs in this process")
@click.option("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)")
@click.option("--cluster", "cluster_file", default=None, type=click.Path(dir_okay=False),
              help="cluster configuration (cluster/local.yaml, slurm.yaml, kubernetes.yaml, scheduler.yaml); "
                   "--workers then overrides its worker count")
@click.option("--isolate", is_flag=True,
              help="encode in a child process per shard from the first attempt, so a codec that crashes its "
                   "process costs one sample (retried shards always do this)")
@click.option("--samples-per-shard", type=int, default=DEFAULT_SAMPLES_PER_SHARD, show_default=True)
@click.option("--limit", type=int, default=None, help="only the first N samples (in key order)")
@click.option("--ms-ssim", is_flag=True, help="also compute MS-SSIM per sample")
@click.option("--image-column", default=None, help="hf: image column [default: image]")
@click.option("--label-column", default=None, help="hf: integer label column (stored as .cls)")
@click.option("--hf-config", default=None, help="hf: dataset configuration name on the hub")
@click.option("--key-column", default=None, help="hf: column holding a unique id used as the sample key")
@click.option("--weights-dir", default=None, type=click.Path(file_okay=False),
              help="learned codecs: folder holding checkpoints [default: the torch hub cache]; sets MPQ_WEIGHTS_DIR")
@click.option("--offline", is_flag=True, help="learned codecs: never download weights (sets MPQ_OFFLINE=1)")
@click.option("--no-store-bin", is_flag=True, help="learned codecs: do not store the .bin bitstream")
@click.option("--no-store-png", is_flag=True, help="learned codecs: do not store the decoded .png")
@click.option("--pesq", is_flag=True, help="audio: wideband PESQ per sample (speech, at 16 kHz)")
@click.option("--stoi", is_flag=True, help="audio: STOI per sample (speech)")
@click.option("--store-decoded", is_flag=True, help="audio: also store the decoded signal as KEY.decoded.flac")
@click.option("--audio-column", default=None, help="hf: audio column (makes the dataset an audio dataset)")
@click.option("--encode-stems", is_flag=True, help="musdb: send the four stems through the codec too")
@click.option("--shard-compression", type=click.Choice(["none", "gzip"]), default="none", show_default=True,
              help="gzip: write deterministic .tar.gz shards (smaller at low rates: tar headers and padding "
                   "compress, the payload mostly does not; costs CPU and random access)")
@click.option("--max-pixels", type=int, default=None,
              help="images: refuse sources above this many pixels as error rows [default: 178956970]; "
                   "loaders then need MPQ_MAX_PIXELS at least as high")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def transcode(dataset: str, root: str, split: str | None, codecs: Sequence[str], out: str, workers: int | None,
              scheduler: str | None, cluster_file: str | None, isolate: bool, samples_per_shard: int,
              limit: int | None, ms_ssim: bool,
              image_column: str | None, label_column: str | None, hf_config: str | None, key_column: str | None,
              weights_dir: str | None, offline: bool, no_store_bin: bool, no_store_png: bool, pesq: bool,
              stoi: bool, store_decoded: bool, audio_column: str | None, encode_stems: bool,
              shard_compression: str, max_pixels: int | None, no_progress: bool) -> None:
    """Transcode DATASET stored at ROOT with one or more codec settings."""
    import os

    from .run.driver import check_output, plan

    if weights_dir:  # set before any worker starts, so local workers inherit it
        os.environ["MPQ_WEIGHTS_DIR"] = os.path.abspath(weights_dir)
    if offline:
        os.environ["MPQ_OFFLINE"] = "1"
    options = {"image_column": image_column, "label_column": label_column, "hf_config": hf_config,
               "key_column": key_column, "audio_column": audio_column, "encode_stems": encode_stems or None}
    try:
        config = TranscodeConfig.create(dataset, root, list(codecs), out=out, split=split,
                                        samples_per_shard=samples_per_shard, limit=limit, ms_ssim=ms_ssim,
                                        source_options=options, store_bitstream=not no_store_bin,
                                        store_reconstruction=not no_store_png, pesq=pesq, stoi=stoi,
                                        store_decoded=store_decoded,
                                        shard_compression=None if shard_compression == "none" else shard_compression,
                                        max_pixels=max_pixels)
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
              help="torchvision:NAME, timm:NAME, hf:NAME_OR_FOLDER, pocketsphinx, umxhq, umxl, htdemucs "
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
@click.option("--codec", "codecs", multiple=True,
              default=("jpeg:quality=5", "webp:quality=10", "avif:quality=30", "jxl:distance=3", "hevc:quality=30", "none"),
              show_default=True)
def demo(out: str, workers: int, codecs: Sequence[str]) -> None:
    """Make a small ImageNet-layout sample from photographs shipped in scikit-image and transcode it."""
    from pathlib import Path

    from .demo import make_demo_imagenet

    root = make_demo_imagenet(Path(out) / "_demo_source" / "imagenet")
    click.echo(f"demo dataset: {root}")
    try:
        config = TranscodeConfig.create("imagenet", root, list(codecs), out=out, split="val", samples_per_shard=4)
    except ConfigError as exc:
        _fail(str(exc))
    run_config(config, workers, None)


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

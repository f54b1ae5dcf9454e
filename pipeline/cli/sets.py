"""``mpq report`` and ``mpq verify``: read the finished sets under an output folder."""
from __future__ import annotations

import os

import click

from ..errors import ConfigError, OutputError
from ..store.storage import is_url
from .base import cli, exit_now, fail, output_failed


@cli.command()
@click.argument("out")
@click.option("--dataset", default=None, help="only this dataset [default: every dataset under OUT]")
@click.option("--split", default=None, help="only this split [default: every split]")
@click.option("--out", "report_dir", default=None,
              help="report folder, or a URL to write it into a store [default: OUT/_report; for a remote OUT "
                   "(s3://...): _report in the current folder]")
@click.option("--anchor", default=None,
              help="codec family the BD-rates are measured against [default: jpeg where present]")
@click.option("--breakdown-shards", type=int, default=1, show_default=True,
              help="tar files per setting whose headers are read for the storage breakdown (0: none, -1: all)")
def report(out: str, dataset: str | None, split: str | None, report_dir: str | None, anchor: str | None,
           breakdown_shards: int) -> None:
    """Rate-distortion report of the finished sets under OUT: tables, RD plots, BD-rates, storage."""
    from ..report import write_report

    try:
        folder = write_report(out, dataset=dataset, split=split, report_dir=report_dir, anchor=anchor,
                              breakdown_shards=None if breakdown_shards < 0 else breakdown_shards)
    except ConfigError as exc:
        fail(str(exc))
    except OutputError as exc:
        output_failed(exc)
    html = f"{folder}/report.html" if is_url(str(folder)) else os.path.join(folder, "report.html")
    click.echo(f"report: {html}  (also report.md, summary.csv, bdrate.csv, plots) in {folder}")


@cli.command()
@click.argument("out")
@click.option("--dataset", default=None, help="only this dataset [default: every dataset under OUT]")
@click.option("--split", default=None, help="only this split [default: every split]")
@click.option("--sources", default=None,
              help="source root: also rehash every sample's source and compare it with its recorded source_sha256")
def verify(out: str, dataset: str | None, split: str | None, sources: str | None) -> None:
    """Check the finished sets under OUT without writing: shards, manifests, and (--sources) the sources.

    Lists what is stale or damaged and exits with 1 when anything is (0 when clean), also when
    a library's native threads are still alive at the end (see :func:`~pipeline.cli.base.exit_now`).
    """
    from ..store.verify import verify_output

    try:
        report = verify_output(out, dataset=dataset, split=split, sources=sources)
    except ConfigError as exc:
        fail(str(exc))
    for problem in report.problems:
        click.echo(f"  {problem}")
    checked = f"{report.sets} sets, {report.shards} shards" + (
        f", {report.sources_checked} sources rehashed" if sources else "")
    if not report.clean:
        click.echo(f"{len(report.problems)} problems in {checked}", err=True)
        exit_now(1)
    click.echo(f"clean: {checked}")
    exit_now(0)

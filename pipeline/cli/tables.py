"""``mpq codecs``, ``datasets``, ``spec`` and ``decode``: what the registries hold, as text or the README's tables."""
from __future__ import annotations

import click

from ..errors import ConfigError
from .base import cli, fail


def codec_table(modality: str | None = None) -> str:
    """The Markdown codec table of the README, generated from the registry (a test keeps them equal)."""
    from ..codecs import codec_names, get_codec
    from ..codecs.spec import format_value

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
    from ..sources import get_source, source_names

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
    from ..codecs import codec_names, get_codec

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
    from ..sources import get_source, source_names

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
@click.option("--weights-dir", default=None, type=click.Path(file_okay=False),
              help="folder holding the checkpoint [default: $MPQ_WEIGHTS_DIR, else the torch hub cache]")
def decode(file: str, output: str, device: str | None, weights_dir: str | None) -> None:
    """Decode a learned codec's stored bitstream (FILE.bin, e.g. taken out of a shard) to a PNG.

    A FILE.json beside it (the sample's record) is read to warn when the device or library versions
    differ from the encoder's: learned codecs may decode differently across devices. A researcher's
    own checkpoint (``compressai:``) is found by the hash the stream names in the weights folder,
    else at the path the record's ``codec`` names.
    """
    import dataclasses
    import os

    from ..codecs.bitstream import decode_to_png
    from ..codecs.runtime import CodecRuntime, use

    runtime = CodecRuntime.from_env()
    if weights_dir is not None:
        runtime = dataclasses.replace(runtime, weights_dir=os.path.abspath(os.path.expanduser(weights_dir)))
    try:
        with use(runtime):
            rgb = decode_to_png(file, output, device=device)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    click.echo(f"{output}: {rgb.shape[1]}x{rgb.shape[0]}")


@cli.command()
@click.argument("spec")
def spec(spec: str) -> None:
    """Show the canonical form and folder tag of a codec setting (sweeps expand)."""
    from ..codecs.spec import parse_specs

    try:
        for s in parse_specs(spec):
            click.echo(f"{s.canonical}\t{s.tag}")
    except ConfigError as exc:
        fail(str(exc))

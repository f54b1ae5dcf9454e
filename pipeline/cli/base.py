"""The ``mpq`` group and what every command shares: one-line failures with their exit codes, ``main``."""
from __future__ import annotations

import os
import sys
from typing import NoReturn, Sequence

import click

#: True while ``main`` runs as the process's own command (``mpq``, ``python -m pipeline``), not called from Python
_process_entry = False


def fail(message: str) -> NoReturn:
    """A refused command: one line on stderr, exit code 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def output_failed(exc: Exception) -> NoReturn:
    """An output location that cannot be written: one line, exit code 1 (a rerun resumes)."""
    click.echo(f"error: {exc}; nothing partial is left under a final name, rerun to resume once it is writable",
               err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpq-pipeline")
def cli() -> None:
    """Re-encode datasets with lossy codecs into per-codec WebDataset shards with exact bitrates."""


def exit_now(code: int) -> NoReturn:
    """End a read-only command with ``code``, whatever native threads its checks started.

    A library's native thread pool (Arrow's parquet readers, a codec's) still alive when the
    interpreter tears down aborts the process ("terminate called without an active exception",
    exit 134) on some machines, replacing the exit code. A command that wrote nothing has nothing
    to clean up: as the process's own command it flushes its output and leaves at once
    (``os._exit``); called from Python it raises SystemExit as usual.
    """
    if _process_entry:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code instead of exiting when called from Python (tests)."""
    global _process_entry
    _process_entry = argv is None  # the console script and ``python -m pipeline`` pass no arguments
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

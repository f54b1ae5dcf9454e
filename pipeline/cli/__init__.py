"""The ``mpq`` command, the last stage: a thin click layer over the same config objects as the Python API.

One module per command group registers its commands on the :func:`cli` group; importing this
package registers them all, so ``pipeline.cli:main`` (the ``mpq`` entry point) sees every command.
"""
from __future__ import annotations

from .base import cli, main
from .evaluation import eval_
from .sets import report, verify
from .tables import codec_table, codecs, dataset_table, datasets, decode, spec
from .transcoding import DEMO_CODECS, demo, run_config, transcode

__all__ = ["DEMO_CODECS", "cli", "codec_table", "codecs", "dataset_table", "datasets", "decode", "demo", "eval_",
           "main", "report", "run_config", "spec", "transcode", "verify"]

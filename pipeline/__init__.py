"""mpq-pipeline: re-encode ML datasets with lossy codecs into per-codec WebDataset shards."""
from __future__ import annotations

__version__ = "0.1.0"

from .run.config import TranscodeConfig  # noqa: E402
from .errors import ConfigError, SampleError  # noqa: E402
from .codecs.spec import CodecSpec, parse_spec, parse_specs  # noqa: E402


def transcode(config: TranscodeConfig, executor=None, *, progress=False):
    """Run a transcode (see :func:`pipeline.run.driver.transcode`)."""
    from .run.driver import transcode as _transcode

    return _transcode(config, executor, progress=progress)


__all__ = ["CodecSpec", "ConfigError", "SampleError", "TranscodeConfig", "parse_spec", "parse_specs",
           "transcode", "__version__"]

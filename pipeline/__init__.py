"""mpq-pipeline: re-encode ML datasets with lossy codecs into per-codec WebDataset shards."""
from __future__ import annotations

from .codecs.spec import CodecSpec, parse_spec, parse_specs
from .errors import ConfigError, SampleError
from .run.config import TranscodeConfig
from .version import __version__


def transcode(config: TranscodeConfig, executor=None, *, progress=False):
    """Run a transcode (see :func:`pipeline.run.driver.transcode`)."""
    from .run.driver import transcode as _transcode

    return _transcode(config, executor, progress=progress)


__all__ = ["CodecSpec", "ConfigError", "SampleError", "TranscodeConfig", "parse_spec", "parse_specs",
           "transcode", "__version__"]

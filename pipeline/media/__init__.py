"""Source media into arrays: the one documented conversion of image bytes to RGB pixels and of audio
bytes to exact samples, used by modalities, codecs and loaders alike.
"""
from __future__ import annotations

#: Images above this many pixels are refused as decompression bombs (Pillow's own default is 89 M):
#: the one limit of writer and loaders. ``--max-pixels`` (``TranscodeConfig.max_pixels``) sets another
#: for a run, ``$MPQ_MAX_PIXELS`` for the loaders.
MAX_PIXELS = 178_956_970

"""Any folder of audio files; with one subfolder per class (and no audio at the top) the subfolder is the label.

The layout rules are imagefolder's (:mod:`pipeline.sources.folder`); only the file types differ.
"""
from __future__ import annotations

from .folder import FolderSource
from . import register

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .mp3 .ogg .oga .opus .m4a .aac .mp4 .aif .aiff .aifc .au .snd .caf .wv .w64 .mka .wma .ac3"
    .split()
)


@register
class AudioFolder(FolderSource):
    name = "audiofolder"
    modality = "audio"
    extensions = AUDIO_EXTENSIONS
    what = "audio files"
    summary = "any folder of audio files, optionally one subfolder per class (label = sorted class index)"

"""Any folder of audio files; with one subfolder per class (and no audio at the top) the subfolder is the label.

The layout rules are imagefolder's (:mod:`pipeline.sources.imagefolder`); only the file types differ.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .base import RawSample, SampleRef, Source, finalize, read_file, sanitize_key
from . import register

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .mp3 .ogg .oga .opus .m4a .aac .mp4 .aif .aiff .aifc .au .snd .caf .wv .w64 .mka .wma .ac3"
    .split()
)


@register
class AudioFolder(Source):
    name = "audiofolder"
    modality = "audio"
    splits = None
    default_split = "all"
    summary = "any folder of audio files, optionally one subfolder per class (label = sorted class index)"

    def __init__(self, root, split=None, **options):
        super().__init__(root, split, **options)
        self.skipped = 0  # files that are not audio, counted by list()

    def _visible(self, root: Path, f: Path) -> bool:
        return not any(part.startswith(".") for part in f.relative_to(root).parts)

    def classes(self) -> list[str] | None:
        root = Path(self.root)
        top_audio = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS]
        dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return dirs if dirs and not top_audio else None

    def list(self) -> list[SampleRef]:
        root = Path(self.root)
        if not root.is_dir():
            raise ConfigError(f"audiofolder: root {root} is not a folder")
        classes = self.classes()
        index = {c: i for i, c in enumerate(classes or [])}
        refs, skipped = [], 0
        for f in sorted(root.rglob("*")):
            if not f.is_file() or not self._visible(root, f):
                continue
            if f.suffix.lower() not in AUDIO_EXTENSIONS:
                skipped += 1
                continue
            rel = f.relative_to(root)
            cls = rel.parts[0] if classes is not None and len(rel.parts) > 1 else None
            meta = (("path", str(f)),) + ((("class_name", cls),) if cls is not None else ())
            refs.append(SampleRef(sanitize_key(str(rel.with_suffix(""))), str(rel),
                                  index.get(cls) if cls is not None else None, meta))
        self.skipped = skipped
        if not refs:
            raise ConfigError(f"audiofolder: no audio files under {root} ({skipped} other files)")
        return finalize(refs)

    def read(self, ref: SampleRef) -> RawSample:
        data = read_file(Path(ref.get("path")))
        attachments, fields = {}, {}
        if ref.label is not None:
            attachments["cls"] = str(ref.label).encode()
            fields = {"label": ref.label, "class_name": ref.get("class_name")}
        return RawSample(data, attachments, fields)

    def label_fields(self, ref: SampleRef) -> dict:
        return {} if ref.label is None else {"label": ref.label, "class_name": ref.get("class_name")}

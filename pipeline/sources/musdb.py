"""MUSDB18-HQ (``<split>/<track>/{mixture,drums,bass,other,vocals}.wav``) and MUSDB18
(``<split>/<track>.stem.mp4``, five AAC streams: mixture, drums, bass, other, vocals).

The mixture is the sample's signal and goes through the codec. The four stems are stored
losslessly as ``{key}.{stem}.flac`` references: exactly the WAV samples for MUSDB18-HQ, and for
MUSDB18 the decoded AAC quantized to 24 bits like the mixture (see :mod:`pipeline.media.audio`).
With the option ``encode_stems`` the stems also go through the codec (``{key}.{stem}.{ext}``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, SampleError
from ..values import parse_bool
from .base import RawSample, SampleRef, Source, SourceOption, file_stamp, read_file, sanitize_key
from .listing import Listing, ListingBuilder
from ..store.index import Field, attachment, record
from . import register

STEMS = ("drums", "bass", "other", "vocals")
STREAMS = ("mixture", *STEMS)  # stream order of a .stem.mp4
STEM_SUFFIX = ".stem.mp4"
_HQ_FILES = tuple(f"{s}.wav" for s in STREAMS)


@dataclass
class TrackedSample(RawSample):
    """A sample with further signals the audio modality codes alongside the main one (name -> file bytes)."""

    tracks: dict[str, bytes] = field(default_factory=dict)


@register
class MUSDB(Source):
    name = "musdb"
    modality = "audio"
    splits = ("train", "test")
    summary = "MUSDB18-HQ (WAV folders) or MUSDB18 (.stem.mp4): mixture coded, stems kept as FLAC"
    options = (SourceOption("encode_stems", "send the four stems through the codec too", flag=True),)
    payload_name = "mixture"

    def __init__(self, root, split=None, **options):
        super().__init__(root, split, **options)
        self.encode_stems = parse_bool(self.opts.get("encode_stems", False), what="musdb: option encode_stems")
        self.opts["encode_stems"] = self.encode_stems

    def fields(self) -> tuple[Field, ...]:
        """The lossless stems as named signals (``sample["stems"]``) and the track name."""
        return (*(attachment(stem, f"{stem}.flac", "audio", "flac", "stems") for stem in STEMS),
                *super().fields(), record("track", "text"))

    def tracks(self) -> tuple[str, ...]:
        return tuple(STEMS) if self.encode_stems else ()

    def list(self) -> Listing:
        folder = Path(self.root) / self.split
        if not folder.is_dir():
            raise ConfigError(f"musdb: no {self.split} folder under {self.root} (expected <root>/{self.split}/"
                              f"<track>/mixture.wav or <root>/{self.split}/<track>{STEM_SUFFIX})")
        builder = ListingBuilder(("layout", "track"), path_base=self.root)
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for p in entries:
            if p.name.startswith("."):
                continue
            if p.is_dir() and os.path.isfile(os.path.join(p.path, "mixture.wav")):
                track, layout = p.name, "hq"
                with os.scandir(p.path) as files:  # the mixture and the four stems it reads
                    stats = {e.name: e.stat() for e in files if e.name in _HQ_FILES}
                stamp = ";".join(file_stamp(stats[n]) if n in stats else f"{n}=-" for n in _HQ_FILES)
            elif p.is_file() and p.name.endswith(STEM_SUFFIX):
                track, layout, stamp = p.name[: -len(STEM_SUFFIX)], "stem", file_stamp(p.stat())
            else:
                continue
            builder.add(sanitize_key(track), f"{self.split}/{p.name}", None, stamp, layout=layout, track=track)
        if not len(builder):
            raise ConfigError(f"musdb: no tracks under {folder} (neither <track>/mixture.wav nor *{STEM_SUFFIX})")
        return builder.build()

    def read(self, ref: SampleRef) -> RawSample:
        from ..media.audio import decode_audio, flac_bytes

        path = Path(ref.get("path"))
        if ref.get("layout") == "hq":
            data = read_file(path / "mixture.wav")
            mixture = decode_audio(data)
            stems = {}
            for stem in STEMS:
                audio = decode_audio(read_file(path / f"{stem}.wav"))
                if audio.rate != mixture.rate or audio.samples.shape != mixture.samples.shape:
                    raise SampleError(f"{stem}.wav has {audio.samples.shape} at {audio.rate} Hz, mixture.wav "
                                      f"{mixture.samples.shape} at {mixture.rate} Hz")
                stems[stem] = flac_bytes(audio)
        else:
            import av

            data = read_file(path)
            try:
                with av.open(path) as container:
                    count = len(container.streams.audio)
            except av.error.FFmpegError as exc:
                raise SampleError(f"cannot open {path.name}: {exc}") from None
            if count != len(STREAMS):
                raise SampleError(f"{path.name} has {count} audio streams, a stem file has {len(STREAMS)} "
                                  f"({', '.join(STREAMS)})")
            mixture = decode_audio(data, stream=0)
            stems = {}
            for i, stem in enumerate(STEMS, 1):
                audio = decode_audio(data, stream=i)
                if audio.rate != mixture.rate or audio.samples.shape != mixture.samples.shape:
                    raise SampleError(f"stream {i} ({stem}) has {audio.samples.shape} at {audio.rate} Hz, the "
                                      f"mixture {mixture.samples.shape} at {mixture.rate} Hz")
                stems[stem] = flac_bytes(audio)
        attachments = {f"{stem}.flac": stems[stem] for stem in STEMS}
        fields = {"track": ref.get("track"), "stems": list(STEMS), "stems_coded": self.encode_stems}
        if self.encode_stems:
            return TrackedSample(data, attachments, fields, tracks=dict(stems))
        return RawSample(data, attachments, fields)

    def label_fields(self, ref: SampleRef) -> dict:
        return {"track": ref.get("track")}

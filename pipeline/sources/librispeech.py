"""LibriSpeech: ``LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac`` with one
``<speaker>-<chapter>.trans.txt`` per chapter (``<utterance id> <TRANSCRIPT>`` per line).

The split is the subset's name. The root may be the folder holding ``LibriSpeech``, the
``LibriSpeech`` folder itself, or the subset folder. Each sample carries its transcript (as a
``.txt`` member and in the ``.json``), speaker and chapter ids.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, SampleError
from .base import RawSample, SampleRef, Source, file_stamp, read_file, text_stamp
from .listing import Listing, ListingBuilder
from ..store.index import Field, attachment, record
from . import register

SUBSETS = ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100", "train-clean-360",
           "train-other-500")


def read_transcripts(path: Path) -> dict[str, str]:
    """``utterance id -> transcript`` from a ``.trans.txt`` file."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        utt, _, text = line.partition(" ")
        if not text.strip():
            raise ConfigError(f"librispeech: {path.name} line {number} has no transcript: {line!r}")
        if utt in out:
            raise ConfigError(f"librispeech: {path.name} lists {utt} twice")
        out[utt] = text.strip()
    return out


@register
class LibriSpeech(Source):
    name = "librispeech"
    modality = "audio"
    splits = SUBSETS
    summary = "LibriSpeech read speech (FLAC, 16 kHz) with transcripts, speaker and chapter ids; split = subset"

    def fields(self) -> tuple[Field, ...]:
        """The transcript (a ``.txt`` member, and in each view's record), speaker and chapter ids."""
        return (record("transcript", "text", view=True), attachment("transcript", "txt", "text", "text"),
                *super().fields(), record("speaker_id", "int"), record("chapter_id", "int"))

    def subset_dir(self) -> Path:
        root = Path(self.root)
        for candidate in (root / "LibriSpeech" / self.split, root / self.split, root):
            if candidate.is_dir() and candidate.name == self.split:
                return candidate
        raise ConfigError(f"librispeech: no {self.split} folder under {root} (expected LibriSpeech/{self.split}/"
                          f"<speaker>/<chapter>/*.flac)")

    def list(self) -> Listing:
        subset = self.subset_dir()
        builder = ListingBuilder(("speaker_id", "chapter_id", "transcript", "trans_file"), path_base=str(subset.parent))
        for speaker in sorted(p for p in subset.iterdir() if p.is_dir()):
            for chapter in sorted(p for p in speaker.iterdir() if p.is_dir()):
                if not (speaker.name.isdigit() and chapter.name.isdigit()):
                    raise ConfigError(f"librispeech: {chapter.relative_to(subset)} is not <speaker>/<chapter> "
                                      f"(numeric folder names)")
                trans = chapter / f"{speaker.name}-{chapter.name}.trans.txt"
                texts = read_transcripts(trans) if trans.is_file() else {}
                with os.scandir(chapter) as it:
                    flacs = sorted((e for e in it if e.name.endswith(".flac")), key=lambda e: e.name)
                for flac in flacs:
                    utt = flac.name[: -len(".flac")]
                    if not utt.startswith(f"{speaker.name}-{chapter.name}-"):
                        raise ConfigError(f"librispeech: {flac.name} is not named {speaker.name}-{chapter.name}-N")
                    # the stamp: the FLAC's stat, and the transcript line (already read), so editing one
                    # line redoes only the shard holding that utterance
                    stamp = file_stamp(flac.stat()) + ";" + text_stamp("text", texts.get(utt))
                    builder.add(utt, f"{self.split}/{speaker.name}/{chapter.name}/{flac.name}", None, stamp,
                                speaker_id=int(speaker.name), chapter_id=int(chapter.name),
                                transcript=texts.get(utt), trans_file=trans.name)
        if not len(builder):
            raise ConfigError(f"librispeech: no .flac files under {subset}")
        return builder.build()

    def read(self, ref: SampleRef) -> RawSample:
        text = ref.get("transcript")
        if text is None:
            raise SampleError(f"no transcript for {ref.key} in {ref.get('trans_file')}")
        data = read_file(Path(ref.get("path")))
        return RawSample(data, {"txt": text.encode("utf-8")}, self.label_fields(ref))

    def label_fields(self, ref: SampleRef) -> dict:
        return {"speaker_id": ref.get("speaker_id"), "chapter_id": ref.get("chapter_id"),
                "transcript": ref.get("transcript")}

"""PocketSphinx: the en-us model shipped inside its wheel, so speech recognition works with no network."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

from . import register_model
from .base import ModelKind

RATE = 16000  # the en-us acoustic model's sample rate


def tree_sha256(folder: Path) -> str:
    """SHA-256 over a model folder: each file's relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(x for x in folder.rglob("*") if x.is_file()):
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


@register_model
class PocketSphinx(ModelKind):
    name = "pocketsphinx"
    tasks = ("asr",)
    named = False
    library = "pocketsphinx"
    uses_torch = False

    @classmethod
    def preflight(cls, config: Any) -> dict[str, Any]:
        from pocketsphinx import get_model_path

        cls.check(config)
        folder = Path(get_model_path()) / "en-us"
        if not folder.is_dir():
            from .base import missing

            raise missing(folder, "pocketsphinx (its en-us model)")
        return {"name": config.model.canonical, "kind": cls.name, "library": cls.library, "version": cls.version(),
                "weights": str(folder), "weights_sha256": tree_sha256(folder)}

    @classmethod
    def load(cls, config: Any) -> Any:
        return _Sphinx()


class _Sphinx:
    def __init__(self):
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=RATE, loglevel="FATAL")

    def transcribe(self, items: Sequence[tuple[Any, int]]) -> list[str]:
        import numpy as np
        import soxr

        out = []
        for audio, rate in items:
            x = np.asarray(audio, dtype=np.float32)
            if rate != RATE:
                x = soxr.resample(x, rate, RATE)
            pcm = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            out.append(hyp.hypstr if hyp is not None else "")
        return out

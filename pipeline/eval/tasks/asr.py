"""Speech recognition: word errors per utterance after one normalization, corpus WER from their sums.

Two normalizations, chosen per run (``--normalizer``) and recorded in the result JSON:

- ``basic`` (default; the figures of pocketsphinx and CTC models): lower case; every dash (Unicode
  category Pd: hyphen-minus, hyphen, en and em dashes) becomes a space, so "well-known" is the two words
  "well known"; remaining punctuation removed; spaces collapsed.
- ``whisper``: the Whisper English normalizer (``whisper_normalizer.english.EnglishTextNormalizer``,
  the one of the Whisper paper and the public ASR leaderboards: spelling variants, numbers, fillers,
  contractions), then split on spaces.
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

from ...errors import ConfigError
from . import register_task
from .base import Task, as_numpy, counted_rows

NORMALIZERS = ("basic", "whisper")
NORMALIZATION = ("lower case; every dash (Unicode category Pd, e.g. '-') becomes a space; remove the other "
                 "punctuation (jiwer.RemovePunctuation: Unicode category P); collapse runs of spaces; strip; "
                 "split on spaces")
WHISPER_NORMALIZATION = ("the Whisper English text normalizer (whisper_normalizer.english.EnglishTextNormalizer, "
                         "as in the Whisper paper and the open ASR leaderboards); split on spaces")


def _dashes_to_spaces(text: str) -> str:
    return "".join(" " if unicodedata.category(c) == "Pd" else c for c in text)


@lru_cache(maxsize=None)
def _text_normalizer(name: str) -> Callable[[str], str]:
    """The string-to-string part of a normalization (before splitting into words)."""
    if name == "basic":
        import jiwer

        rest = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                              jiwer.Strip()])
        return lambda text: rest(_dashes_to_spaces(text))
    if name == "whisper":
        try:
            from whisper_normalizer.english import EnglishTextNormalizer
        except ImportError as exc:
            raise ConfigError("--normalizer whisper needs the whisper-normalizer package (pip install "
                              "'mpq-pipeline[eval]')") from exc
        return EnglishTextNormalizer()
    raise ConfigError(f"unknown normalizer {name!r}; known: {', '.join(NORMALIZERS)}")


def words(text: str, normalizer: str = "basic") -> list[str]:
    """The normalized words of one text."""
    return _text_normalizer(normalizer)(text).split()


def normalize(normalizer: str = "basic"):
    """A jiwer transform applying ``normalizer`` (for jiwer's and torchmetrics' own figures in tests)."""
    import jiwer

    class _Normalize(jiwer.AbstractTransform):
        def process_string(self, s: str) -> str:
            return " ".join(words(s, normalizer))

    return jiwer.Compose([_Normalize(), jiwer.ReduceToListOfListOfWords()])


def word_errors(reference: str, hypothesis: str, normalizer: str = "basic") -> dict[str, int]:
    """Substitutions, deletions, insertions and reference words of one utterance (jiwer.process_words)."""
    import jiwer

    ref, hyp = words(reference, normalizer), words(hypothesis, normalizer)
    if not ref:
        raise ValueError("empty reference after normalization")
    if not hyp:  # jiwer refuses an empty hypothesis: all deletions
        return {"substitutions": 0, "deletions": len(ref), "insertions": 0, "ref_words": len(ref)}
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return {"substitutions": out.substitutions, "deletions": out.deletions, "insertions": out.insertions,
            "ref_words": out.substitutions + out.deletions + out.hits}


def _wer_definition(normalization: str) -> str:
    return ("sum over counted samples of (substitutions + deletions + insertions) / sum of reference words, "
            f"after normalizing reference and hypothesis alike: {normalization}; counted: ok samples, and "
            "failed or missing samples, whose every reference word counts as deleted")


@register_task
class ASR(Task):
    name = "asr"
    requires = ("audio", "transcript")
    default_model = "pocketsphinx"
    primary = "wer"
    higher_is_better = False
    normalizer: str = "basic"
    definitions = {"wer": _wer_definition(NORMALIZATION)}

    @classmethod
    def bind(cls, config: Any) -> type[Task]:
        """The task with the run's normalizer (its definition goes into the result JSON)."""
        name = getattr(config, "normalizer", "basic")
        if name == cls.normalizer:
            return cls
        _text_normalizer(name)  # unknown or not installed: refused before any work
        how = WHISPER_NORMALIZATION if name == "whisper" else NORMALIZATION
        return type(cls.__name__, (cls,), {"normalizer": name, "definitions": {"wer": _wer_definition(how)}})

    @classmethod
    def columns(cls) -> list[tuple[str, Any]]:
        import pyarrow as pa

        return [("reference", pa.string()), ("hypothesis", pa.string()), ("substitutions", pa.int64()),
                ("deletions", pa.int64()), ("insertions", pa.int64()), ("ref_words", pa.int64())]

    def prepare(self, sample: Mapping[str, Any]) -> tuple[Any, int, str]:
        text = sample.get("transcript")
        if not text:
            raise ValueError("no transcript")
        audio = as_numpy(sample["audio"])
        return audio.mean(axis=0) if audio.ndim == 2 else audio, int(sample["sample_rate"]), str(text)

    def run(self, model: Any, items: Sequence[tuple[Any, int, str]]) -> list[dict[str, Any]]:
        hyps = model.transcribe([(a, r) for a, r, _ in items])
        return [{"reference": ref, "hypothesis": hyp, **word_errors(ref, hyp, self.normalizer)}
                for (_, _, ref), hyp in zip(items, hyps)]

    @classmethod
    def failure_row(cls, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Every reference word deleted (no hypothesis)."""
        text = sample.get("transcript")
        if not text:
            raise ValueError("the reference sample has no transcript")
        return {"reference": str(text), "hypothesis": None, **word_errors(str(text), "", cls.normalizer)}

    @classmethod
    def aggregate(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        good = counted_rows(rows, "ref_words")
        ref_words = sum(int(r["ref_words"]) for r in good)
        edits = sum(int(r["substitutions"]) + int(r["deletions"]) + int(r["insertions"]) for r in good)
        return {"wer": edits / ref_words if ref_words else None, "ref_words": ref_words, "edits": edits}

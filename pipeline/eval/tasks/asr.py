"""Speech recognition: word errors per utterance after one normalization, corpus WER from their sums."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from . import register_task
from .base import Task, as_numpy, counted_rows

NORMALIZATION = ("lower case; remove punctuation (jiwer.RemovePunctuation: Unicode category P); "
                 "collapse runs of spaces; strip; split on spaces")


def normalize():
    """The one transform applied to references and hypotheses (see :data:`NORMALIZATION`)."""
    import jiwer

    return jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])


def word_errors(reference: str, hypothesis: str) -> dict[str, int]:
    """Substitutions, deletions, insertions and reference words of one utterance (jiwer.process_words)."""
    import jiwer

    t = normalize()
    if not " ".join(t(reference)[0]).strip():
        raise ValueError("empty reference after normalization")
    if not " ".join(t(hypothesis)[0]).strip():  # jiwer refuses an empty hypothesis: all deletions
        return {"substitutions": 0, "deletions": len(t(reference)[0]), "insertions": 0,
                "ref_words": len(t(reference)[0])}
    out = jiwer.process_words(reference, hypothesis, reference_transform=t, hypothesis_transform=t)
    return {"substitutions": out.substitutions, "deletions": out.deletions, "insertions": out.insertions,
            "ref_words": out.substitutions + out.deletions + out.hits}


@register_task
class ASR(Task):
    name = "asr"
    requires = ("audio", "transcript")
    default_model = "pocketsphinx"
    primary = "wer"
    higher_is_better = False
    definitions = {
        "wer": "sum over counted samples of (substitutions + deletions + insertions) / sum of reference words, "
               f"after normalizing reference and hypothesis alike: {NORMALIZATION}; counted: ok samples, and "
               "failed or missing samples, whose every reference word counts as deleted",
    }

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
        return [{"reference": ref, "hypothesis": hyp, **word_errors(ref, hyp)} for (_, _, ref), hyp in zip(items, hyps)]

    @classmethod
    def failure_row(cls, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Every reference word deleted (no hypothesis)."""
        text = sample.get("transcript")
        if not text:
            raise ValueError("the reference sample has no transcript")
        return {"reference": str(text), "hypothesis": None, **word_errors(str(text), "")}

    @classmethod
    def aggregate(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        good = counted_rows(rows, "ref_words")
        words = sum(int(r["ref_words"]) for r in good)
        edits = sum(int(r["substitutions"]) + int(r["deletions"]) + int(r["insertions"]) for r in good)
        return {"wer": edits / words if words else None, "ref_words": words, "edits": edits}

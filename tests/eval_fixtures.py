"""Builders and helpers for the evaluation tests (tests/eval/): spoken LibriSpeech, transcodes, parts."""
from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import audio_fixtures as afx

#: sentences pocketsphinx recognises well in espeak-ng's en-us+f2 voice at 130 words per minute
SENTENCES = ("I want to go home", "The weather is nice today", "He said that he would call me tomorrow",
             "Thank you very much")


def run_transcode(dataset: str, root: Path, out: Path, split: str, codecs: tuple[str, ...], per_shard: int = 2,
                  **options):
    from pipeline import TranscodeConfig
    from pipeline.run.driver import transcode

    config = TranscodeConfig.create(dataset, root, list(codecs), out=out, split=split, samples_per_shard=per_shard,
                                    source_options=options)
    result = transcode(config)
    assert not result.failed, result.failed
    return result


def build_spoken_librispeech(root: Path, subset: str = "dev-clean") -> dict[str, str]:
    """A LibriSpeech layout whose utterances are espeak-ng readings of :data:`SENTENCES`."""
    import soundfile as sf
    import soxr

    folder = root / "LibriSpeech" / subset / "84" / "121123"
    folder.mkdir(parents=True)
    texts, lines = {}, []
    for i, text in enumerate(SENTENCES):
        key = f"84-121123-{i:04d}"
        wav = root / f"{key}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us+f2", "-s", "130", "-w", str(wav), text], check=True)
        x, rate = sf.read(wav, dtype="float32")
        y = soxr.resample(x, rate, afx.SPEECH_RATE)
        sf.write(folder / f"{key}.flac", afx.to_int16(y), afx.SPEECH_RATE, format="FLAC")
        lines.append(f"{key} {text.upper()}")
        texts[key] = text.upper()
    (folder / "84-121123.trans.txt").write_text("\n".join(lines) + "\n")
    return texts


def corrupt_member(shard: Path, key: str, ext: str) -> None:
    """Overwrite the first 16 bytes of one member in place (tar headers stay valid; decoding fails)."""
    with tarfile.open(shard) as tar:
        member = tar.getmember(f"{key}.{ext}")
        offset = member.offset_data
    with open(shard, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * 16)


def part_mtimes(folder: Path) -> dict[str, int]:
    """Modification times of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def rows_of(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def fresh_copy(out: Path, dst: Path) -> Path:
    """A private copy of finished sets without any evaluation results (tests share session sets)."""
    import shutil

    shutil.copytree(out, dst, ignore=shutil.ignore_patterns("eval", "_report"))
    return dst


def classify_loss_tolerance(out: Path, weights: Path, codec: str = "none") -> float:
    """How far two float32 runs of the fixture's resnet18 over one set may put a sample's loss apart:
    twice the logits' float32 error (the cross-entropy moves by at most that), measured here against
    float64 on the set's own images (see tests/tolerance.py)."""
    import torch
    import torchvision

    import tolerance
    from pipeline.loaders import load

    net = torchvision.models.get_model("resnet18", weights=None, num_classes=1000)
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    tf = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    inputs = torch.stack([tf(s["image"]) for s in load(str(out), "imagenet", "val", codec)])
    with torch.inference_mode():
        scale = float(net(inputs).abs().max())
    return 2 * tolerance.bound(tolerance.float32_error(net, lambda m, x: m(x), inputs), scale)

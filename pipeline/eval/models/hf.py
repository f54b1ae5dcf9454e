"""Hugging Face transformers models (classify, segment, asr): a hub id or a ``save_pretrained`` folder.

Hub ids are read from the Hugging Face cache; with ``--offline`` nothing is downloaded
(``local_files_only=True``) and a model missing from the cache stops the run before any work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, cast

from ...errors import ConfigError
from . import register_model
from .base import ModelKind, missing, torch_device

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def cached_file(repo: str, filename: str, offline: bool, what: str) -> Path | None:
    """The cached file of a hub repository; None when it is not cached and may be downloaded."""
    from huggingface_hub import constants, try_to_load_from_cache

    got = try_to_load_from_cache(repo, filename)
    if isinstance(got, str):
        return Path(got)
    if offline:
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        raise missing(folder / filename, what)
    return None


@register_model
class HuggingFace(ModelKind):
    name = "hf"
    tasks = ("classify", "segment", "asr")
    library = "transformers"

    @classmethod
    def weights_file(cls, config: Any) -> Path | None:
        name = config.model.name
        if Path(name).is_dir():
            for f in WEIGHT_FILES:
                if (Path(name) / f).is_file():
                    return Path(name) / f
            raise ConfigError(f"{name}: no {' or '.join(WEIGHT_FILES)} in this folder")
        if config.weights:
            raise ConfigError("--weights applies to torchvision, timm and separators; an hf model is a folder")
        for f in WEIGHT_FILES:
            try:
                got = cached_file(name, f, False, config.model.canonical)
            except Exception:  # noqa: BLE001 - a name that is not a repository id
                got = None
            if got is not None:
                return got
        if config.offline:
            cached_file(name, WEIGHT_FILES[0], True, config.model.canonical)
        return None

    @classmethod
    def load(cls, config: Any) -> Any:
        device = torch_device(config)
        kw = {"local_files_only": bool(config.offline) or Path(config.model.name).is_dir()}
        if config.task == "classify":
            return _HFClassifier(config.model.name, device, kw)
        if config.task == "segment":
            return _HFSegmenter(config.model.name, device, kw)
        return _HFSpeech(config.model.name, device, kw, config.language)


class _HFImage:
    auto = ""

    def __init__(self, name: str, device: str, kw: dict[str, Any]):
        import transformers

        self.processor = transformers.AutoImageProcessor.from_pretrained(name, **kw)
        self.net = getattr(transformers, self.auto).from_pretrained(name, **kw).eval().to(device)
        self.device = device

    def outputs(self, images: Sequence[Any]) -> Any:
        import torch

        batch = self.processor(images=list(images), return_tensors="pt")
        with torch.inference_mode():
            return self.net(pixel_values=batch["pixel_values"].to(self.device)).logits


class _HFClassifier(_HFImage):
    auto = "AutoModelForImageClassification"

    def logits(self, images: Sequence[Any]) -> Any:
        return self.outputs(images)


class _HFSegmenter(_HFImage):
    auto = "AutoModelForSemanticSegmentation"

    def segment(self, images: Sequence[Any]) -> list[Any]:
        """Model classes per pixel: logits upsampled (bilinear) to each image's own size, then argmax."""
        import torch.nn.functional as F

        logits = self.outputs(images)
        out = []
        for i, im in enumerate(images):
            up = F.interpolate(logits[i:i + 1].float(), size=im.shape[:2], mode="bilinear", align_corners=False)
            out.append(up[0].argmax(0).cpu().numpy())
        return out


class _HFSpeech:
    """Whisper (sequence to sequence) or CTC models (wav2vec2) through the transformers ASR pipeline.

    Whisper: a multilingual model is told the language (English unless ``--language``) and the task
    (transcribe), never left to detect them; an utterance over 30 s is transcribed whole with Whisper's
    sequential long-form algorithm (the paper's section 3.8: timestamps predicted, the window moved
    on), never truncated to its first 30 s.
    """

    def __init__(self, name: str, device: str, kw: dict[str, Any], language: str | None = None):
        import transformers

        config = transformers.AutoConfig.from_pretrained(name, **kw)
        self.whisper = getattr(config, "model_type", "") == "whisper"
        auto = (transformers.AutoModelForSpeechSeq2Seq if getattr(config, "is_encoder_decoder", False)
                else transformers.AutoModelForCTC)
        processor = transformers.AutoProcessor.from_pretrained(name, **kw)
        model = auto.from_pretrained(name, **kw)
        self.generate: dict[str, Any] = {}
        if self.whisper and getattr(model.generation_config, "is_multilingual", False):
            self.generate = {"language": language or "en", "task": "transcribe"}
        elif self.whisper and language not in (None, "en", "english"):
            raise ConfigError(f"{name} is an English-only Whisper model; it cannot transcribe {language!r}")
        self.pipe = transformers.pipeline("automatic-speech-recognition", model=model,
                                          tokenizer=processor.tokenizer,
                                          feature_extractor=processor.feature_extractor, device=device)
        self.rate = int(processor.feature_extractor.sampling_rate)
        self.window = int(getattr(processor.feature_extractor, "n_samples", 0))  # Whisper: 30 s of samples

    def transcribe(self, items: Sequence[tuple[Any, int]]) -> list[str]:
        out = []
        for a, r in items:
            x = _to_rate(a, r, self.rate)
            kwargs: dict[str, Any] = {}
            if self.whisper:
                kwargs["generate_kwargs"] = dict(self.generate)
                if self.window and len(x) > self.window:  # long-form: whole utterance, sequential windows
                    kwargs["return_timestamps"] = True
            # one input gives one dict; the stubs of transformers' pipeline say a list of them
            got = cast(dict[str, Any], self.pipe({"raw": x, "sampling_rate": self.rate}, **kwargs))
            out.append(str(got["text"]))
        return out


def _to_rate(audio: Any, rate: int, target: int) -> Any:
    import numpy as np
    import soxr

    audio = np.asarray(audio, dtype=np.float32)
    return audio if rate == target else soxr.resample(audio, rate, target).astype(np.float32)

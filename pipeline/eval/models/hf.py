"""Hugging Face transformers models (classify, segment, detect, asr): a hub id or a ``save_pretrained`` folder.

Hub ids are read from the Hugging Face cache; with ``--offline`` nothing is downloaded
(``local_files_only=True``) and a model missing from the cache stops the run before any work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, cast

from ...errors import ConfigError
from . import register_model
from .base import ModelKind, Outputs, load_state_dict, missing, torch_device

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: names a model's ``id2label`` gives a leading class that is no class of the label space
BACKGROUND = ("background", "unlabeled", "unlabelled")


def background_offset(model_config: Any) -> int:
    """1 when the model's output 0 is a background class (``id2label[0]``), else 0."""
    id2label = getattr(model_config, "id2label", None) or {}
    first = id2label.get(0, id2label.get("0"))
    return 1 if str(first).strip().lower() in BACKGROUND else 0


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
    tasks = ("classify", "segment", "detect", "asr")
    library = "transformers"

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if config.weights and config.task not in ("classify", "segment"):
            raise ConfigError(f"--weights applies to hf classify and segment models; an hf {config.task} model is "
                              "a folder (save_pretrained)")

    @classmethod
    def weights_file(cls, config: Any) -> Path | None:
        name = config.model.name
        if config.weights:  # a fine-tuned state dict of the named architecture identifies the weights
            return Path(config.weights)
        if Path(name).is_dir():
            for f in WEIGHT_FILES:
                if (Path(name) / f).is_file():
                    return Path(name) / f
            raise ConfigError(f"{name}: no {' or '.join(WEIGHT_FILES)} in this folder")
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
    def outputs(cls, config: Any) -> Outputs | None:
        """From the model's config (``num_labels``, ``id2label``), read from the cache or the folder."""
        if config.task not in ("classify", "segment"):
            return None
        import transformers

        kw = {"local_files_only": bool(config.offline) or Path(config.model.name).is_dir()}
        try:
            model_config = transformers.AutoConfig.from_pretrained(config.model.name, **kw)
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"cannot read the config of {config.model.canonical}: {first}") from None
        return Outputs(int(model_config.num_labels), background_offset(model_config), "the model's id2label")

    @classmethod
    def load(cls, config: Any) -> Any:
        device = torch_device(config)
        kw = {"local_files_only": bool(config.offline) or Path(config.model.name).is_dir()}
        if config.task == "classify":
            return _HFClassifier(config.model.name, device, kw, config.weights)
        if config.task == "segment":
            return _HFSegmenter(config.model.name, device, kw, config.weights)
        if config.task == "detect":
            return _HFDetector(config.model.name, device, kw)
        return _HFSpeech(config.model.name, device, kw, config.language)


class _HFImage:
    """The model and its image processor; ``weights``: a state dict (e.g. from examples/finetune.py)
    loaded strictly over the named model's own."""

    auto = ""

    def __init__(self, name: str, device: str, kw: dict[str, Any], weights: str | None = None):
        import transformers

        self.processor = transformers.AutoImageProcessor.from_pretrained(name, **kw)
        net = getattr(transformers, self.auto).from_pretrained(name, **kw)
        if weights:
            net.load_state_dict(load_state_dict(weights))
        self.net = net.eval().to(device)
        self.device = device
        self.offset = background_offset(self.net.config)  # the background class is dropped

    def outputs(self, images: Sequence[Any]) -> Any:
        import torch

        batch = self.processor(images=list(images), return_tensors="pt")
        with torch.inference_mode():
            return self.net(pixel_values=batch["pixel_values"].to(self.device)).logits[:, self.offset:]


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


class _HFDetector(_HFImage):
    """DETR, RT-DETR, ... through their image processor's ``post_process_object_detection``.

    Every query the post-processing returns is kept (threshold 0, as DETR's own COCO evaluation);
    ``labels`` are the model's ids, named by ``label_names`` (its ``id2label``), which the task maps
    onto the dataset's category ids by name.
    """

    auto = "AutoModelForObjectDetection"

    def __init__(self, name: str, device: str, kw: dict[str, Any]):
        super().__init__(name, device, kw)
        self.label_names = {int(k): str(v) for k, v in (self.net.config.id2label or {}).items()}

    def detect(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        import torch

        batch = self.processor(images=list(images), return_tensors="pt")
        with torch.inference_mode():
            out = self.net(**{k: v.to(self.device) for k, v in batch.items()})
        found = self.processor.post_process_object_detection(out, threshold=0.0,
                                                             target_sizes=[im.shape[:2] for im in images])
        return [{k: r[k].float().cpu().numpy() if k != "labels" else r[k].cpu().numpy()
                 for k in ("boxes", "scores", "labels")} for r in found]


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

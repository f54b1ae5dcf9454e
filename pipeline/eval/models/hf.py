"""Hugging Face transformers models (classify, segment, detect, asr): a hub id or a ``save_pretrained`` folder.

Hub ids are read from the Hugging Face cache; with ``--offline`` nothing is downloaded
(``local_files_only=True``) and a model missing from the cache stops the run before any work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, cast

from ...errors import ConfigError
from . import register_model
from .base import ModelKind, load_state_dict, missing, torch_device

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
    def load(cls, config: Any) -> Any:
        device = torch_device(config)
        kw = {"local_files_only": bool(config.offline) or Path(config.model.name).is_dir()}
        if config.task == "classify":
            return _HFClassifier(config.model.name, device, kw, config.weights)
        if config.task == "segment":
            return _HFSegmenter(config.model.name, device, kw, config.weights)
        if config.task == "detect":
            return _HFDetector(config.model.name, device, kw)
        return _HFSpeech(config.model.name, device, kw)


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
    """Whisper (sequence to sequence) or CTC models (wav2vec2) through the transformers ASR pipeline."""

    def __init__(self, name: str, device: str, kw: dict[str, Any]):
        import transformers

        config = transformers.AutoConfig.from_pretrained(name, **kw)
        auto = (transformers.AutoModelForSpeechSeq2Seq if getattr(config, "is_encoder_decoder", False)
                else transformers.AutoModelForCTC)
        processor = transformers.AutoProcessor.from_pretrained(name, **kw)
        self.pipe = transformers.pipeline("automatic-speech-recognition", model=auto.from_pretrained(name, **kw),
                                          tokenizer=processor.tokenizer,
                                          feature_extractor=processor.feature_extractor, device=device)
        self.rate = int(processor.feature_extractor.sampling_rate)

    def transcribe(self, items: Sequence[tuple[Any, int]]) -> list[str]:
        # one input gives one dict; the stubs of transformers' pipeline say a list of them
        return [str(cast(dict[str, Any], self.pipe({"raw": _to_rate(a, r, self.rate), "sampling_rate": self.rate}))
                    ["text"]) for a, r in items]


def _to_rate(audio: Any, rate: int, target: int) -> Any:
    import numpy as np
    import soxr

    audio = np.asarray(audio, dtype=np.float32)
    return audio if rate == target else soxr.resample(audio, rate, target).astype(np.float32)

"""MS-ILLM (Muckley et al., ICML 2023) and its No-GAN twin: generative image compression in PyTorch.

NeuralCompression (facebookresearch) publishes both as torch hub models
(``torch.hub.load("facebookresearch/NeuralCompression", "msillm_quality_3")``): the HiFiC autoencoder
with a mean-scale hyperprior, its generator fine-tuned with an adversarial loss against an implicit
local likelihood model (``msillm``), or trained with the distortion loss only (``noganms``). Qualities
1 to 6 target 0.035, 0.07, 0.14, 0.3, 0.45 and 0.9 bpp; MS-ILLM adds ``vlo1`` and ``vlo2`` (0.00218
and 0.00438 bpp, Careil et al., ICLR 2024). The architecture is built here
(:mod:`pipeline.codecs.msillm_net`, same parameter names and shapes as the checkpoints), not imported
from the ``neuralcompression`` package, whose pins (scipy <= 1.11.1, pytorchvideo, fvcore,
torch-fidelity) cannot be installed beside the rest of the project.

Weights: the files torch hub downloads (``msillm_target_<bpp>bpp.ckpt``, ``noganms_...``) in torch
hub's cache (``$TORCH_HOME/hub/checkpoints``, where a previous ``torch.hub.load`` left them) or the
run's weights folder; downloaded once by the client unless the run is offline, loaded as tensors
only. The publisher gives no hash for them, so none is checked; each sample's record names the
SHA-256 of the file that coded it (``weights_sha256``). They are released under CC-BY-NC
4.0 (non-commercial use only): see :data:`LICENSE_URL`.

Coding is CompressAI's, as in the original: the hyper-latent through the factorized prior's
``EntropyBottleneck``, the latent through the ``GaussianConditional`` with the predicted means and
scales. The image is padded to the stride of 64 (edge pixels repeated) and cropped after decoding,
and the strings go into the project's ``.bin`` exactly as for CompressAI's zoo (the two codecs share
:class:`~pipeline.codecs.compressai_zoo.ZooCodec`'s encode and decode).

``msillm-own:checkpoint=PATH`` runs the same architecture with weights the researcher trained: the
HiFiC sizes (input and latent channels, hyper-latent channels, residual blocks, analysis and
synthesis widths) are read from the state dict's shapes
(:func:`pipeline.codecs.msillm_net.sizes`), and everything about the files (hash in the spec and
tag, several checkpoints for ``quality=``/``bpp=``, the ``.bin`` header naming the hash, ``mpq
decode``) is :mod:`pipeline.codecs.own`'s, as for ``compressai:``. The weights are the researcher's:
NeuralCompression's CC-BY-NC licence of its published weights does not apply to them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from . import register, weights
from ..errors import ConfigError
from .compressai_zoo import ModelCache, ZooCodec
from .own import OwnCheckpoint, fill_missing_tables, own_params
from .params import Param
from .spec import CodecSpec

URL_PREFIX = "https://dl.fbaipublicfiles.com/NeuralCompression/2023-muckley-msillm/"
LICENSE = "CC-BY-NC 4.0"
LICENSE_URL = "https://github.com/facebookresearch/NeuralCompression/blob/main/WEIGHTS_LICENSE"
#: quality -> the rate (bpp) its checkpoint was trained for, as NeuralCompression names the files
TARGET_BPP = {"vlo1": "0.00218", "vlo2": "0.00438", "1": "0.035", "2": "0.07", "3": "0.14", "4": "0.3",
              "5": "0.45", "6": "0.9"}
#: models kept in memory per process: 181 million parameters (726 MB) each
MODEL_CACHE_SIZE = 2

_MODELS = ModelCache(MODEL_CACHE_SIZE)


class NeuralCompressionCodec(ZooCodec):
    """A NeuralCompression HiFiC checkpoint family; subclasses set ``name``, ``file_prefix`` and ``qualities_named``."""

    library: ClassVar[str] = f"NeuralCompression's weights ({LICENSE}), CompressAI's entropy coders"
    file_prefix: ClassVar[str] = ""  # msillm, noganms
    qualities_named: ClassVar[tuple[str, ...]] = ("1", "2", "3", "4", "5", "6")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        rates = ", ".join(f"{q}: {TARGET_BPP[q]}" for q in cls.qualities_named)
        cls.params = (Param("quality", str, "3", f"published quality (target bpp: {rates})", short="q",
                            choices=cls.qualities_named, in_tag=True),)
        cls.rate_knob = None  # no bpp= search: the qualities are named, not an ordered integer knob

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import compressai  # noqa: F401
            import torch  # noqa: F401
        except ImportError as exc:
            return f"CompressAI is not installed (pip install 'mpq-pipeline[neural]'): {exc}"
        return None

    @classmethod
    def checkpoint_url(cls, spec: CodecSpec) -> str:
        """The URL NeuralCompression's torch hub entry point downloads for this quality."""
        return f"{URL_PREFIX}{cls.file_prefix}_target_{TARGET_BPP[spec['quality']]}bpp.ckpt"

    @classmethod
    def checkpoint(cls, spec: CodecSpec) -> Path:
        # the publisher gives no hash (torch hub loads these files without check_hash)
        return weights.fetch(cls.checkpoint_url(spec), cls.weights_folder(), what=spec.canonical, check_hash=False)

    def environment(self) -> dict[str, str]:
        """The zoo's record plus the SHA-256 of the weights used: the publisher names none, so the record
        says which file coded the stream, and a decoder holding another file warns (``CrossDeviceWarning``)."""
        return {**super().environment(), "weights_sha256": weights.sha256_file(self.checkpoint(self.spec))}

    def _model(self) -> Any:
        path = self.checkpoint(self.spec)
        st = path.stat()
        key = (self.spec.canonical, str(path), st.st_size, st.st_mtime_ns, self.device)
        return _MODELS.get(key, lambda: self._load(path))

    def _load(self, path: Path) -> Any:
        from . import msillm_net

        state = weights.load_state_dict(path)
        try:
            model = msillm_net.HiFiCAutoencoder.from_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ConfigError(f"checkpoint {path} does not fit {self.name}: {str(exc).splitlines()[0]}") from None
        model.update(force=False)  # CDF tables on the CPU when the checkpoint lacks them
        model.eval().requires_grad_(False)
        return model.place(self.device)


@register
class MSILLM(NeuralCompressionCodec):
    name = "msillm"
    summary = (f"MS-ILLM generative compression (Muckley et al. 2023; HiFiC autoencoder, GAN-trained decoder), "
               f"NeuralCompression's weights, {LICENSE}: non-commercial use only")
    file_prefix = "msillm"
    qualities_named = ("vlo1", "vlo2", "1", "2", "3", "4", "5", "6")


@register
class NoGANMS(NeuralCompressionCodec):
    name = "noganms"
    summary = (f"MS-ILLM's No-GAN twin (same HiFiC mean-scale autoencoder, no adversarial loss), "
               f"NeuralCompression's weights, {LICENSE}: non-commercial use only")
    file_prefix = "noganms"


@register
class MSILLMOwn(OwnCheckpoint):
    """MS-ILLM's HiFiC autoencoder with the researcher's own weights (see the module docstring)."""

    name = "msillm-own"
    library = "MS-ILLM's HiFiC architecture (NeuralCompression), CompressAI's entropy coders"
    summary = ("MS-ILLM's architecture (HiFiC autoencoder, mean-scale hyperprior) with your own trained weights "
               "(checkpoint=PATH, | for several); sizes read from the state dict")
    params: ClassVar[tuple[Param, ...]] = own_params()
    models: ClassVar[ModelCache] = ModelCache(MODEL_CACHE_SIZE)

    @classmethod
    def unavailable(cls) -> str | None:
        return NeuralCompressionCodec.unavailable()

    @classmethod
    def _build(cls, spec: CodecSpec, path: Path) -> Any:
        from . import msillm_net

        state = weights.load_state_dict(path)
        rebuild = fill_missing_tables(state)
        try:
            model = msillm_net.HiFiCAutoencoder.from_state_dict(state)
        except (RuntimeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise ConfigError(f"checkpoint {path} does not fit {cls.name} (MS-ILLM's HiFiC autoencoder): "
                              f"{str(exc).splitlines()[0][:300]}") from None
        # tables the file lacks are computed here, on the CPU, before any device: the same for every device
        model.update(force=rebuild)
        return model.eval().requires_grad_(False)

    def _placed(self, model: Any) -> Any:
        return model.place(self.device)  # the entropy part stays on the CPU

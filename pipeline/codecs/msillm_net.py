"""The HiFiC autoencoder of NeuralCompression's MS-ILLM and No-GAN checkpoints, in plain PyTorch.

Built from the published description (Mentzer et al. 2020, HiFiC; Muckley et al. 2023, MS-ILLM) and
NeuralCompression's ``HiFiCAutoencoder`` module layout, so that its published state dicts load with
``strict=True``: every module and parameter carries the name and shape the checkpoints use. The
``neuralcompression`` package itself is not a dependency (it pins scipy <= 1.11.1, pytorchvideo,
fvcore and torch-fidelity); only CompressAI's entropy models are used, as the original does.

* analysis: a 7x7 convolution to 60 channels, four stride-2 3x3 convolutions (120, 240, 480, 960),
  each followed by channel normalisation and ReLU, and a 3x3 convolution to the 220-channel latent;
* synthesis (the GAN-trained generator in MS-ILLM): channel norm, 3x3 convolution to 960 channels,
  channel norm, nine residual blocks inside one more skip connection, four stride-2 transposed
  convolutions (480, 240, 120, 60) with channel norm and ReLU, and a 7x7 convolution to RGB;
* hyperprior: a 320-channel analysis (3x3 stride 1, then two 5x5 stride 2) and two synthesis
  branches, one for the means and one for the scales of the latent's Gaussian conditional;
  the hyper-latent has a factorized prior (CompressAI's ``EntropyBottleneck``).

These are the published sizes; a researcher's own checkpoint (``msillm-own``) may have others: the
latent and hyper-latent channels, the number of residual blocks and the widths of the analysis and
synthesis are read from its state dict's shapes (:func:`sizes`). The whole stride is 16 x 4 = 64
(with k widths in the analysis, 2**(k-1) x 4). The entropy part (hyperprior networks and both entropy models)
always runs on the CPU, as NeuralCompression's ``update_tensor_devices("compress")`` arranges it: the
scales and means that index the entropy coder are then computed the same way whatever device runs the
analysis and synthesis, so a stream encoded on a GPU decodes anywhere.

This module imports torch and CompressAI at the top: only :mod:`pipeline.codecs.msillm` imports it,
and only when a model is built.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from torch import Tensor, nn

#: the published models' hyper-parameters (NeuralCompression's ``HiFiCAutoencoder()`` defaults)
LATENT_FEATURES = 220
HYPER_FEATURES = 320
RESIDUAL_BLOCKS = 9
ENCODER_WIDTHS = (60, 120, 240, 480, 960)
STRIDE = 64  # 2**4 in the analysis, 2**2 more in the hyper-analysis


class ChannelNorm2D(nn.Module):
    """HiFiC's channel normalisation: each pixel's channel vector to zero mean and unit (unbiased) variance.

    Unlike batch or instance norm it does not depend on the image size, which keeps the model stable
    on resolutions it was not trained at.
    """

    def __init__(self, channels: int, epsilon: float = 1e-3):
        super().__init__()
        self.epsilon = epsilon
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True)
        return self.gamma * ((x - mean) * torch.rsqrt(var + self.epsilon)) + self.beta


def _conv_norm_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2), ChannelNorm2D(cout),
                         nn.ReLU())


class Encoder(nn.Module):
    """The analysis transform: image in [0, 1] to the 220-channel latent at 1/16 of its size."""

    def __init__(self, in_channels: int = 3, latent_features: int = LATENT_FEATURES,
                 widths: tuple[int, ...] = ENCODER_WIDTHS):
        super().__init__()
        layers: list[nn.Module] = [_conv_norm_relu(in_channels, widths[0], 7, 1)]
        layers += [_conv_norm_relu(a, b, 3, 2) for a, b in zip(widths, widths[1:])]
        layers.append(nn.Conv2d(widths[-1], latent_features, 3, padding=1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class ResidualBlock(nn.Module):
    """conv, norm, ReLU, conv, norm, added to the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.sequence = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), ChannelNorm2D(channels), nn.ReLU(),
                                      nn.Conv2d(channels, channels, 3, padding=1), ChannelNorm2D(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.sequence(x)


class Generator(nn.Module):
    """The synthesis transform (the generator MS-ILLM fine-tunes adversarially): latent to image."""

    def __init__(self, image_channels: int = 3, latent_features: int = LATENT_FEATURES,
                 residual_blocks: int = RESIDUAL_BLOCKS, widths: tuple[int, ...] = ENCODER_WIDTHS[::-1]):
        super().__init__()
        self.block_0 = nn.Sequential(ChannelNorm2D(latent_features),
                                     nn.Conv2d(latent_features, widths[0], 3, padding=1), ChannelNorm2D(widths[0]))
        self.resid_blocks = nn.Sequential(*(ResidualBlock(widths[0]) for _ in range(residual_blocks)))
        layers: list[nn.Module] = [
            nn.Sequential(nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1), ChannelNorm2D(b),
                          nn.ReLU())
            for a, b in zip(widths, widths[1:])]
        layers.append(nn.Conv2d(widths[-1], image_channels, 7, padding=3))
        self.blocks = nn.Sequential(*layers)

    def forward(self, y: Tensor) -> Tensor:
        x = self.block_0(y)
        x = x + self.resid_blocks(x)  # one more skip around all residual blocks
        return self.blocks(x)


def _conv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def _deconv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel, stride=stride, padding=kernel // 2, output_padding=1)


def _hyper_synthesis(hyper: int, latent: int) -> nn.Sequential:
    return nn.Sequential(_deconv(hyper, hyper), nn.ReLU(inplace=True), _deconv(hyper, hyper), nn.ReLU(inplace=True),
                         _conv(hyper, latent, kernel=3, stride=1))


def _indices(state: dict[str, Tensor], pattern: str) -> int:
    """How many consecutive indices 0, 1, ... the keys matching ``pattern`` (one ``(\\d+)`` group) have."""
    found = {int(m.group(1)) for k in state if (m := re.fullmatch(pattern, k))}
    n = 0
    while n in found:
        n += 1
    return n


def sizes(state: dict[str, Tensor]) -> dict[str, Any]:
    """The constructor arguments of :class:`HiFiCAutoencoder` that ``state``'s shapes give.

    Input channels and analysis widths from the analysis convolutions, the latent's channels from
    its last one, the hyper-latent's from the hyper-analysis, the synthesis widths from its first
    convolution and transposed convolutions, and the residual blocks by counting them. A key the
    architecture needs and the state dict lacks raises ``KeyError`` naming it.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise KeyError(f"{key} missing: not a HiFiC autoencoder's state dict")
        return tuple(state[key].shape)

    down = _indices(state, r"encoder\.blocks\.(\d+)\.0\.weight")
    up = _indices(state, r"decoder\.blocks\.(\d+)\.0\.weight")
    first = shape("encoder.blocks.0.0.weight")
    return {
        "in_channels": first[1],
        "latent_features": shape(f"encoder.blocks.{down}.weight")[0],
        "hyper_features": shape("hyper_analysis.0.weight")[0],
        "residual_blocks": _indices(state, r"decoder\.resid_blocks\.(\d+)\.sequence\.0\.weight"),
        "encoder_widths": tuple(shape(f"encoder.blocks.{i}.0.weight")[0] for i in range(down)),
        # transposed convolutions: weight (in, out, k, k)
        "decoder_widths": (shape("decoder.block_0.1.weight")[0],
                           *(shape(f"decoder.blocks.{i}.0.weight")[1] for i in range(up))),
    }


class HiFiCAutoencoder(CompressionModel):
    """Analysis, synthesis and a mean-scale hyperprior, with CompressAI's ``compress``/``decompress`` interface.

    ``compress`` returns ``{"strings": [latent strings, hyper-latent strings], "shape": hyper-latent size}``
    and ``decompress(strings, shape)`` returns ``{"x_hat": image}``, like CompressAI's zoo models.
    """

    downsampling_factor = STRIDE  # the published sizes'; an instance sets its own

    def __init__(self, in_channels: int = 3, latent_features: int = LATENT_FEATURES,
                 hyper_features: int = HYPER_FEATURES, residual_blocks: int = RESIDUAL_BLOCKS,
                 encoder_widths: tuple[int, ...] = ENCODER_WIDTHS, decoder_widths: tuple[int, ...] | None = None):
        super().__init__()
        decoder_widths = tuple(encoder_widths[::-1]) if decoder_widths is None else tuple(decoder_widths)
        if not encoder_widths or len(decoder_widths) != len(encoder_widths):
            raise ValueError(f"the synthesis must upsample as often as the analysis downsamples: widths "
                             f"{tuple(encoder_widths)} and {decoder_widths}")
        self.downsampling_factor = 2 ** (len(encoder_widths) - 1) * 4  # the hyper-analysis adds 4
        self.encoder = Encoder(in_channels, latent_features, tuple(encoder_widths))
        self.decoder = Generator(in_channels, latent_features, residual_blocks, decoder_widths)
        self.hyper_analysis = nn.Sequential(
            _conv(latent_features, hyper_features, kernel=3, stride=1), nn.ReLU(inplace=True),
            _conv(hyper_features, hyper_features), nn.ReLU(inplace=True), _conv(hyper_features, hyper_features))
        self.hyper_synthesis_mean = _hyper_synthesis(hyper_features, latent_features)
        self.hyper_synthesis_scale = _hyper_synthesis(hyper_features, latent_features)
        self.hyper_bottleneck = EntropyBottleneck(hyper_features)
        self.latent_bottleneck = GaussianConditional(scale_table=None)

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "HiFiCAutoencoder":
        """The architecture holding ``state``, its sizes read from the shapes (:func:`sizes`), loaded
        strictly (every name and shape must match).

        Built without random initialisation (on the meta device, then allocated empty): every tensor is
        then overwritten by the strict load, which saves filling 181 million parameters for nothing.
        CompressionModel's ``load_state_dict`` sizes the entropy tables to the checkpoint's and maps the
        names CompressAI used before 1.2.7 (``hyper_bottleneck._matrix0``, ...), which the checkpoints carry.
        """
        with torch.device("meta"):
            model = cls(**sizes(state))
        model.to_empty(device="cpu")
        model.load_state_dict(state, strict=True)
        return model

    def entropy_part(self) -> list[nn.Module]:
        """The modules that index the entropy coder: kept on the CPU (see the module docstring)."""
        return [self.hyper_analysis, self.hyper_synthesis_mean, self.hyper_synthesis_scale, self.hyper_bottleneck,
                self.latent_bottleneck]

    def place(self, device: str) -> "HiFiCAutoencoder":
        """Analysis and synthesis on ``device``, the entropy part on the CPU."""
        self.encoder.to(device)
        self.decoder.to(device)
        for module in self.entropy_part():
            module.to("cpu")
        return self

    def _means_scales(self, z_strings: list[bytes], shape: Any) -> tuple[Tensor, Tensor, Tensor]:
        z_hat = self.hyper_bottleneck.decompress(z_strings, shape)
        return z_hat, self.hyper_synthesis_mean(z_hat), self.hyper_synthesis_scale(z_hat)

    #: the module ``decompress`` feeds the latent (see :mod:`pipeline.codecs.latents`)
    synthesis_module = "decoder"

    def compress_kept(self, x: Tensor) -> tuple[dict[str, Any], Tensor]:
        """:meth:`compress`, and the quantized latent :meth:`decompress` recovers from its strings: the
        symbols given to the coder, dequantized with the same means (on the CPU), bit for bit."""
        y = self.encoder(x).float().cpu()
        z = self.hyper_analysis(y)
        z_strings = self.hyper_bottleneck.compress(z)
        # means and scales from the decoded hyper-latent, exactly as the decoder will compute them
        _, means, scales = self._means_scales(z_strings, z.size()[-2:])
        indexes = self.latent_bottleneck.build_indexes(scales)
        y_strings = self.latent_bottleneck.compress(y, indexes, means=means)
        y_hat = self.latent_bottleneck.dequantize(self.latent_bottleneck.quantize(y, "symbols", means), means)
        return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}, y_hat

    def compress(self, x: Tensor) -> dict[str, Any]:
        return self.compress_kept(x)[0]

    def synthesize(self, y_hat: Tensor) -> Tensor:
        """The image from the quantized latent (on the synthesis's device), clamped to [0, 1]."""
        device = next(self.decoder.parameters()).device
        return self.decoder(y_hat.to(device)).clamp_(0.0, 1.0)

    def decompress(self, strings: list[list[bytes]], shape: Any) -> dict[str, Tensor]:
        if len(strings) != 2:
            raise ValueError(f"expected latent and hyper-latent strings, got {len(strings)} groups")
        _, means, scales = self._means_scales(strings[1], shape)
        indexes = self.latent_bottleneck.build_indexes(scales)
        y_hat = self.latent_bottleneck.decompress(strings[0], indexes, means=means)
        return {"x_hat": self.synthesize(y_hat)}

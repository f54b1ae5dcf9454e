"""EnCodec's causal 24 kHz network run chunk by chunk, so memory stays bounded while the ``.ecdc`` file
is still one frame in EnCodec's own format (used by :mod:`pipeline.codecs.encodec`).

The network runs over chunks of :data:`CHUNK_SECONDS`, carrying from one chunk to the next what
each layer needs (the last input samples of every convolution, the LSTM state, the overlapping tail
of every transposed convolution). Results are the one-pass computation's up to float rounding.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import numpy as np

#: length of the chunks the 24 kHz model runs over (rounded to whole frames of 320 samples)
CHUNK_SECONDS = 10.0
#: fewest frames in a chunk: the first chunk must be longer than every layer's left padding (6)
MIN_CHUNK_FRAMES = 8


def _hop(net: Any) -> int:
    """Samples per frame of codes (320 at 24 kHz): the product of the encoder's strides."""
    return int(np.prod(net.encoder.ratios))


def chunk_samples(net: Any, seconds: float | None = None) -> int:
    """Samples per chunk: ``seconds`` (default :data:`CHUNK_SECONDS`) in whole frames of the model's hop."""
    seconds = CHUNK_SECONDS if seconds is None else seconds
    return _hop(net) * max(MIN_CHUNK_FRAMES, round(seconds * net.sample_rate / _hop(net)))


def streamable(net: Any) -> bool:
    """Whether ``net`` codes the whole signal as one frame with a causal network that can run in chunks.

    True for the 24 kHz model. The 48 kHz model is segmented already, normalises each segment by its
    volume, and its convolutions are neither causal nor free of normalisation over time.
    """
    from torch import nn
    from encodec.modules.conv import SConv1d, SConvTranspose1d

    if net.segment is not None or net.normalize:
        return False
    for m in [*net.encoder.modules(), *net.decoder.modules()]:
        if isinstance(m, SConv1d) and not (m.causal and isinstance(m.conv.norm, nn.Identity)):
            return False
        if isinstance(m, SConvTranspose1d) and not (m.causal and m.trim_right_ratio == 1.0
                                                    and isinstance(m.convtr.norm, nn.Identity)):
            return False
    return True


class _Stream:
    """One signal through a causal SEANet encoder or decoder, chunk after chunk, with state carried over.

    While :meth:`installed`, encodec's own modules inside ``net`` compute each chunk as the one-pass
    network would compute that stretch of the signal:

    * ``SConv1d``: its ``forward`` is replaced by :meth:`_conv`, which gives the inner convolution
      the layer's last ``padding_total`` input samples from the previous chunk where the module
      pads on the left (reflecting, on the first chunk, as the module does), and pads on the right
      only in the last chunk, to complete the last frame as the module does.
    * ``SConvTranspose1d``: a hook on its inner transposed convolution adds the previous chunk's
      overlapping tail (``kernel - stride`` samples, without the bias, which is then added once)
      to the start of this chunk's raw output and keeps this chunk's tail; the module then trims
      that tail as it always does (all on the right, ``trim_right_ratio=1``).
    * ``SLSTM``: hooks on its inner LSTM pass in the ``(h, c)`` state the previous chunk left.

    Every chunk but the last must be a whole number of frames (a multiple of every stride). The
    modules are changed while installed, so the model codes one signal at a time (the codec holds
    its lock around every call).
    """

    def __init__(self, net: Any):
        self.net = net
        self.last = False
        self.state: dict[Any, Any] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator["_Stream"]:
        from encodec.modules.conv import SConv1d, SConvTranspose1d
        from encodec.modules.lstm import SLSTM

        patched: list[Any] = []
        handles: list[Any] = []
        try:
            for m in self.net.modules():
                if isinstance(m, SConv1d):
                    # per-instance patch for chunked streaming, undone in the finally below
                    m.forward = functools.partial(self._conv, m)  # type: ignore[method-assign]
                    patched.append(m)
                elif isinstance(m, SConvTranspose1d):
                    handles.append(m.convtr.register_forward_hook(functools.partial(self._overlap_add, m)))
                elif isinstance(m, SLSTM):
                    handles.append(m.lstm.register_forward_pre_hook(self._lstm_state_in))
                    handles.append(m.lstm.register_forward_hook(self._lstm_state_out))
            yield self
        finally:
            for m in patched:
                del m.forward  # the class's forward again
            for h in handles:
                h.remove()
            self.state.clear()

    def __call__(self, x: Any, *, last: bool) -> Any:
        self.last = last
        return self.net(x)

    def _conv(self, m: Any, x: Any) -> Any:
        import torch
        from encodec.modules.conv import get_extra_padding_for_conv1d, pad1d

        conv = m.conv.conv
        kernel, stride, dilation = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        context = (kernel - 1) * dilation - (stride - 1)  # the module's padding_total
        # right padding as the module computes it on the whole signal: every earlier chunk is whole frames
        extra = get_extra_padding_for_conv1d(x, kernel, stride, context)
        if not self.last and extra:
            raise RuntimeError(f"EnCodec chunk of {x.shape[-1]} samples is not a multiple of a stride of {stride}")
        past = self.state.get(m)
        if past is None:  # first chunk: exactly the module's padding
            if not self.last and x.shape[-1] <= context:
                raise RuntimeError(f"EnCodec's first chunk is too short ({x.shape[-1]} <= {context} samples)")
            x = pad1d(x, (context, extra), mode=m.pad_mode)
        else:
            x = torch.cat([past, x], dim=-1)
            if extra:
                x = pad1d(x, (0, extra), mode=m.pad_mode)
        if not self.last and context:
            self.state[m] = x[..., x.shape[-1] - context:].clone()  # a copy: the chunk itself is freed
        return m.conv(x)

    def _overlap_add(self, m: Any, inner: Any, args: Any, y: Any) -> Any:
        overlap = m.convtr.convtr.kernel_size[0] - m.convtr.convtr.stride[0]
        tail = self.state.pop(m, None)
        if tail is not None:
            y[..., :overlap] += tail
        if not self.last:
            bias = m.convtr.convtr.bias
            kept = y[..., y.shape[-1] - overlap:]
            self.state[m] = kept - bias[:, None] if bias is not None else kept.clone()
        return y

    def _lstm_state_in(self, lstm: Any, args: Any) -> Any:
        return (args[0], self.state.get(lstm))

    def _lstm_state_out(self, lstm: Any, args: Any, out: Any) -> None:
        self.state[lstm] = out[1]


class ChunkedModel:
    """An EnCodec model as ``encodec.compress.compress``/``decompress`` use it, run chunk by chunk.

    ``encode`` and ``decode`` give one frame for the whole signal, as the model's own do, but run
    the network over chunks of ``chunk`` samples (default :func:`chunk_samples`) so memory does not
    grow with the length; the residual quantizer works frame by frame, so each chunk's embeddings are
    quantized on their own and the codes concatenated (a few kB per minute). Models that cannot run
    in chunks (:func:`streamable`) run as they are. Everything else is the wrapped model's.
    """

    def __init__(self, net: Any, *, chunk: int | None = None):
        if chunk is not None and (chunk % _hop(net) or chunk < MIN_CHUNK_FRAMES * _hop(net)):
            raise ValueError(f"an EnCodec chunk must be a whole number of frames of {_hop(net)} samples, "
                             f"at least {MIN_CHUNK_FRAMES}, not {chunk} samples")
        self._net = net
        self._chunk = chunk

    def __getattr__(self, name: str) -> Any:
        if name == "_net":  # not set yet (copy, unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self._net, name)

    def to(self, device: Any) -> "ChunkedModel":  # decompress moves "its" model to the device asked
        self._net.to(device)
        return self

    @property
    def chunk(self) -> int:
        return self._chunk or chunk_samples(self._net)

    def encode(self, x: Any) -> list[tuple[Any, Any]]:
        import torch

        net = self._net
        length = x.shape[-1]
        if not streamable(net) or length == 0:
            return net.encode(x)
        chunk = self.chunk
        codes = []
        with torch.no_grad(), _Stream(net.encoder).installed() as stream:
            for start in range(0, length, chunk):
                emb = stream(x[..., start:start + chunk], last=start + chunk >= length)
                codes.append(net.quantizer.encode(emb, net.frame_rate, net.bandwidth))  # [K, B, T]
        return [(torch.cat(codes, dim=-1).transpose(0, 1), None)]

    def decode(self, frames: list[tuple[Any, Any]]) -> Any:
        import torch

        net = self._net
        if not streamable(net) or len(frames) != 1:
            return net.decode(frames)
        (codes, scale), = frames
        step = self.chunk // _hop(net)  # frames per chunk
        total = codes.shape[-1]
        out = []
        with torch.no_grad(), _Stream(net.decoder).installed() as stream:
            for start in range(0, total, step):
                emb = net.quantizer.decode(codes[:, :, start:start + step].transpose(0, 1))
                out.append(stream(emb, last=start + step >= total))
        wav = torch.cat(out, dim=-1) if out else net.decode(frames)
        return wav if scale is None else wav * scale.view(-1, 1, 1)

"""Float tolerances measured on the machine at hand, never constants tuned on one CPU.

A float32 result differs from the exact one by the rounding of the kernels that computed it,
and those kernels depend on the CPU (torch's ATen capability, oneDNN's instruction set: AVX2 and
AVX-512 sum in other orders and fuse other multiply-adds). So a test comparing two float32
computations of the same quantity (batched against one at a time, chunked against one pass)
measures that rounding here: the same operation in float64 is the reference, and the bound is a
small multiple of the float32 error against it. A real fault (a lost sample of context, a wrong
label, a misaligned stride) moves results by orders of magnitude more than rounding does.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

#: how many times the measured float32 error two float32 computations of one quantity may differ by
#: (each is within the rounding of the reference; other summation orders give errors of the same order)
FACTOR = 8


def max_abs(a: Any, b: Any) -> float:
    import torch

    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def float32_error(module: Any, call: Callable[[Any, Any], Any], *inputs: Any) -> float:
    """max |float32 - float64| of ``call(module, inputs)``: the same operation run on a float64 copy
    of ``module`` with the inputs in float64 (floating inputs only) as the reference."""
    import torch

    wide = copy.deepcopy(module).double()
    as64 = [x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs]
    with torch.inference_mode():
        narrow_out, wide_out = call(module, *inputs), call(wide, *as64)
    return max_abs(narrow_out, wide_out)


def bound(error: float, scale: float = 1.0) -> float:
    """The tolerance for comparing two float32 results: FACTOR times the measured error, never below
    a few float32 ulps of ``scale`` (an error measured as 0 would make any rounding fail)."""
    import numpy as np

    return FACTOR * max(error, 4 * float(np.finfo(np.float32).eps) * scale)

"""The machine a shard was encoded on: what CPU-dependent encoders' bytes depend on.

libopus (and other float encoders) pick SIMD code paths by CPU at run time, and learned codecs
run torch and oneDNN kernels chosen the same way: the same code and library versions write
different bytes on an AVX2 and an AVX-512 machine. Each shard's stats record this description
from the worker that wrote it, and the set's index lists the distinct ones under
``versions.machines``, so a difference between two sets can be explained from their indexes alone.
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from typing import Any

#: instruction-set levels, highest first, by the /proc/cpuinfo flag that marks them (x86-64)
_LEVELS = (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("sse4_2", "sse4.2"))
#: the flags recorded (those SIMD dispatchers of libopus, oneDNN and ATen look at)
_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
          "avx512_bf16", "amx_tile", "asimd", "sve")
#: environment variables that cap the level torch and oneDNN use (recorded when set)
_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    """(model name, flags) from /proc/cpuinfo (Linux); elsewhere the platform's processor string."""
    model = platform.processor() or platform.machine()
    flags: tuple[str, ...] = ()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = tuple(value.split())
    except OSError:
        pass
    return model, flags


def describe(torch_kernels: bool = False) -> dict[str, Any]:
    """This machine: CPU model, instruction-set level and flags; with ``torch_kernels`` (a codec that runs
    torch) also torch's kernel level. The same on every run of one machine, so indexes compare equal."""
    model, flags = _cpuinfo()
    have = set(flags)
    level = next((name for flag, name in _LEVELS if flag in have), platform.machine())
    out: dict[str, Any] = {"cpu": model, "arch": platform.machine(), "isa": level,
                           "flags": " ".join(f for f in _FLAGS if f in have)}
    if torch_kernels:
        try:
            import torch

            out["torch_cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
        except Exception:  # noqa: BLE001 - no torch, or an old one without it: not recorded
            pass
    caps = {k: os.environ[k] for k in _CAPS if os.environ.get(k)}
    if caps:
        out["limits"] = caps
    return out


def distinct(descriptions: Any) -> list[dict[str, Any]]:
    """The distinct machine descriptions among shards' stats (None: a shard written before they were recorded)."""
    seen: dict[str, dict[str, Any]] = {}
    for d in descriptions:
        if isinstance(d, dict):
            seen.setdefault(repr(sorted(d.items())), d)
    return [seen[k] for k in sorted(seen)]

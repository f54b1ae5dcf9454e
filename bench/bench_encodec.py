"""Benchmark: EnCodec's 24 kHz model coding long audio in one pass vs in chunks (peak memory and time).

Each measurement runs in a fresh process (peak resident memory, ``VmHWM``, is per process): it
builds the 24 kHz model with random weights (seeded; codebooks drawn from its own embeddings, as
the tests do: compute does not depend on the weight values), synthesizes speech-like audio of the
given length, then encodes and decodes it either with the model's own ``encode``/``decode`` (one
pass over the whole signal) or through :class:`pipeline.codecs.encodec_stream.ChunkedModel` (what the
codec runs), and reports seconds and the peak memory over what the built model already held. It
also counts the codes the two ways disagree on (float-rounding ties only).

    .venv/bin/python bench/bench_encodec.py --seconds 60 120 --threads 1
    python bench/bench_encodec.py --device cuda --seconds 60 600
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the signal synthesizer and the codebook seeding the tests use
sys.path.insert(0, str(ROOT))


def _rss_mb(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(seconds: float, mode: str, device: str, threads: int, kbps: float) -> dict:
    """One run, in this process: build, code ``seconds`` of audio one way, report time and memory."""
    import warnings

    import numpy as np
    import torch

    import audio_fixtures as af
    from encodec.model import EncodecModel

    from pipeline.codecs.encodec_stream import ChunkedModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = EncodecModel.encodec_model_24khz(pretrained=False)
    net.eval().requires_grad_(False)
    rate = net.sample_rate
    seed_wav = torch.from_numpy(af.as_float(af.speech(1.0, 9, rate=rate))[:, 0])[None, None]
    af.seed_encodec_codebooks(net, seed_wav)
    net = net.to(device)
    net.set_target_bandwidth(kbps)
    x = af.as_float(af.speech(seconds, 1, rate=rate))[:, 0]
    wav = torch.from_numpy(np.ascontiguousarray(x))[None, None].to(device)
    model = ChunkedModel(net) if mode == "chunked" else net
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb("VmRSS")
    with torch.inference_mode():
        t0 = time.perf_counter()
        frames = model.encode(wav)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        out = model.decode(frames)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
    row = {"seconds": seconds, "mode": mode, "device": device, "threads": threads, "kbps": kbps,
           "encode_s": t1 - t0, "decode_s": t2 - t1, "rss_base_mb": base, "rss_peak_mb": _rss_mb(),
           "samples_out": int(out.shape[-1])}
    if device.startswith("cuda"):
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    codes = frames[0][0].cpu()
    row["codes"] = int(codes.numel())
    if mode == "chunked":  # disagreement with one pass, computed here so each process stays one measurement
        with torch.inference_mode():
            ref = net.encode(wav)[0][0].cpu()
        row["codes_differing"] = int((ref != codes).sum())
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[60.0, 120.0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kbps", type=float, default=6.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", nargs=2, metavar=("SECONDS", "MODE"), help=argparse.SUPPRESS)  # a child's job
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(float(args.one[0]), args.one[1], args.device, args.threads, args.kbps)))
        return
    rows = []
    for seconds in args.seconds:
        for mode in ("one-pass", "chunked"):
            cmd = [sys.executable, __file__, "--one", str(seconds), mode, "--device", args.device,
                   "--threads", str(args.threads), "--kbps", str(args.kbps)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if out.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            extra = f"  codes differing from one pass: {row['codes_differing']}/{row['codes']}" \
                if mode == "chunked" else ""
            gpu = f"  GPU peak {row['gpu_peak_mb']:7.0f} MB" if "gpu_peak_mb" in row else ""
            print(f"{seconds:6.0f} s  {mode:8s}  encode {row['encode_s']:6.2f} s  decode {row['decode_s']:6.2f} s  "
                  f"peak RSS {row['rss_peak_mb']:6.0f} MB (model built: {row['rss_base_mb']:5.0f} MB){gpu}{extra}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

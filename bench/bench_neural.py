"""Benchmark: learned codecs (CompressAI zoo) in images per second, on the CPU per core and on a GPU,
at 512x768; and the cross-device check: streams encoded on the GPU, decoded on the GPU and the CPU.

Weights are random (seeded) in the zoo's configuration for the chosen quality, written to a temporary
weights folder under zoo-style names: real weights cannot be downloaded here. Convolution time does
not depend on weight values; entropy-coding time does a little (symbols outside the coding tables
cost more), and cross-device agreement depends on the weights, so read those figures as indicative.

    .venv/bin/python bench/bench_neural.py --device cpu --threads 1 --n 3
    python bench/bench_neural.py --device cuda --n 10 --cross-device --json out.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ARCHS = ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018", "cheng2020-anchor",
         "cheng2020-attn"]


def photos(n: int, height: int, width: int) -> list[np.ndarray]:
    """Distinct natural images (scikit-image photographs, resized and flipped), or seeded noise without it."""
    from PIL import Image

    try:
        from skimage import data

        sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    except ImportError:
        rng = np.random.default_rng(0)
        sources = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    out = []
    for i in range(n):
        img = Image.fromarray(sources[i % len(sources)]).resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(img)
        out.append(np.ascontiguousarray(arr[:, ::-1] if (i // len(sources)) % 2 else arr))
    return out


def random_checkpoints(folder: Path, quality: int, metric: str, archs: list[str]) -> None:
    """Random-init zoo models saved under hash-carrying names; the zoo's URL table is pointed at them."""
    import torch
    from compressai.zoo.image import cfgs, model_architectures, model_urls

    folder.mkdir(parents=True, exist_ok=True)
    for arch in archs:
        torch.manual_seed(0)
        model = model_architectures[arch](*cfgs[arch][quality])
        model.update(force=True)
        tmp = folder / f"{arch}.tmp"
        torch.save(model.state_dict(), tmp)
        name = f"{arch}-bench-{quality}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth.tar"
        tmp.rename(folder / name)
        model_urls[arch][metric][quality] = f"https://models.invalid/{name}"


def timed(fn, items) -> tuple[float, float, list]:
    """(wall seconds, this process's CPU seconds, results): CPU time is what a busy shared machine
    cannot inflate, so per-core figures use it."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = [fn(x) for x in items]
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU figures are per core)")
    ap.add_argument("--n", type=int, default=3, help="images timed per architecture (after one warm-up)")
    ap.add_argument("--quality", type=int, default=3)
    ap.add_argument("--metric", default="mse")
    ap.add_argument("--size", default="512x768", help="HEIGHTxWIDTH")
    ap.add_argument("--arch", action="append", default=None, help="architecture(s); default: all six")
    ap.add_argument("--cross-device", action="store_true", help="also decode GPU-encoded streams on the CPU")
    ap.add_argument("--cross-n", type=int, default=3, help="images in the cross-device check")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here as JSON")
    args = ap.parse_args()

    os.environ["MPQ_INFERENCE_THREADS"] = str(args.threads)
    os.environ["MPQ_OFFLINE"] = "1"
    weights_dir = Path(tempfile.mkdtemp(prefix="mpq-bench-weights-"))
    os.environ["MPQ_WEIGHTS_DIR"] = str(weights_dir)

    import compressai
    import torch

    from pipeline.codecs import get_codec
    from pipeline.metrics.image import psnr
    from pipeline.codecs.spec import parse_spec

    archs = args.arch or ARCHS
    random_checkpoints(weights_dir, args.quality, args.metric, archs)
    h, w = (int(v) for v in args.size.lower().split("x"))
    images = photos(args.n + 1, h, w)
    device_label = args.device if args.device == "cpu" else torch.cuda.get_device_name(torch.device(args.device))
    report = {"device": args.device, "device_name": device_label, "threads": args.threads, "size": [h, w],
              "n": args.n, "quality": args.quality, "metric": args.metric, "torch": torch.__version__,
              "compressai": compressai.__version__, "python": platform.python_version(), "archs": {}}
    print(f"{args.size} images, quality {args.quality} ({args.metric}), random-init weights, device {device_label}, "
          f"torch {torch.__version__} threads {args.threads}, n={args.n}")
    print(f"{'architecture':22} {'encode img/s':>12} {'decode img/s':>12} {'enc+dec img/s':>14} {'per core':>9}"
          f"  (wall clock; per core: enc+dec images per CPU-second)")
    for arch in archs:
        spec = parse_spec(f"{arch}:quality={args.quality},metric={args.metric}")
        codec = get_codec(arch)(spec, device=args.device)
        codec.decode(codec.encode(images[0]).payload)  # warm-up: weights, kernels, allocator
        te, ce, encoded = timed(codec.encode, images[1:])
        td, cd, decoded = timed(lambda e, c=codec: c.decode(e.payload), encoded)
        enc_s, dec_s, both = args.n / te, args.n / td, args.n / (te + td)
        # per core: images per CPU-second of this process (with --threads 1, one core's throughput)
        per_core = args.n / (ce + cd) if args.device == "cpu" else None
        row = {"encode_img_s": enc_s, "decode_img_s": dec_s, "encode_decode_img_s": both,
               "encode_decode_img_s_per_core": per_core, "encode_cpu_s": ce / args.n, "decode_cpu_s": cd / args.n,
               "mean_bits": float(np.mean([8 * len(e.payload) for e in encoded]))}
        print(f"{arch:22} {enc_s:12.3f} {dec_s:12.3f} {both:14.3f} "
              f"{(f'{per_core:9.3f}' if per_core is not None else '        -')}")
        if args.cross_device and args.device != "cpu":
            cpu = get_codec(arch)(spec, device="cpu")
            same, failed, diffs = 0, 0, []
            k = min(args.cross_n, args.n)
            for e, gpu_dec in zip(encoded[:k], decoded[:k]):
                try:
                    cpu_dec = cpu.decode(e.payload)
                except Exception as exc:  # a corrupt decode can raise in the entropy decoder
                    failed += 1
                    diffs.append(f"{type(exc).__name__}: {exc}")
                    continue
                if np.array_equal(cpu_dec, gpu_dec):
                    same += 1
                else:
                    diffs.append(f"max |diff| {int(np.abs(cpu_dec.astype(int) - gpu_dec).max())}, "
                                 f"PSNR(cpu vs gpu decode) {psnr(gpu_dec, cpu_dec):.1f} dB")
            # the reverse direction: CPU-encoded streams decoded on the GPU
            rev_same = same_stream = 0
            for img, e in zip(images[1: k + 1], encoded):
                payload = cpu.encode(img).payload
                same_stream += int(payload == e.payload)
                try:
                    rev_same += int(np.array_equal(cpu.decode(payload), codec.decode(payload)))
                except Exception:
                    pass
            row["cross_device"] = {"gpu_encode_cpu_decode_identical": same, "cpu_decode_failed": failed,
                                   "cpu_encode_gpu_decode_identical": rev_same, "identical_streams": same_stream, "of": k,
                                   "differences": diffs[:5]}
            print(f"{'':22} GPU-encode/CPU-decode identical {same}/{k}, failed {failed}; "
                  f"CPU-encode/GPU-decode identical {rev_same}/{k}; same stream from both {same_stream}/{k}" + (f"; e.g. {diffs[0]}" if diffs else ""))
        report["archs"][arch] = row
        if args.json:  # after each architecture, so a run cut short keeps what it measured
            args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

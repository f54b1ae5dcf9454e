"""Benchmark: the batch path of learned codecs against CompressAI's own per-image compress+decompress loop.

Same images (512x768 by default), same model object, same torch threads. Reported per setting:
images per second of wall time and images per CPU-second of this process (``time.process_time``:
what "per CPU core" means when the two paths may keep different numbers of cores busy), and their
ratio (ours / CompressAI's loop). Also checked: every entropy-coded string of the batch path equals
the loop's for the same image, and the decoded pixels agree.

"ours" is :meth:`encode_batch` + :meth:`decode_batch` of the codec (network batched by padded size,
two batches in flight); "ours+measures" is the shard task's whole per-image work
(:func:`pipeline.modalities.image.encode_many`: also PSNR and the stored PNG), which the loop does not do.
A first pass over the images runs the exactness check (each size's first batch is also coded image by
image, layer by layer) and is not timed: a real run pays it once per size and worker.

Weights are random (seeded) at the zoo's configuration of ``--quality``, written as the researcher's
own checkpoint (``compressai:arch=...,checkpoint=...``): convolution time does not depend on the
weights; entropy-coding time does a little, so read the figures as indicative.

    PYTHONPATH=. .venv/bin/python bench/bench_learned_batch.py --threads 1 --n 8 --batch 4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

ARCHS = ["bmshj2018-hyperprior", "mbt2018-mean"]


def photos(n: int, height: int, width: int) -> list[np.ndarray]:
    """Distinct natural images (scikit-image photographs, resized, flipped every other round)."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(n):
        img = Image.fromarray(sources[i % len(sources)]).resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(img)
        out.append(np.ascontiguousarray(arr[:, ::-1] if (i // len(sources)) % 2 else arr))
    return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def loop(model: Any, rgbs: list[np.ndarray]) -> list[tuple[list[bytes], np.ndarray]]:
    """CompressAI's own way: one image at a time through compress and decompress."""
    import torch

    out = []
    with torch.inference_mode():
        for rgb in rgbs:
            x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div(255.0)
            enc = model.compress(x)
            x_hat = model.decompress(enc["strings"], enc["shape"])["x_hat"]
            pixels = x_hat[0].mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            out.append(([bytes(g[0]) for g in enc["strings"]], pixels))
    return out


def bench_arch(arch: str, quality: int, rgbs: list[np.ndarray], batch: int, folder: Path) -> dict[str, Any]:
    import torch
    from compressai.zoo.image import cfgs, model_architectures

    from pipeline.codecs import bitstream, make_codec
    from pipeline.codecs.spec import parse_spec
    from pipeline.modalities import image

    torch.manual_seed(0)
    model = model_architectures[arch](*cfgs[arch][quality])
    model.update(force=True)
    path = folder / f"{arch}-q{quality}.pth"
    torch.save(model.state_dict(), path)
    codec: Any = make_codec(parse_spec(f"compressai:arch={arch},checkpoint={path}"))
    codec.max_batch = batch
    net = codec._model()  # the model both paths use

    def ours() -> list[np.ndarray]:
        from pipeline.codecs import batching

        keys = [codec.batch_key(r) for r in rgbs]
        parts = batching.chunks(keys, batch)

        def work(part: list[int]) -> tuple[list[Any], list[np.ndarray]]:
            encs = codec.encode_batch([rgbs[i] for i in part])
            return encs, codec.decode_batch([e.payload for e in encs])

        results = batching.run_chunks(work, parts)
        payloads: list[Any] = [None] * len(rgbs)
        for part, (encs, decs) in zip(parts, results):
            for i, e, d in zip(part, encs, decs):
                payloads[i] = (e.payload, d)
        return payloads

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours()  # the exactness check of each size's first batch: once per size and worker, not timed
        loop(net, rgbs[:1])  # warm-up of the loop too
    base, base_wall, base_cpu = timed(lambda: loop(net, rgbs))
    mine, mine_wall, mine_cpu = timed(ours)
    full, full_wall, full_cpu = timed(lambda: image.encode_many(codec, rgbs, {}))
    same_bits = all(list(bitstream.unpack(p).groups) == [(s,) for s in strings]
                    for (p, _), (strings, _) in zip(mine, base))
    same_pixels = all(np.array_equal(d, px) for (_, d), (_, px) in zip(mine, base))
    n = len(rgbs)
    row = {"arch": arch, "quality": quality, "n": n, "batch": batch,
           "batch_exact_on_this_cpu": not any("batching changes" in str(w.message) for w in caught),
           "loop_img_s": n / base_wall, "loop_img_per_cpu_s": n / base_cpu,
           "ours_img_s": n / mine_wall, "ours_img_per_cpu_s": n / mine_cpu,
           "ours_measures_img_s": n / full_wall, "ours_measures_img_per_cpu_s": n / full_cpu,
           "ratio_per_core": (n / mine_cpu) / (n / base_cpu),
           "ratio_per_core_with_measures": (n / full_cpu) / (n / base_cpu),
           "bitstreams_identical": same_bits, "pixels_identical": same_pixels}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=ARCHS)
    ap.add_argument("--quality", type=int, default=3)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ["MPQ_DEVICE"] = "cpu"
    import torch

    torch.set_num_threads(args.threads)
    rgbs = photos(args.n, args.height, args.width)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            row = bench_arch(arch, args.quality, rgbs, args.batch, Path(tmp))
            rows.append(row)
            print(f"{arch} q{args.quality} {args.height}x{args.width} n={args.n} batch={args.batch}: "
                  f"loop {row['loop_img_s']:.3f} img/s ({row['loop_img_per_cpu_s']:.3f}/cpu-s), "
                  f"ours {row['ours_img_s']:.3f} img/s ({row['ours_img_per_cpu_s']:.3f}/cpu-s), "
                  f"with measures {row['ours_measures_img_s']:.3f} img/s; ratio per core {row['ratio_per_core']:.2f} "
                  f"({row['ratio_per_core_with_measures']:.2f} with measures); batch exact here: "
                  f"{row['batch_exact_on_this_cpu']}; bitstreams identical: {row['bitstreams_identical']}, "
                  f"pixels identical: {row['pixels_identical']}", flush=True)
    meta = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "threads": args.threads, "torch": torch.__version__}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

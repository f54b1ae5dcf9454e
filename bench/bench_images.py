"""Benchmark: the image pipeline against a bare loop, and 2 Dask workers against 1.

The bare loop does only the unavoidable work per image (read, decode, encode, decode, PSNR; no
Dask, no tar, no hashing). Per-sample cost is the difference between runs of N and 2N images, so
start-up (cluster, imports, listing) does not hide it. Ratios are measured in one run.

    .venv/bin/python bench/bench_images.py --n 200 --codec jpeg:quality=5 --codec webp:quality=10
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, count: int, size=(512, 384)) -> Path:
    """Distinct JPEG photos (crops and flips of scikit-image/scikit-learn photographs)."""
    from sklearn.datasets import load_sample_image
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
              load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = Image.fromarray(photos[i % len(photos)])
        scale = 1.0 + (i % 5) * 0.15
        big = img.resize((int(size[0] * scale), int(size[1] * scale)), Image.Resampling.BILINEAR)
        x = int(rng.integers(0, big.width - size[0] + 1))
        y = int(rng.integers(0, big.height - size[1] + 1))
        crop = big.crop((x, y, x + size[0], y + size[1]))
        if i % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(folder / f"img_{i:05d}.jpg", quality=92)
    return folder


def bare_loop(files: list[Path], specs) -> float:
    """Seconds for read, decode, encode, decode, PSNR of every file and setting, in this process."""
    from pipeline.codecs import make_codec
    from pipeline.metrics.image import psnr

    codecs = [make_codec(s) for s in specs]
    t0 = time.perf_counter()
    for f in files:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        for c in codecs:
            dec = c.decode(c.encode(rgb).payload)
            psnr(rgb, dec)
    return time.perf_counter() - t0


def pipeline_run(root: Path, out: Path, specs, executor, per_shard: int) -> float:
    from pipeline import TranscodeConfig
    from pipeline.run.driver import transcode

    cfg = TranscodeConfig.create("imagefolder", root, list(specs), out=out, samples_per_shard=per_shard)
    t0 = time.perf_counter()
    res = transcode(cfg, executor)
    dt = time.perf_counter() - t0
    if res.failed or res.shards_written == 0:
        raise RuntimeError(f"benchmark run failed: {res.failed}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="N: runs use N and 2N images")
    ap.add_argument("--codec", action="append", default=None)
    ap.add_argument("--samples-per-shard", type=int, default=20)
    args = ap.parse_args()
    from pipeline.run.cluster import dask_executor
    from pipeline.codecs.spec import unique_specs

    specs = unique_specs(args.codec or ["jpeg:quality=5", "webp:quality=10"])
    tmp = Path(tempfile.mkdtemp(prefix="mpq-bench-"))
    try:
        small = make_images(tmp / "n" / "img", args.n)
        large = make_images(tmp / "2n" / "img", 2 * args.n)
        files_small, files_large = sorted(small.iterdir()), sorted(large.iterdir())
        bare_loop(files_small[:10], specs)  # warm-up: imports, codec libraries
        b1, b2 = bare_loop(files_small, specs), bare_loop(files_large, specs)
        bare = (b2 - b1) / args.n
        cost = {}
        for workers in (1, 2):
            with dask_executor(workers, log=None, dashboard=":0") as ex:
                pipeline_run(small, tmp / f"warm{workers}", specs, ex, args.samples_per_shard)  # warm workers
                p1 = pipeline_run(small, tmp / f"o{workers}n", specs, ex, args.samples_per_shard)
                p2 = pipeline_run(large, tmp / f"o{workers}2n", specs, ex, args.samples_per_shard)
            cost[workers] = (p2 - p1) / args.n
        print(f"settings: {', '.join(s.canonical for s in specs)}; N={args.n}, 512x384 JPEG sources")
        print(f"bare loop:          {b1:7.2f} s (N)  {b2:7.2f} s (2N)  per sample {1e3 * bare:7.2f} ms")
        for w in (1, 2):
            print(f"pipeline {w} worker{'s' if w > 1 else ' '}: per sample {1e3 * cost[w]:7.2f} ms "
                  f"(wall, {w} core{'s' if w > 1 else ''})")
        print(f"pipeline/bare throughput per core (1 worker): {bare / cost[1]:.3f}x  (target >= 0.9)")
        print(f"2 workers vs 1 worker throughput:            {cost[1] / cost[2]:.3f}x  (target >= 1.8)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

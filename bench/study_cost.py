"""What the study costs beyond transcoding: ``mpq eval`` per val image, and loader cores per training GPU.

    .venv/bin/python bench/study_cost.py [--eval-images 24] [--loader-images 192] [--json FILE]

Builds an ImageNet-style val folder of 500x375 photographs (scikit-image crops, JPEG q95, the
size of a typical ImageNet image) and transcodes it to ``jpeg:quality=75`` (a JPEG set) and
``none`` (lossless PNG, what learned codecs and the reference store), then measures on the CPU,
with one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``):

* **eval**: ``mpq eval --task classify --model torchvision:resnet50 --weights RANDOM.pt --workers 0``
  as a subprocess, once with ``--limit 2`` and once on every image; the difference of their CPU
  times over the difference of their images is the CPU-seconds per image of a setting (read,
  decode, preprocess, forward in batches of 16, rows), without start-up. Times 50,000 gives the
  core-hours of one setting of ImageNet val.
* **loader**: ``pipeline.loaders.load`` with the training transform of ``examples/pretrain.py``
  (``RandomResizedCrop(224)``, flip, float, normalize) in a ``Loader`` batching 64, no worker
  processes: samples per CPU-second of one core, after a warm-up pass. 2,500 images/s (one A100
  training ResNet-50 with AMP, NVIDIA's published figure) over that rate is the loader cores one
  GPU needs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples"))

from bench_loader import WNIDS  # noqa: E402 - ten real ILSVRC-2012 classes, shared by the benches

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")
SETTINGS = ("jpeg:quality=75", "none")
GPU_RATE = 2500.0  # images/s, one A100 training ResNet-50 with AMP (NVIDIA's published figure)
VAL_IMAGES = 50_000


def build_folder(root: Path, n: int, seed: int = 0) -> None:
    """``n`` 500x375 photographs (random crops of scikit-image's photos) as ImageNet val JPEGs (q95)."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, p)() for p in PHOTOS]
    photos = [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch = int(rng.integers(min(h, w * 3 // 4) // 2, min(h, w * 3 // 4) + 1))
        cw = ch * 4 // 3
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        im = Image.fromarray(p[y:y + ch, x:x + cw]).resize((500, 375), Image.BICUBIC)
        wnid = WNIDS[i % len(WNIDS)]
        (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
        im.save(root / "val" / wnid / f"ILSVRC2012_val_{i + 1:08d}.JPEG", quality=95)


def transcode(src: Path, out: Path) -> None:
    from pipeline import TranscodeConfig
    from pipeline.run.driver import transcode as run

    run(TranscodeConfig.create("imagenet", src, list(SETTINGS), out=out, split="val", samples_per_shard=64))


def eval_cpu(out: Path, weights: Path, tag_codec: str, limit: int | None, variant: str) -> float:
    """CPU seconds of one ``mpq eval`` subprocess (children's rusage before and after)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipeline", "eval", str(out), "--dataset", "imagenet", "--split", "val",
           "--task", "classify", "--model", "torchvision:resnet50", "--weights", str(weights), "--codec",
           tag_codec, "--workers", "0", "--no-progress", "--variant", variant]
    if limit:
        cmd += ["--limit", str(limit)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def eval_seconds_per_image(out: Path, n: int) -> dict[str, float]:
    import torch
    import torchvision

    weights = out / "resnet50-random.pt"
    torch.save(torchvision.models.get_model("resnet50", weights=None).state_dict(), weights)
    figures = {}
    for codec in SETTINGS:  # the reference is always added: both runs evaluate it too
        small = eval_cpu(out, weights, codec, 2, f"bench-small-{codec.split(':')[0]}")
        full = eval_cpu(out, weights, codec, None, f"bench-full-{codec.split(':')[0]}")
        sets = 1 if codec == "none" else 2
        figures[codec] = (full - small) / (sets * (n - 2))  # per image of one set
    # the jpeg run evaluated none as well: per-set cost of jpeg = that run minus the none share
    figures["jpeg:quality=75"] = 2 * figures["jpeg:quality=75"] - figures["none"]
    return figures


def loader_rate(out: Path, codec: str, rounds: int = 2) -> float:
    """Samples per CPU-second: decode and the training transform, batched, one thread."""
    import torch

    import train_tasks
    from pipeline.loaders import Loader, load

    from torchvision.transforms import v2

    torch.set_num_threads(1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    transform = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    best = 0.0
    for r in range(rounds + 1):  # the first pass warms caches and imports
        ds = load(str(out), "imagenet", "val", codec, shuffle=True, seed=r, buffer=64, transform=transform)
        loader = Loader(ds, batch_size=64, num_workers=0, collate_fn=train_tasks.classify_collate)
        cpu, n = time.process_time(), 0
        for keys, _images, _ in loader:
            n += len(keys)
        rate = n / (time.process_time() - cpu)
        best = rate if r > 0 and rate > best else best
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-images", type=int, default=24)
    p.add_argument("--loader-images", type=int, default=192)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        build_folder(base / "src-loader", args.loader_images)
        transcode(base / "src-loader", base / "loader")
        rates = {c: loader_rate(base / "loader", c) for c in SETTINGS}
        build_folder(base / "src-eval", args.eval_images, seed=1)
        transcode(base / "src-eval", base / "eval")
        per_image = eval_seconds_per_image(base / "eval", args.eval_images)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
              "command": "bench/study_cost.py " + " ".join(sys.argv[1:]),
              "loader_samples_per_cpu_s": rates,
              "loader_cores_per_gpu_at_2500": {c: GPU_RATE / r for c, r in rates.items()},
              "eval_cpu_s_per_image_resnet50": per_image,
              "eval_core_hours_per_setting_50000": {c: s * VAL_IMAGES / 3600 for c, s in per_image.items()}}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

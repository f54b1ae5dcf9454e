"""Evaluation throughput: ``mpq eval`` (per-shard units in this process) against a bare loop.

    .venv/bin/python bench/bench_eval.py [--images 200] [--size 256] [--batch-size 32] [--model resnet18]

Builds an ImageNet-style folder of ``--images`` photographs (scikit-image, random crops resized to
``--size`` square), transcodes it to ``jpeg:quality=30`` shards, saves a random-weight torchvision
classifier as a state dict, then times, in one process, with the same torch threads:

* ``eval``: :func:`pipeline.eval.evaluate` with the in-process executor (what ``--workers 0``
  runs): reading the shards, decoding, the model's preprocessing, the forward pass in batches,
  per-sample rows, part files, the concatenated parquet and the JSON;
* ``bare``: a plain loop over the same decoded images already in memory (no Dask, no files): the
  same preprocessing and model in batches of the same size, top-5 and loss.

Warm-up pass first (model loaded, files cached), then ``--repeat`` interleaved rounds; the best
counts. Target: eval >= 0.9x bare. ``--json`` writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_loader import WNIDS  # noqa: E402 - ten real ILSVRC-2012 classes, shared by the benches

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")


def build_folder(root: Path, n: int, size: int, seed: int = 0) -> None:
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, p)() for p in PHOTOS]
    photos = [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        im = Image.fromarray(p[y:y + s, x:x + s]).resize((size, size), Image.BICUBIC)
        wnid = WNIDS[i % len(WNIDS)]
        (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
        im.save(root / "val" / wnid / f"ILSVRC2012_val_{i + 1:08d}.JPEG", quality=95)


def bare_loop(images: list[np.ndarray], labels: list[int], net, transform, batch: int) -> int:
    import torch
    import torch.nn.functional as F

    n = 0
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.stack([transform(torch.from_numpy(im).permute(2, 0, 1)) for im in images[i:i + batch]])
            logits = net(x)
            y = torch.tensor(labels[i:i + batch])
            F.cross_entropy(logits, y, reduction="none").tolist()
            logits.topk(5, dim=1).indices.tolist()
            n += len(x)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    import torchvision

    from pipeline import TranscodeConfig
    from pipeline.eval import EvalConfig, evaluate
    from pipeline.loaders import load
    from pipeline.run.driver import transcode

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mpq-bench-eval-"))
    src, out = work / "src", work / "out"
    if not (out / "imagenet" / "val").is_dir():
        build_folder(src, args.images, args.size)
        transcode(TranscodeConfig.create("imagenet", src, ["jpeg:quality=30"], out=out, split="val",
                                         samples_per_shard=64))
    torch.manual_seed(0)
    net = torchvision.models.get_model(args.model, weights=None, num_classes=1000).eval()
    weights = work / f"{args.model}.pt"
    torch.save(net.state_dict(), weights)
    transform = torchvision.models.get_model_weights(args.model).DEFAULT.transforms()
    config = EvalConfig.create(str(out), "imagenet", "val", "classify", f"torchvision:{args.model}",
                               codecs=["jpeg:quality=30"], weights=str(weights), batch_size=args.batch_size)
    samples = list(load(str(out), "imagenet", "val", "jpeg:quality=30", image_format="numpy"))
    images, labels = [s["image"] for s in samples], [int(s["label"]) for s in samples]

    def run_eval() -> int:
        for folder in (out / "imagenet" / "val").glob("*/eval"):
            shutil.rmtree(folder)
        result = evaluate(config)
        return sum(d["samples"] + d["errors"] for d in result.published)

    timings: dict[str, list[float]] = {"eval": [], "bare": []}
    counts = {"eval": run_eval(), "bare": bare_loop(images, labels, net, transform, args.batch_size)}  # warm-up
    for _ in range(args.repeat):
        for name, fn in (("eval", run_eval), ("bare", lambda: bare_loop(images, labels, net, transform,
                                                                         args.batch_size))):
            t = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in timings.items()}
    rate = {k: counts[k] / best[k] for k in best}
    report = {"images": len(images), "size": args.size, "model": args.model, "batch_size": args.batch_size,
              "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "cores": len(os.sched_getaffinity(0)), "seconds": timings, "images_per_s": rate,
              "ratio_eval_over_bare": rate["eval"] / rate["bare"]}
    print(f"{len(images)} images {args.size}px, {args.model}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads")
    for k in ("eval", "bare"):
        print(f"  {k:<5} {rate[k]:8.1f} images/s  (best of {args.repeat}: {best[k]:.2f} s)")
    print(f"  eval / bare = {report['ratio_eval_over_bare']:.3f}  (target >= 0.9)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Detection evaluation throughput: ``mpq eval --task detect`` (per-shard units in this process) against a bare
torchvision detection loop.

    .venv/bin/python bench/bench_detect.py [--images 32] [--size 256] [--batch-size 8]
                                           [--model fasterrcnn_mobilenet_v3_large_320_fpn]

Builds a COCO 2017 layout (``val2017/`` and ``annotations/instances_val2017.json``) of ``--images``
photographs (scikit-image, random crops resized to ``--size`` square) with two boxes each, transcodes
it to ``jpeg:quality=30`` shards, saves a random-weight torchvision detector whose box classifier
favours one class (so every image gets its 100 detections, as a trained model's rows hold), then
times, in one process, with the same torch threads:

* ``eval``: :func:`pipeline.eval.evaluate` with the in-process executor (what ``--workers 0``
  runs): reading the shards, decoding images and annotations, the weights' transforms, the forward
  pass in batches, per-sample rows with every detection, part files, the parquet and COCOeval's figures;
* ``bare``: a plain loop over the same decoded images already in memory (no files, no rows): the
  same transforms and model in batches of the same size, detections turned into lists.

Warm-up pass first (model loaded, files cached), then ``--repeat`` interleaved rounds; the best
counts, in wall time and in the process's CPU time (all its threads: steadier on a shared machine).
Target: eval >= 0.9x bare. ``--json`` writes the figures.
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

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")


def build_coco(root: Path, n: int, size: int, seed: int = 0) -> None:
    """``root/val2017/*.jpg`` and ``root/annotations/instances_val2017.json`` with two boxes per image."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, p)() for p in PHOTOS]
    photos = [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        name = f"{i + 1:012d}.jpg"
        Image.fromarray(p[y:y + s, x:x + s]).resize((size, size), Image.BICUBIC).save(root / "val2017" / name,
                                                                                     quality=95)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for k in range(2):
            bx, by = (float(v) for v in rng.integers(0, size // 2, 2))
            bw, bh = (float(v) for v in rng.integers(8, size // 2, 2))
            anns.append({"id": 2 * i + k + 1, "image_id": i + 1, "category_id": 1 + k, "iscrowd": 0,
                         "bbox": [bx, by, bw, bh], "area": bw * bh,
                         "segmentation": [[bx, by, bx + bw, by, bx + bw, by + bh, bx, by + bh]]})
    cats = [{"id": 1, "name": "person", "supercategory": "person"},
            {"id": 2, "name": "bicycle", "supercategory": "vehicle"}]
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))


def bare_loop(images: list[np.ndarray], net, transform, batch: int) -> int:
    import torch

    n = 0
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            outs = net([transform(torch.from_numpy(im).permute(2, 0, 1)) for im in images[i:i + batch]])
            for o in outs:
                o["boxes"].tolist(), o["scores"].tolist(), o["labels"].tolist()
            n += len(outs)
    return n


def random_detector(name: str, path: Path):
    """A random-weight detector saved as a state dict; its box classifier favours class 1."""
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=91).eval()
    with torch.no_grad():
        if hasattr(net, "roi_heads"):
            net.roi_heads.box_predictor.cls_score.bias[1] = 8.0
    torch.save(net.state_dict(), path)
    return net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", default="fasterrcnn_mobilenet_v3_large_320_fpn")
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

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mpq-bench-detect-"))
    src, out = work / "src", work / "out"
    if not (out / "coco" / "val2017").is_dir():
        build_coco(src, args.images, args.size)
        transcode(TranscodeConfig.create("coco", src, ["jpeg:quality=30"], out=out, split="val2017",
                                         samples_per_shard=16))
    weights = work / f"{args.model}.pt"
    net = random_detector(args.model, weights)
    transform = torchvision.models.get_model_weights(args.model).DEFAULT.transforms()
    config = EvalConfig.create(str(out), "coco", "val2017", "detect", f"torchvision:{args.model}",
                               codecs=["jpeg:quality=30"], weights=str(weights), batch_size=args.batch_size)
    images = [s["image"] for s in load(str(out), "coco", "val2017", "jpeg:quality=30", image_format="numpy")]

    def run_eval() -> int:
        for folder in (out / "coco" / "val2017").glob("*/eval"):
            shutil.rmtree(folder)
        result = evaluate(config)
        return sum(d["samples"] + d["errors"] for d in result.published)

    def run_bare() -> int:
        return bare_loop(images, net, transform, args.batch_size)

    timings: dict[str, list[float]] = {"eval": [], "bare": []}
    cpu: dict[str, list[float]] = {"eval": [], "bare": []}
    counts = {"eval": run_eval(), "bare": run_bare()}  # warm-up
    for _ in range(args.repeat):
        for name, fn in (("eval", run_eval), ("bare", run_bare)):
            t, c = time.perf_counter(), time.process_time()
            fn()
            timings[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    best = {k: min(v) for k, v in timings.items()}
    rate = {k: counts[k] / best[k] for k in best}
    cpu_rate = {k: counts[k] / min(v) for k, v in cpu.items()}
    report = {"images": len(images), "size": args.size, "model": args.model, "batch_size": args.batch_size,
              "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "cores": len(os.sched_getaffinity(0)), "seconds": timings, "cpu_seconds": cpu, "images_per_s": rate,
              "images_per_cpu_s": cpu_rate, "ratio_eval_over_bare": rate["eval"] / rate["bare"],
              "ratio_per_cpu_s": cpu_rate["eval"] / cpu_rate["bare"]}
    print(f"{len(images)} images {args.size}px, {args.model}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads")
    for k in ("eval", "bare"):
        print(f"  {k:<5} {rate[k]:8.2f} images/s  (best of {args.repeat}: {best[k]:.2f} s), "
              f"{cpu_rate[k]:.2f} images per CPU-second")
    print(f"  eval / bare = {report['ratio_eval_over_bare']:.3f} wall, {report['ratio_per_cpu_s']:.3f} per CPU-second "
          f"(target >= 0.9)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

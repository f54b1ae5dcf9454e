"""The loader's training stage against torchvision and webdataset: samples per CPU-second, one core.

    .venv/bin/python bench/bench_train.py [--samples 256] [--size 500x375] [--batch 64] [--repeat 2] [--json FILE]

Builds an ImageNet-style folder (``bench_loader.build_source``: train/<wnid>/*.JPEG, photographs
randomly cropped, flipped and resized to ``--size``, JPEG quality 95), transcodes it to a JPEG set
(``jpeg:quality=75``) and the lossless reference in each container (``none``,
``none:container=webp``, ``none:container=jxl``, ``none:container=qoi``), then times one epoch of 224x224 training batches
(random resized crop, horizontal flip, normalized float32, label) in one process with one thread:

* ``mpq``: ``pipeline.loaders.train_loader`` over each set (``TrainTransform()``; pinned memory
  needs a GPU, so it is off here for every run);
* ``mpq draft``: the same with ``draft=True`` on the JPEG set (an approximation, see README);
* ``(a) ImageFolder``: torchvision's ``ImageFolder`` over the source JPEGs with ``RandomResizedCrop(224)``,
  ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize`` in a ``DataLoader``;
* ``(b) webdataset``: ``webdataset.WebDataset`` over the same shards, ``.decode("pil")`` (JPEG XL and QOI
  through imagecodecs into a PIL image), the same torchvision transforms, in a ``DataLoader``.

Every run uses batch ``--batch`` and ``num_workers=0``, so its process's CPU time is all its work;
the best of ``--repeat`` passes counts (files in the page cache for all). Target: ``mpq`` >= 1.5x (a)
and >= 1.2x (b) samples per CPU-second on the JPEG and the lossless sets.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

SETS = ("jpeg:quality=75", "none", "none:container=webp", "none:container=jxl", "none:container=qoi")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _tv_transform() -> Any:
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])


def _count(loader: Any, get: Callable[[Any], tuple[Any, Any]]) -> int:
    n = 0
    for batch in loader:
        images, labels = get(batch)
        if images.shape[1:] != (3, 224, 224) or labels.shape[0] != images.shape[0]:
            raise SystemExit(f"unexpected batch {tuple(images.shape)}")
        n += images.shape[0]
    return n


def run_mpq(out: Path, spec: str, batch: int, draft: bool = False) -> int:
    from pipeline.loaders import TrainTransform, train_loader

    loader = train_loader(str(out), "imagenet", "train", spec, batch_size=batch, drop_last=False, pin_memory=False,
                          transform=TrainTransform(draft=draft))
    return _count(loader, lambda b: (b["image"], b["label"]))


def run_folder(folder: Path, batch: int) -> int:
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(folder), transform=_tv_transform())
    return _count(DataLoader(ds, batch_size=batch, shuffle=True), lambda b: (b[0], b[1]))


def run_wds(tars: list[Path], ext: str, batch: int) -> int:
    import webdataset as wds
    from PIL import Image
    from torch.utils.data import DataLoader

    def jxl(data: bytes) -> Image.Image:
        import imagecodecs

        return Image.fromarray(imagecodecs.jpegxl_decode(data, numthreads=1))

    def qoi(data: bytes) -> Image.Image:  # Pillow's own QOI reader is pure Python: 100x slower
        import imagecodecs

        return Image.fromarray(imagecodecs.qoi_decode(data))

    ds = (wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False)
          .decode(wds.handle_extension("jxl", jxl), wds.handle_extension("qoi", qoi), "pil").to_tuple(ext, "cls").map_tuple(_tv_transform(), int))
    return _count(DataLoader(ds, batch_size=batch), lambda b: (b[0], b[1]))


def measure(runs: dict[str, Callable[[], int]], repeat: int) -> dict[str, dict[str, float]]:
    """Best CPU time of ``repeat`` passes per run (after a warm-up pass), rounds interleaved."""
    best: dict[str, tuple[float, float, int]] = {}
    for fn in runs.values():
        fn()  # warm-up: page cache, imports, codec tables
    for _ in range(repeat):
        for name, fn in runs.items():
            c0, w0 = time.process_time(), time.perf_counter()
            n = fn()
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            if name not in best or cpu < best[name][0]:
                best[name] = (cpu, wall, n)
    return {k: {"samples": n, "cpu_s": c, "wall_s": w, "per_cpu_s": n / c} for k, (c, w, n) in best.items()}


def _build(work: Path, samples: int, size: tuple[int, int]) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_loader import build_source

    from pipeline import TranscodeConfig
    from pipeline.run.driver import transcode

    src, out = work / "src", work / "out"
    if not (src / "train").is_dir():
        build_source(src, samples, size)
    config = TranscodeConfig.create("imagenet", src, list(SETS), out=out, split="train", samples_per_shard=128)
    result = transcode(config)
    if result.failed:
        raise SystemExit(f"transcode failed: {result.failed}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--size", default="500x375")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from pipeline.codecs import lossless
    from pipeline.codecs.spec import parse_spec

    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        out = _build(work, args.samples, (w, h))
        folder = work / "src" / "train"
        results: dict[str, Any] = {}
        for spec in SETS:
            parsed = parse_spec(spec)
            tars = sorted((out / "imagenet" / "train" / parsed.tag).glob("*.tar"))
            ext = "jpg" if parsed.name == "jpeg" else lossless.extension(lossless.container_of(parsed))
            runs = {"mpq": lambda s=spec: run_mpq(out, s, args.batch),
                    "(a) ImageFolder": lambda: run_folder(folder, args.batch),
                    "(b) webdataset": lambda t=tars, e=ext: run_wds(t, e, args.batch)}
            if parsed.name == "jpeg":
                runs["mpq draft"] = lambda s=spec: run_mpq(out, s, args.batch, draft=True)
            res = measure(runs, args.repeat)
            for name in ("mpq", "mpq draft"):
                if name in res:
                    res[name]["vs_a"] = res[name]["per_cpu_s"] / res["(a) ImageFolder"]["per_cpu_s"]
                    res[name]["vs_b"] = res[name]["per_cpu_s"] / res["(b) webdataset"]["per_cpu_s"]
            results[spec] = res
    print(f"{args.samples} images {args.size}, batch {args.batch}, one process, one thread; "
          f"{platform.processor() or platform.machine()}")
    print("| set | run | samples/CPU-s | vs (a) | vs (b) |\n|---|---|---|---|---|")
    for spec, res in results.items():
        for name, r in res.items():
            ratios = f"{r['vs_a']:.2f}x | {r['vs_b']:.2f}x" if "vs_a" in r else "- | -"
            print(f"| `{spec}` | {name} | {r['per_cpu_s']:.0f} | {ratios} |")
    doc = {"samples": args.samples, "size": args.size, "batch": args.batch, "results": results,
           "command": "python bench/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()

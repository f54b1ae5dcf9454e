"""Lossless containers for stored pixels (``none:container=...``, a learned codec's decoded output):
bytes per image, encode and decode CPU milliseconds, on photographs of ImageNet's size.

    .venv/bin/python bench/bench_containers.py [--samples 48] [--size 500x375] [--codec SPEC] [--json FILE]

The images are ``bench_loader.build_source``'s (photographs shipped with scikit-image and
scikit-learn, randomly cropped, flipped and resized to ``--size``, saved as JPEG quality 95 like
ImageNet's sources) decoded as the pipeline decodes sources: the pixels a ``none`` set stores.
``--codec jpeg:quality=50`` (any image setting whose weights are here) measures the containers on
that codec's decoded output instead, what a learned codec's set stores beside its ``.bin``.

Per container, in one process with one thread: the bytes :func:`pipeline.codecs.lossless.encode`
writes, its CPU time, and the CPU time of the loaders' decoder (:func:`pipeline.loaders.decoders.stored_pixels`:
imagecodecs for PNG and lossless WebP, libjxl for JPEG XL) and of Pillow's, best of ``--repeat``
passes; every decode is checked to give the stored pixels back. Also prints ImageNet-train's size
in each container (1,281,167 images at the measured mean).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGENET_TRAIN = 1_281_167


def _images(n: int, size: tuple[int, int], codec: str | None) -> list[np.ndarray]:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_loader import build_source

    from pipeline.codecs import make_codec
    from pipeline.codecs.spec import parse_spec
    from pipeline.media.image import decode_to_rgb

    with tempfile.TemporaryDirectory() as tmp:
        build_source(Path(tmp), n, size)
        files = sorted(Path(tmp).rglob("*.JPEG"))
        images = [decode_to_rgb(f.read_bytes()) for f in files]
    if codec is not None:
        c = make_codec(parse_spec(codec))
        images = [c.decode(c.encode(rgb).payload) for rgb in images]
    return images


def _cpu(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _pillow(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def measure(images: list[np.ndarray], repeat: int) -> dict[str, dict[str, float]]:
    from pipeline.codecs import lossless
    from pipeline.loaders.decoders import stored_pixels

    out = {}
    n = len(images)
    for name in lossless.CONTAINERS:
        payloads = [lossless.encode(rgb, name) for rgb in images]
        enc = _cpu(lambda name=name: [lossless.encode(rgb, name) for rgb in images], 1)
        decoder = stored_pixels(lossless.extension(name))
        for rgb, data in zip(images, payloads):
            if not np.array_equal(decoder(data), rgb) or not np.array_equal(lossless.decode(data, name), rgb):
                raise SystemExit(f"{name}: decoded pixels differ")
        dec = _cpu(lambda f=decoder, p=payloads: [f(d) for d in p], repeat)
        row = {"bytes": sum(map(len, payloads)) / n, "encode_ms": 1e3 * enc / n, "decode_ms": 1e3 * dec / n}
        if name not in ("jxl", "qoi"):  # Pillow has no JPEG XL; its QOI reader is pure Python (~240 ms)
            row["decode_pillow_ms"] = 1e3 * _cpu(lambda p=payloads: [_pillow(d) for d in p], repeat) / n
        row["imagenet_train_gb"] = row["bytes"] * IMAGENET_TRAIN / 1e9
        out[name] = row
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    png = results["png"]["bytes"]
    lines = ["| container | KB per image | vs PNG | encode ms | decode ms (loader) | decode ms (Pillow) | "
             "ImageNet-train GB |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        pil = f"{r['decode_pillow_ms']:.2f}" if "decode_pillow_ms" in r else "-"
        lines.append(f"| {name} | {r['bytes'] / 1e3:.1f} | {100 * (r['bytes'] / png - 1):+.0f} % | "
                     f"{r['encode_ms']:.1f} | {r['decode_ms']:.2f} | {pil} | {r['imagenet_train_gb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--size", default="500x375")
    ap.add_argument("--codec", default=None, help="measure on this setting's decoded output (default: the sources)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    w, h = (int(v) for v in args.size.split("x"))
    images = _images(args.samples, (w, h), args.codec)
    results = measure(images, args.repeat)
    print(f"{len(images)} images {w}x{h}, pixels of {args.codec or 'the JPEG sources'}; "
          f"{platform.processor() or platform.machine()}, one thread, CPU time")
    print(table(results))
    doc = {"samples": len(images), "size": args.size, "codec": args.codec, "results": results,
           "command": "python bench/bench_containers.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()

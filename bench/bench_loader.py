"""Loader throughput: pipeline.loaders on JPEG quality-5 shards against two baselines.

    .venv/bin/python bench/bench_loader.py [--samples 2000] [--size 500x375] [--workdir DIR]

Builds an ImageNet-style folder (train/<wnid>/*.JPEG, photographs shipped with scikit-image and
scikit-learn, randomly cropped, flipped and resized), transcodes it to ``jpeg:quality=5`` shards,
then times, in one process, decoding every sample to a uint8 CHW tensor with its label:

* ``loader``: ``pipeline.loaders.load(...)`` iterated directly (safe decoder table, json record,
  bits/bpp, label). Its JPEG entry decodes with libjpeg-turbo through imagecodecs, straight into
  one array; the benchmark first checks that every tensor equals Pillow's pixels;
* ``loader_pillow``: the same with Pillow as the JPEG decoder (``decoders={"jpg": pil_rgb}``),
  which isolates the loader's own overhead;
* ``(a) tar+Pillow``: a bare loop over the same tars with ``tarfile`` and Pillow, nothing else;
* ``(b) folder``: the same JPEG payloads as files in a torchvision ``ImageFolder``, read one
  file at a time (``PILToTensor``).

Each is run ``--repeat`` times after a warm-up pass (files in the page cache for all three), the
rounds interleaved; the best pass counts, by CPU time of the process and by wall-clock time. Prints samples/s and the ratios; ``--json`` writes them to a file. Target:
loader >= 0.9x (a) and faster than (b).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "china", "flower")
#: ten real ILSVRC-2012 classes (the first of the sorted list): the imagenet source labels a folder by
#: its wnid's index in that list and skips any other folder
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041",
         "n01514668", "n01514859", "n01518878"]


def _photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        data = load_sample_images()
        return data.images[[Path(f).stem for f in data.filenames].index(name)]
    import skimage.data

    return getattr(skimage.data, name)()


def build_source(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    """``n`` JPEG (quality 95) photographs of ``size`` (w, h) in ImageNet's train layout."""
    rng = np.random.default_rng(seed)
    photos = [_photo(p) for p in PHOTOS]
    w, h = size
    for i in range(n):
        full = photos[i % len(photos)]
        fh, fw = full.shape[:2]
        ch, cw = int(fh * rng.uniform(0.5, 1.0)), int(fw * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, fh - ch + 1), rng.integers(0, fw - cw + 1)
        img = Image.fromarray(full[y:y + ch, x:x + cw]).resize((w, h), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        wnid = WNIDS[i % len(WNIDS)]
        folder = root / "train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{wnid}_{i:06d}.JPEG", quality=95)


def run_loader(out: Path) -> int:
    from pipeline.loaders import load

    n = 0
    for s in load(out, "imagenet", "train", "jpeg:quality=5"):
        assert s["image"].ndim == 3 and s["label"] >= 0
        n += 1
    return n


def run_loader_pillow(out: Path) -> int:
    """The loader with Pillow as its JPEG decoder, to show its own overhead over the bare loop."""
    from pipeline.loaders import load
    from pipeline.loaders.decoders import pil_rgb

    n = 0
    for s in load(out, "imagenet", "train", "jpeg:quality=5", decoders={"jpg": pil_rgb}):
        assert s["image"].ndim == 3 and s["label"] >= 0
        n += 1
    return n


def run_tar_pillow(tars: list[Path]) -> int:
    import torch

    n = 0
    for path in tars:
        with tarfile.open(path) as tf:
            for m in tf:
                if m.name.endswith(".jpg"):
                    data = tf.extractfile(m).read()
                    img = Image.open(io.BytesIO(data)).convert("RGB")
                    image = torch.from_numpy(np.array(img)).permute(2, 0, 1)
                    assert image.ndim == 3
                    n += 1
                elif m.name.endswith(".cls"):
                    label = int(tf.extractfile(m).read())
                    assert label >= 0
    return n


def run_folder(folder: Path) -> int:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import PILToTensor

    ds = ImageFolder(str(folder), transform=PILToTensor())
    n = 0
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.ndim == 3 and label >= 0
        n += 1
    return n


def check_same_pixels(out: Path, tars: list[Path]) -> None:
    """The loader's tensors are exactly Pillow's pixels (its fast JPEG path must not change them)."""
    import torch

    from pipeline.loaders import load

    pillow = {}
    for path in tars:
        with tarfile.open(path) as tf:
            for m in tf:
                if m.name.endswith(".jpg"):
                    img = Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")
                    pillow[m.name.partition(".")[0]] = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    for s in load(out, "imagenet", "train", "jpeg:quality=5"):
        if not torch.equal(s["image"], pillow.pop(s["__key__"])):
            raise SystemExit(f"{s['__key__']}: the loader's pixels differ from Pillow's")
    if pillow:
        raise SystemExit(f"the loader missed {len(pillow)} samples")


def measure(runs: dict, repeat: int, expected: int) -> dict[str, dict[str, float]]:
    """Best wall-clock and CPU-time rates of each run, rounds interleaved so load changes hit all alike.

    CPU time (``time.process_time``) is what a loader costs its process; it is the fairer figure
    on a shared machine, where wall-clock time also measures the neighbours.
    """
    for fn, arg in runs.values():  # warm-up: page cache, imports, codec tables
        fn(arg)
    best = {name: {"wall": 0.0, "cpu": 0.0} for name in runs}
    for _ in range(repeat):
        for name, (fn, arg) in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            count = fn(arg)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            if count != expected:
                raise SystemExit(f"{name} read {count} samples, the set holds {expected}")
            best[name]["wall"] = max(best[name]["wall"], count / wall)
            best[name]["cpu"] = max(best[name]["cpu"], count / cpu)
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--size", default="500x375", help="image size WxH (ImageNet's most common is 500x375)")
    p.add_argument("--samples-per-shard", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", default=None, help="keep the data here (default: a temporary folder)")
    p.add_argument("--json", default=None, help="write the results to this file")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))

    from pipeline import TranscodeConfig
    from pipeline.run.driver import transcode

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mpq-bench-loader-"))
    src, out, folder = work / "imagenet", work / "shards", work / "folder"
    if not (src / "train").is_dir():
        build_source(src, args.samples, (w, h))
    config = TranscodeConfig.create("imagenet", src, ["jpeg:quality=5"], out=out, split="train",
                                    samples_per_shard=args.samples_per_shard)
    result = transcode(config)
    if result.failed:
        raise SystemExit(f"transcode failed: {result.failed}")
    set_dir = Path(result.sets[0].folder)
    tars = sorted(set_dir.glob("*.tar"))
    if not folder.is_dir():  # the same payload bytes as one file per image, in class folders
        for tar in tars:
            with tarfile.open(tar) as tf:
                for m in tf:
                    if m.name.endswith(".jpg"):
                        key = m.name.partition(".")[0]
                        d = folder / key.split("_")[0]
                        d.mkdir(parents=True, exist_ok=True)
                        (d / f"{key}.jpg").write_bytes(tf.extractfile(m).read())

    ok = result.sets[0].ok
    check_same_pixels(out, tars)
    rates = measure({"loader": (run_loader, out), "loader_pillow": (run_loader_pillow, out),
                     "tar_pillow": (run_tar_pillow, tars),
                     "folder": (run_folder, folder)}, args.repeat, ok)
    import PIL
    import torch

    report = {
        "samples": result.sets[0].ok, "size": f"{w}x{h}", "codec": "jpeg:quality=5",
        "bytes_per_sample": sum(t.stat().st_size for t in tars) / result.sets[0].ok,
        "samples_per_s": {k: {m: round(x, 1) for m, x in v.items()} for k, v in rates.items()},
        "loader_vs_tar_pillow": {m: round(rates["loader"][m] / rates["tar_pillow"][m], 3) for m in ("cpu", "wall")},
        "loader_vs_folder": {m: round(rates["loader"][m] / rates["folder"][m], 3) for m in ("cpu", "wall")},
        "loader_pillow_vs_tar_pillow": {m: round(rates["loader_pillow"][m] / rates["tar_pillow"][m], 3)
                                        for m in ("cpu", "wall")},
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                    "pillow": PIL.__version__, "torch": torch.__version__},
    }
    print(f"{report['samples']} samples {report['size']} jpeg q5, {report['bytes_per_sample']:.0f} B/sample in tars")
    print(f"  {'':13s} {'per CPU-s':>10s} {'per wall-s':>10s}")
    for k, v in rates.items():
        print(f"  {k:13s} {v['cpu']:10.1f} {v['wall']:10.1f}  samples/s")
    for key, label, target in (("loader_vs_tar_pillow", "loader / (a) tar+Pillow", "target >= 0.9"),
                               ("loader_vs_folder", "loader / (b) folder", "target > 1"),
                               ("loader_pillow_vs_tar_pillow", "loader_pillow / (a)", "same decoder")):
        r = report[key]
        print(f"  {label:24s} cpu {r['cpu']:.3f}  wall {r['wall']:.3f}  ({target})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

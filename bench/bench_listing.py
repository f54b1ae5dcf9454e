"""Benchmark: what the client (the process running ``mpq transcode``) spends on listing a large tree, and
what a rerun that finds nothing to do costs against the first run.

``make`` writes a tree of tiny files fast (one small JPEG's bytes in every file): the ImageNet-train
layout (``train/<wnid>/<wnid>_<n>.JPEG``, 1,000 classes) or the imagefolder one
(``<class>/<n>.jpg``). ``listing`` lists it in a fresh process per measurement and reports wall time
and the process's peak resident memory (``ru_maxrss``) for the source's ``list()`` alone and for
``plan()`` (listing and every shard task, what the client holds while the run goes). ``rerun`` runs
``transcode`` in this process (``--codec``, default ``none``), then again, and reports both: the second
one only lists and checks (each shard's stats, its sources' key, its tar's size and SHA-256).

    .venv/bin/python bench/bench_listing.py make --layout imagenet --files 1281167 /tmp/inet
    .venv/bin/python bench/bench_listing.py listing --dataset imagenet --split train /tmp/inet
    .venv/bin/python bench/bench_listing.py make --layout imagefolder --files 100000 /tmp/folder
    .venv/bin/python bench/bench_listing.py rerun --dataset imagefolder /tmp/folder --out /tmp/folder-out

Run it with ``PYTHONPATH`` pointing at another checkout to measure that version's client.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = 1000


def tiny_jpeg() -> bytes:
    """An 8x8 JPEG (a few hundred bytes), so a tree of a million files stays small."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make(root: Path, files: int, layout: str) -> float:
    """Write ``files`` files spread over ``CLASSES`` folders; returns seconds."""
    start = time.perf_counter()
    data = tiny_jpeg()
    base = root / "train" if layout == "imagenet" else root
    for c in range(CLASSES):
        name = f"n{c:08d}" if layout == "imagenet" else f"class{c:04d}"
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(c, files, CLASSES):
            fname = f"{name}_{i}.JPEG" if layout == "imagenet" else f"{i:07d}.jpg"
            fd = os.open(folder / fname, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.close(fd)
    return time.perf_counter() - start


_CHILD = """
import json, resource, sys, time
from pipeline import TranscodeConfig
from pipeline.run.driver import plan
from pipeline.sources import make_source
what, dataset, root, split, per_shard = sys.argv[1:6]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if what == "list":
    n = len(make_source(dataset, root, split or None).list())
else:
    config = TranscodeConfig.create(dataset, root, ["none"], out="/nonexistent", split=split or None,
                                    samples_per_shard=int(per_shard))
    source, tasks = plan(config)
    n = sum(len(t.refs) for t in tasks)
import pipeline
print(json.dumps({"what": what, "samples": n, "pipeline": pipeline.__file__, "seconds": time.perf_counter() - start,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "imports_mb": base / 1024}))
"""


def listing(dataset: str, root: str, split: str | None, per_shard: int) -> list[dict]:
    """List and plan in fresh processes (so each peak is its own); the imports' memory is reported too."""
    out = []
    for what in ("list", "plan"):
        # run from a neutral folder: ``python -c`` puts the working directory first on sys.path
        proc = subprocess.run([sys.executable, "-c", _CHILD, what, dataset, os.path.abspath(root), split or "",
                               str(per_shard)], capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def rerun(dataset: str, root: str, split: str | None, out: str, codec: str, per_shard: int) -> dict:
    from pipeline import TranscodeConfig
    from pipeline.run.driver import plan, transcode

    config = TranscodeConfig.create(dataset, root, [codec], out=out, split=split, samples_per_shard=per_shard)
    figures = {}
    for run in ("first", "rerun"):
        start = time.perf_counter()
        planned = plan(config)
        listed = time.perf_counter() - start
        result = transcode(config, planned=planned)
        figures[run] = {"listing_s": round(listed, 2), "total_s": round(time.perf_counter() - start, 2),
                        "written": result.shards_written, "cached": result.shards_cached,
                        "samples": result.listed}
    figures["rerun_fraction_of_first"] = round(figures["rerun"]["total_s"] / figures["first"]["total_s"], 4)
    figures["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # both runs, in-process
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("root", type=Path)
    m.add_argument("--files", type=int, default=100_000)
    m.add_argument("--layout", choices=["imagenet", "imagefolder"], default="imagefolder")
    for name in ("listing", "rerun"):
        p = sub.add_parser(name)
        p.add_argument("root")
        p.add_argument("--dataset", default="imagefolder")
        p.add_argument("--split", default=None)
        p.add_argument("--samples-per-shard", type=int, default=1000)
        if name == "rerun":
            p.add_argument("--out", required=True)
            p.add_argument("--codec", default="none")
    args = ap.parse_args()
    if args.cmd == "make":
        print(json.dumps({"files": args.files, "seconds": round(make(args.root, args.files, args.layout), 1)}))
    elif args.cmd == "listing":
        for row in listing(args.dataset, args.root, args.split, args.samples_per_shard):
            print(json.dumps(row))
    else:
        print(json.dumps(rerun(args.dataset, args.root, args.split, args.out, args.codec, args.samples_per_shard),
                         indent=1))


if __name__ == "__main__":
    main()

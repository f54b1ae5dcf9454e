"""glibc malloc arenas and MS-ILLM on a worker thread: system time per image with and without one arena.

    PYTHONPATH=. .venv/bin/python bench/bench_arena.py [--repeat 2] [--height 512] [--width 768]

A Dask worker codes on a pool thread. glibc gives such a thread an arena of its own whose heaps cannot hold a
block above 64 MB, so MS-ILLM's ~94 MB activations at 512x768 are mapped and page-faulted afresh for every
image. This runs ``compress`` + ``decompress`` of the HiFiC autoencoder at its published size (random
weights, one torch thread) on a pool thread, in a child process with Dask's allocator setting
(``MALLOC_TRIM_THRESHOLD_``), configured as a worker was before (glibc's default arenas, the worker plugin's
earlier thresholds: mmap 64 MB, trim 256 MB) and as ``pipeline/run/cluster.py`` configures the workers it
starts now (``MALLOC_ARENA_MAX=1`` and ``restore_malloc_thresholds``), and prints wall, user and system
seconds per image.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np, PIL.Image, skimage.data, torch
torch.set_num_threads(1)
import ctypes, os
from pipeline.run.cluster import restore_malloc_thresholds
if os.environ.get("MPQ_BENCH_EARLIER") == "1":
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 << 20), libc.mallopt(-1, 256 << 20)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
else:
    restore_malloc_thresholds()
from pipeline.codecs import msillm_net
height, width, repeat = map(int, sys.argv[1:4])
torch.manual_seed(0)
model = msillm_net.HiFiCAutoencoder()
model.update(force=True)
model.eval().requires_grad_(False)
img = np.array(PIL.Image.fromarray(skimage.data.astronaut()).resize((width, height)))
x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255

def work():
    with torch.no_grad():
        out = model.compress(x)
        model.decompress(out["strings"], out["shape"])

def timed():
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    work()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter() - t, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime

with ThreadPoolExecutor(1) as pool:
    pool.submit(work).result()  # warm-up
    print(json.dumps([pool.submit(timed).result() for _ in range(repeat)]))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=768)
    args = ap.parse_args()
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    base["MALLOC_TRIM_THRESHOLD_"] = "65536"  # what Dask's nanny sets in every worker
    for name, extra in (("worker before", {"MPQ_BENCH_EARLIER": "1"}),
                        ("worker now", {"MALLOC_ARENA_MAX": "1"})):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.height), str(args.width), str(args.repeat)],
                             env={**base, **extra}, capture_output=True, text=True, check=True)
        runs = json.loads(out.stdout.strip().splitlines()[-1])
        cells = ", ".join(f"wall {w:.2f} s user {u:.2f} s sys {s:.2f} s" for w, u, s in runs)
        print(f"{name:<22} per image: {cells}")


if __name__ == "__main__":
    main()

"""Benchmark: the pipeline's coding of learned codecs against CompressAI's own per-image compress+decompress loop.

Same images (512x768 by default), same model object, same torch threads. Reported per setting:
images per second of wall time and images per CPU-second of this process (``time.process_time``:
what "per CPU core" means when the two paths may keep different numbers of cores busy), and their
ratio (ours / CompressAI's loop). Also checked: every entropy-coded string of the batch path equals
the loop's for the same image, and the decoded pixels agree.

"oursB" is what a transcode does: :meth:`encode_batch` + :meth:`decode_encoded` of the codec with the
network batched B images at a time (B = 1: one image at a time on the calling thread, as a CPU worker
codes; B > 1: two batches in flight on the thread pool, as a GPU worker codes), the pixels synthesised
from the latents the encoder kept (:mod:`pipeline.codecs.latents`; the entropy decoding of ``y`` is
skipped); "bytesB" the same with the pixels decoded from the bytes (:meth:`decode_batch`, what
``mpq decode`` does, and what the pipeline did before); "measures" is the shard task's whole
per-image work at the device's default batch as ``pipeline/run/events.py`` runs it
(:func:`pipeline.modalities.image.encode`, or ``encode_many`` where the setting batches: also PSNR
and the stored PNG), which the loop does not do. Where the work runs matters: the msillm loop on a
pool thread cost 1.1 s more system time per 512x768 image than on the main thread (0.0 s; measured
with ``os.times``, torch 2.11), most likely page faults of its large activations (60 channels at full
resolution, 94 MB), which glibc maps afresh in a thread's own arena but reuses in the main heap.
The paths are timed interleaved, ``--repeat`` times, keeping each one's least CPU time.
A first pass over the images runs the exactness check (each size's first batch is also coded image by
image, layer by layer) and is not timed: a real run pays it once per size and worker.

Weights are random (seeded) at the zoo's configuration of ``--quality``, written as the researcher's
own checkpoint (``compressai:arch=...,checkpoint=...``); ``msillm`` is a random
:class:`~pipeline.codecs.msillm_net.HiFiCAutoencoder` of the published size (181 million parameters)
written under the published file name of ``--quality`` into a weights folder (``msillm:quality=Q``).
Convolution time does not depend on the weights; entropy-coding time does a little, so read the
figures as indicative.

    PYTHONPATH=. .venv/bin/python bench/bench_learned_batch.py --threads 1 --n 4 --batches 1 --repeat 3
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

ARCHS = ["bmshj2018-hyperprior", "mbt2018-mean", "msillm"]


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


def random_codec(arch: str, quality: int, folder: Path) -> Any:
    """The codec of ``arch`` over random weights (seeded) written where it loads them from."""
    import torch

    from pipeline.codecs import make_codec
    from pipeline.codecs.spec import parse_spec

    torch.manual_seed(0)
    if arch == "msillm":
        from pipeline.codecs import msillm, msillm_net

        net = msillm_net.HiFiCAutoencoder()  # the published sizes
        net.update(force=True)
        torch.save(net.state_dict(), folder / f"msillm_target_{msillm.TARGET_BPP[str(quality)]}bpp.ckpt")
        del net
        os.environ["MPQ_WEIGHTS_DIR"] = str(folder)
        os.environ["MPQ_OFFLINE"] = "1"
        return make_codec(parse_spec(f"msillm:quality={quality}"))
    from compressai.zoo.image import cfgs, model_architectures

    model = model_architectures[arch](*cfgs[arch][quality])
    model.update(force=True)
    path = folder / f"{arch}-q{quality}.pth"
    torch.save(model.state_dict(), path)
    return make_codec(parse_spec(f"compressai:arch={arch},checkpoint={path}"))


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


def bench_arch(arch: str, quality: int, rgbs: list[np.ndarray], batches: list[int], repeat: int,
               folder: Path) -> list[dict[str, Any]]:
    from pipeline.codecs import batching, bitstream
    from pipeline.modalities import image

    codec: Any = random_codec(arch, quality, folder)
    net = codec._model()  # the model both paths use
    default = codec.max_batch

    def ours(batch: int, kept: bool = True) -> list[tuple[bytes, np.ndarray]]:
        codec.cpu_batch = batch
        parts = batching.chunks([codec.batch_key(r) for r in rgbs], batch)

        def work(part: list[int]) -> tuple[list[Any], list[np.ndarray]]:
            encs = codec.encode_batch([rgbs[i] for i in part])
            if kept:
                decs, source = codec.decode_encoded(encs)
                sources.add(source)
                return encs, decs
            return encs, codec.decode_batch([e.payload for e in encs])

        # batch 1 is a CPU worker's way: one image at a time on the calling thread (a shard task goes
        # through encode_many and its thread pool only for a setting that batches)
        results = [work(p) for p in parts] if batch == 1 else batching.run_chunks(work, parts)
        out: list[Any] = [None] * len(rgbs)
        for part, (encs, decs) in zip(parts, results):
            for i, e, d in zip(part, encs, decs):
                out[i] = (e.payload, d)
        return out

    sources: set[str] = set()

    def measures(batch: int) -> list[Any]:
        """The shard task's work at the device's default batch, as events.py runs it."""
        codec.cpu_batch = batch
        if image.batched(codec, {}):
            return image.encode_many(codec, rgbs, {})
        return [image.encode(codec, rgb, {}) for rgb in rgbs]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for b in batches:
            ours(b)  # each size's first batch is checked layer by layer: once per size and worker, not timed
            ours(b, kept=False)
        loop(net, rgbs[:1])
    sources.clear()
    best: dict[str, float] = {}
    results: dict[str, Any] = {}
    for _ in range(repeat):  # interleaved, the least CPU time of each: the machine is shared
        for name, fn in [("loop", lambda: loop(net, rgbs)), *[(f"ours{b}", lambda b=b: ours(b)) for b in batches],
                         *[(f"bytes{b}", lambda b=b: ours(b, kept=False)) for b in batches],
                         ("measures", lambda: measures(default))]:
            out, wall, cpu = timed(fn)
            results[name] = out
            best[f"{name}_wall"] = min(best.get(f"{name}_wall", 1e18), wall)
            best[f"{name}_cpu"] = min(best.get(f"{name}_cpu", 1e18), cpu)
    n, rows = len(rgbs), []
    base = results["loop"]
    for name, b in [*[(f"ours{b}", b) for b in batches], *[(f"bytes{b}", b) for b in batches], ("measures", 0)]:
        mine = results[name]
        same_bits = same_pixels = None
        if b:
            same_bits = all(list(bitstream.unpack(p).groups) == [(s,) for s in strings]
                            for (p, _), (strings, _) in zip(mine, base))
            same_pixels = all(np.array_equal(d, px) for (_, d), (_, px) in zip(mine, base))
        rows.append({"arch": arch, "quality": quality, "n": n, "path": name, "batch": b or default,
                     "batch_exact_on_this_cpu": not any("batching changes" in str(w.message) for w in caught),
                     "kept_exact_on_this_cpu": not any(isinstance(w.message, batching.KeptLatentInexactWarning)
                                                       for w in caught),
                     "decoded_from": ("/".join(sorted(sources)) if name.startswith("ours") else "bytes" if b else
                                      "/".join(sorted({str(m.get("decoded_from")) for _, m in mine}))),
                     "loop_img_s": n / best["loop_wall"], "loop_img_per_cpu_s": n / best["loop_cpu"],
                     "ours_img_s": n / best[f"{name}_wall"], "ours_img_per_cpu_s": n / best[f"{name}_cpu"],
                     "ratio_per_core": best["loop_cpu"] / best[f"{name}_cpu"],
                     "bitstreams_identical": same_bits, "pixels_identical": same_pixels})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=ARCHS)
    ap.add_argument("--quality", type=int, default=3)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--batches", type=int, nargs="+", default=[1], help="batch sizes of the network")
    ap.add_argument("--repeat", type=int, default=3)
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
            for row in bench_arch(arch, args.quality, rgbs, args.batches, args.repeat, Path(tmp)):
                rows.append(row)
                print(f"{arch} q{args.quality} {args.height}x{args.width} n={args.n} {row['path']} "
                      f"(batch {row['batch']}): loop {row['loop_img_s']:.3f} img/s "
                      f"({row['loop_img_per_cpu_s']:.3f}/cpu-s), ours {row['ours_img_s']:.3f} img/s "
                      f"({row['ours_img_per_cpu_s']:.3f}/cpu-s); ratio per core {row['ratio_per_core']:.3f}; "
                      f"decoded from: {row['decoded_from']}; batch exact here: {row['batch_exact_on_this_cpu']}, "
                      f"kept latents exact here: {row['kept_exact_on_this_cpu']}; bitstreams identical: "
                      f"{row['bitstreams_identical']}, pixels identical: {row['pixels_identical']}", flush=True)
    meta = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "threads": args.threads, "torch": torch.__version__}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

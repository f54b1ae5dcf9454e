"""Benchmark: LPIPS and CDPAM inside the pipeline against a bare loop over the same decoded pairs.

Inside the pipeline a deep metric costs what a transcode with ``--lpips`` (``--cdpam``) takes beyond
the same transcode without it, per sample (in-process runs, so only the metric differs). The bare
loop calls the same loaded network, one pair at a time as the pipeline does, on the very pairs the
pipeline scored (sources decoded, payloads decoded back); ratio = bare / pipeline (target >= 0.9).
A batched figure (``distances`` over all pairs of one size at once) is printed beside it. Last,
CDPAM's cost per distance on one 7 s clip with one CPU thread.

No network here: the LPIPS backbone is a random AlexNet written to a temporary weights folder under
torchvision's file name (its SHA-256 check is bypassed for that file); it costs what ImageNet weights cost.

    PYTHONPATH=. .venv/bin/python bench/bench_similarity.py --images 16 --clips 3 --repeat 3
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _transcode(config):
    from pipeline.run.driver import InlineExecutor, transcode

    t0 = time.perf_counter()
    result = transcode(config, InlineExecutor(), progress=False)
    return time.perf_counter() - t0, result


def bench_lpips(tmp: Path, n: int, size: int, repeat: int) -> None:
    import torch
    import torchvision.models as tvm

    import pipeline.codecs.weights as weights
    from bench_images import make_images
    from pipeline import TranscodeConfig, parse_spec
    from pipeline.codecs import make_codec
    from pipeline.media.image import decode_to_rgb
    from pipeline.metrics import deep
    from pipeline.metrics.deep.image import backbone_file

    root = make_images(tmp / "img", n, (size, size))
    wdir = tmp / "weights"
    wdir.mkdir()
    torch.manual_seed(0)
    torch.save(tvm.alexnet(weights=None).state_dict(), wdir / backbone_file("alex").filename)
    weights.verify = lambda *a: None  # a random stand-in for the ImageNet file (see the module docstring)
    spec = "jpeg:quality=30"
    kw = dict(samples_per_shard=n)
    warm = np.zeros((size, size, 3), np.uint8)  # loaded and run once first, as on a worker after its first sample
    deep.cached("lpips:alex", "cpu", str(wdir), True).distances([warm] * 2, [warm] * 2)
    plain = with_lpips = math.inf
    for r in range(repeat):  # the fastest of the repeats: the machine is shared
        plain = min(plain, _transcode(TranscodeConfig.create("imagefolder", root, [spec], out=tmp / f"a{r}", **kw))[0])
        t, res = _transcode(TranscodeConfig.create("imagefolder", root, [spec], out=tmp / f"b{r}", lpips="alex",
                                                   weights_dir=wdir, offline=True, **kw))
        with_lpips = min(with_lpips, t)
    codec = make_codec(parse_spec(spec))
    folder = Path(res.sets[0].folder)
    import pyarrow.parquet as pq

    rows = pq.read_table(folder / "manifest.parquet").to_pandas()
    from fixtures import group_members, read_tar

    payloads = {k: dict(v)["jpg"] for t in sorted(folder.glob("*.tar")) for k, v in group_members(read_tar(t)).items()}
    refs = [decode_to_rgb((root / src).read_bytes()) for src in rows["source"]]
    tests = [codec.decode(payloads[k]) for k in rows["key"]]
    metric = deep.cached("lpips:alex", "cpu", str(wdir), True)
    t_bare = t_batch = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        bare = [metric.distances([a], [b])[0] for a, b in zip(refs, tests)]
        t_bare = min(t_bare, (time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        metric.distances(refs, tests)
        t_batch = min(t_batch, (time.perf_counter() - t0) / n)
    if not np.allclose(bare, rows["lpips_alex"].to_numpy(float), rtol=1e-5):
        raise SystemExit("the pipeline's lpips_alex differs from the bare loop")
    added = (with_lpips - plain) / n
    print(f"LPIPS alex, {n} images {size}x{size}, CPU, {torch.get_num_threads()} threads:")
    print(f"  pipeline: {plain / n * 1e3:.1f} ms/image without, {with_lpips / n * 1e3:.1f} ms/image with --lpips "
          f"(+{added * 1e3:.1f} ms; metric timer deep_s mean {rows['deep_s'].mean() * 1e3:.1f} ms)")
    print(f"  bare loop: {t_bare * 1e3:.1f} ms/pair; batched: {t_batch * 1e3:.1f} ms/pair; "
          f"ratio bare/pipeline {t_bare / added:.2f}")


def bench_cdpam(tmp: Path, n: int, seconds: float) -> None:
    import torch

    import audio_fixtures as af
    from pipeline import TranscodeConfig, parse_spec
    from pipeline.codecs import make_codec
    from pipeline.metrics import deep
    from pipeline.modalities.audio import decode_payload

    libri = af.build_librispeech(tmp / "libri", seconds=seconds)
    spec = "mp3:kbps=32"
    kw = dict(split="dev-clean", limit=n, samples_per_shard=n)
    metric = deep.cached("cdpam", "cpu")
    plain, _ = _transcode(TranscodeConfig.create("librispeech", libri.root, [spec], out=tmp / "a", **kw))
    with_cdpam, res = _transcode(TranscodeConfig.create("librispeech", libri.root, [spec], out=tmp / "b",
                                                        cdpam=True, **kw))
    import tarfile

    import pyarrow.parquet as pq

    folder = Path(res.sets[0].folder)
    rows = pq.read_table(folder / "manifest.parquet").to_pandas()
    rows = rows[rows["status"] == "ok"]
    files: dict[str, dict[str, bytes]] = {}
    for t in sorted(folder.glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                key, _, ext = m.name.partition(".")
                files.setdefault(key, {})[ext] = tf.extractfile(m).read()
    codec = make_codec(parse_spec(spec))
    import json

    records = [json.loads(files[k]["json"]) for k in rows["key"]]  # the .json: integers stay integers
    refs = [af.as_float(libri.samples[r["key"]]) for r in records]
    tests = [decode_payload(codec, files[r["key"]]["mp3"], r) for r in records]
    metric._refs.clear()  # as in the pipeline, each reference is embedded once
    t0 = time.perf_counter()
    bare = [metric.distances([a], [b], rate=16000)[0] for a, b in zip(refs, tests)]
    t_bare = (time.perf_counter() - t0) / len(records)
    if not np.allclose(bare, rows["cdpam"].to_numpy(float), rtol=1e-4):
        raise SystemExit("the pipeline's cdpam differs from the bare loop")
    added = (with_cdpam - plain) / len(records)
    print(f"CDPAM, {len(records)} clips, mean {np.mean([len(r) / 16000 for r in refs]):.2f} s, CPU, "
          f"{torch.get_num_threads()} threads:")
    print(f"  pipeline: +{added:.2f} s/clip with --cdpam (deep_s mean {rows['deep_s'].mean():.2f} s); "
          f"bare loop {t_bare:.2f} s/pair; ratio bare/pipeline {t_bare / added:.2f}")


def cdpam_one_core(seconds: float = 7.0) -> None:
    import torch

    from pipeline.metrics import deep

    torch.set_num_threads(1)
    metric = deep.get_metric("cdpam").load()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((int(22050 * seconds), 1)) * 0.1).astype(np.float32)
    y = x + (rng.standard_normal(x.shape) * 0.01).astype(np.float32)
    t0 = time.perf_counter()
    metric.distances([x], [y], rate=22050)
    print(f"CDPAM on 1 CPU thread: {time.perf_counter() - t0:.1f} s per distance for a {seconds:.0f} s clip "
          "(two embeddings; a reference embedded before costs half)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0, help="length of the CDPAM test clips")
    ap.add_argument("--repeat", type=int, default=3, help="LPIPS: the fastest of this many runs of each side")
    ap.add_argument("--skip", choices=["lpips", "cdpam", "one-core"], action="append", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if "lpips" not in args.skip:
            bench_lpips(Path(tmp) / "lp", args.images, args.size, args.repeat)
        if "cdpam" not in args.skip:
            bench_cdpam(Path(tmp) / "cd", args.clips, args.seconds)
    if "one-core" not in args.skip:
        cdpam_one_core()


if __name__ == "__main__":
    main()

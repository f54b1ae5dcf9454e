"""Benchmark: ``mpq eval --task similarity`` over N lossy settings, the reference set ``none`` decoded once
per run against once per set.

- before: one unit per (set, shard), each reading ``none`` beside its set through the loader's
  ``paired=True`` join (``run_eval_shard``, what ``mpq eval`` ran before): ``none`` is decoded N times;
- after: ``evaluate``, one unit per shard index for every set (:mod:`pipeline.eval.reference`):
  ``none`` is decoded once.

Both run in this process (InlineExecutor) on the same sets, alternately, the fastest of ``--repeat`` runs
each, in wall time and in this process's CPU time (less sensitive to a shared, loaded machine), and their
rows are checked equal. Two figures: with a metric that costs nothing
(a stub returning 0: reading, decoding, preparing and writing only, the part this change touches), and
with LPIPS on a random SqueezeNet (what the real metric adds on this CPU; its weights cost what
ImageNet's cost). No network.

    PYTHONPATH=. .venv/bin/python bench/bench_reference.py --images 24 --settings 8 --repeat 2
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
QUALITIES = (5, 10, 20, 30, 40, 50, 70, 90, 95, 98)


class NullMetric:
    """A similarity model that costs nothing: every distance 0."""

    def distances(self, refs: list, tests: list, rate: Any = None) -> list[float]:
        return [0.0] * len(refs)


def build(tmp: Path, n: int, size: tuple[int, int], settings: int, per_shard: int) -> Path:
    from bench_images import make_images
    from pipeline import TranscodeConfig
    from pipeline.run.driver import InlineExecutor, transcode

    root = make_images(tmp / "img", n, size)
    codecs = ["none"] + [f"jpeg:quality={q}" for q in QUALITIES[:settings]]
    config = TranscodeConfig.create("imagefolder", root, codecs, out=tmp / "out", samples_per_shard=per_shard)
    result = transcode(config, InlineExecutor(), progress=False)
    if result.failed:
        raise SystemExit(f"transcode failed: {result.failed}")
    return tmp / "out"


def squeeze_weights(tmp: Path) -> None:
    """A seeded random SqueezeNet 1.1 under torchvision's file name in a private torch cache."""
    import torch
    import torchvision.models as tvm

    import pipeline.codecs.weights as weights
    from pipeline.metrics.deep.image import backbone_file

    folder = tmp / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(tvm.squeezenet1_1(weights=None).state_dict(), folder / backbone_file("squeeze").filename)
    os.environ["TORCH_HOME"] = str(tmp / "torch")
    weights.verify = lambda *a: None  # a random stand-in for the real file


def clear(out: Path) -> None:
    for folder in out.glob("imagefolder/all/*/eval"):
        shutil.rmtree(folder)


def run_before(config: Any) -> tuple[tuple[float, float], dict[str, list]]:
    """Every (set, shard) unit on its own, reading none beside the set (the paired join)."""
    import pyarrow.parquet as pq

    from pipeline.eval import plan_eval
    from pipeline.eval.unit import run_eval_shard

    plan = plan_eval(config)
    t0, c0 = time.perf_counter(), time.process_time()
    for t in plan.tasks:
        run_eval_shard(t)
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    return elapsed, {t.part: pq.read_table(t.part).to_pylist() for t in plan.tasks}


def run_after(config: Any) -> tuple[tuple[float, float], dict[str, list]]:
    """``evaluate``: one unit per shard index, none decoded once (the publishing step is timed too)."""
    import pyarrow.parquet as pq

    from pipeline.eval import evaluate, plan_eval

    plan = plan_eval(config)
    t0, c0 = time.perf_counter(), time.process_time()
    result = evaluate(config, planned=plan)
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    if result.failed:
        raise SystemExit(f"eval failed: {result.failed}")
    return elapsed, {t.part: pq.read_table(t.part).to_pylist() for t in plan.tasks}


def measure(out: Path, metric: str, repeat: int, samples: int, settings: int) -> None:
    from pipeline.eval import EvalConfig
    from pipeline.eval.models import loaded

    config = EvalConfig.create(str(out), "imagefolder", "all", "similarity", "lpips:squeeze", batch_size=8,
                               offline=True)
    loaded(config)  # loaded once first, as on a worker after its first unit
    before = after = (math.inf, math.inf)  # (wall, CPU) seconds, each the smallest of the repeats
    for _ in range(repeat):
        clear(out)
        t, rows_before = run_before(config)
        before = (min(before[0], t[0]), min(before[1], t[1]))
        clear(out)
        t, rows_after = run_after(config)
        after = (min(after[0], t[0]), min(after[1], t[1]))
        if rows_after != rows_before:
            raise SystemExit("the rows differ between the two ways")
    clear(out)
    pairs = samples * settings
    print(f"{metric}: {settings} settings x {samples} images = {pairs} pairs (wall s / CPU s of this process)")
    for name, (w, c) in (("none decoded per set", before), ("none decoded once", after)):
        print(f"  {name:22s} {w:8.2f} s / {c:8.2f} s  ({w / pairs * 1e3:7.2f} / {c / pairs * 1e3:7.2f} ms per pair)")
    print(f"  saved {before[0] - after[0]:.2f} s wall ({100 * (1 - after[0] / before[0]):.1f} %), "
          f"{before[1] - after[1]:.2f} s CPU ({100 * (1 - after[1] / before[1]):.1f} %); ratio before/after "
          f"{before[0] / after[0]:.2f} wall, {before[1] / after[1]:.2f} CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", default="512x384", help="WIDTHxHEIGHT")
    parser.add_argument("--settings", type=int, default=8, help=f"lossy JPEG settings, at most {len(QUALITIES)}")
    parser.add_argument("--per-shard", type=int, default=0, help="samples per shard (default: images / 2)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-lpips", action="store_true")
    args = parser.parse_args()
    import torch

    import pipeline.eval.models as models

    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        squeeze_weights(tmp)
        out = build(tmp, args.images, (w, h), args.settings, args.per_shard or max(1, args.images // 2))
        print(f"{args.images} images {w}x{h}, CPU, {torch.get_num_threads()} torch threads, "
              f"{os.cpu_count()} cores; fastest of {args.repeat}")
        real = models.loaded
        models.loaded = lambda config: NullMetric()  # type: ignore[assignment]
        try:
            measure(out, "no metric (stub)", args.repeat, args.images, args.settings)
        finally:
            models.loaded = real
        if not args.skip_lpips:
            measure(out, "LPIPS squeeze (random weights)", args.repeat, args.images, args.settings)


if __name__ == "__main__":
    main()

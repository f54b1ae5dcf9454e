"""Reading JPEG quality-5 shards with the ``webdataset`` library: its Pillow decoding, our decoder, our loader.

    .venv/bin/python bench/bench_wds.py [--samples 1000] [--size 500x375] [--workdir DIR]

Builds the ImageNet-style source of ``bench_loader.py``, transcodes it to ``jpeg:quality=5`` shards,
then times, in one process, every sample decoded to uint8 (H, W, 3) pixels with its label:

* ``wds+pillow``: ``webdataset.WebDataset(urls).decode("rgb8")`` (webdataset's Pillow image handler);
* ``wds+ours``: ``webdataset.WebDataset(urls).decode(pipeline.loaders.wds_decoder())``;
* ``loader``: ``pipeline.loaders.load(..., image_format="numpy")``.

Warm-up pass first, then ``--repeat`` interleaved rounds; the best round counts, as samples per
CPU-second of the process (the fair figure on a shared machine) and per wall-clock second. The
pixels of ``wds+ours`` are checked to equal the loader's.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_loader import build_source, measure  # noqa: E402

SPEC = "jpeg:quality=5"


def run_wds_pillow(urls: list[str]) -> int:
    import webdataset as wds

    n = 0
    for s in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
        assert s["jpg"].ndim == 3 and s["jpg"].dtype == np.uint8 and s["cls"] >= 0
        n += 1
    return n


def run_wds_ours(urls: list[str]) -> int:
    import webdataset as wds

    from pipeline.loaders import wds_decoder

    n = 0
    for s in wds.WebDataset(urls, shardshuffle=False).decode(wds_decoder()):
        assert s["jpg"].ndim == 3 and s["jpg"].dtype == np.uint8 and s["cls"] >= 0
        n += 1
    return n


def run_loader(out: Path) -> int:
    from pipeline.loaders import load

    n = 0
    for s in load(out, "imagenet", "train", SPEC, image_format="numpy"):
        assert s["image"].ndim == 3 and s["label"] >= 0
        n += 1
    return n


def check_same_pixels(out: Path, urls: list[str]) -> None:
    import webdataset as wds

    from pipeline.loaders import load, wds_decoder

    theirs = {s["__key__"]: s["jpg"] for s in wds.WebDataset(urls, shardshuffle=False).decode(wds_decoder())}
    for s in load(out, "imagenet", "train", SPEC, image_format="numpy"):
        if not np.array_equal(s["image"], theirs.pop(s["__key__"])):
            raise SystemExit(f"{s['__key__']}: wds_decoder's pixels differ from the loader's")
    if theirs:
        raise SystemExit(f"the loader missed {len(theirs)} samples")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--size", default="500x375", help="image size WxH")
    p.add_argument("--samples-per-shard", type=int, default=250)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", default=None, help="keep the data here (default: a temporary folder)")
    p.add_argument("--json", default=None, help="write the results to this file")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))

    from pipeline import TranscodeConfig
    from pipeline.loaders import hf_data_files
    from pipeline.run.driver import transcode

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mpq-bench-wds-"))
    src, out = work / "imagenet", work / "shards"
    if not (src / "train").is_dir():
        build_source(src, args.samples, (w, h))
    config = TranscodeConfig.create("imagenet", src, [SPEC], out=out, split="train",
                                    samples_per_shard=args.samples_per_shard)
    result = transcode(config)
    if result.failed:
        raise SystemExit(f"transcode failed: {result.failed}")
    urls = hf_data_files(str(out), "imagenet", "train", SPEC)
    expected = result.sets[0].ok
    check_same_pixels(out, urls)
    runs = {"wds+pillow": (run_wds_pillow, urls), "wds+ours": (run_wds_ours, urls), "loader": (run_loader, out)}
    best = measure(runs, args.repeat, expected)
    print(f"{expected} samples of {w}x{h} at {SPEC} ({result.sets[0].rate_mean:.3f} bpp), best of {args.repeat}; "
          f"{platform.python_version()} on {platform.machine()}")
    for name, r in best.items():
        print(f"  {name:<11} {r['cpu']:8.0f} samples/CPU-s  {r['wall']:8.0f} samples/s  "
              f"({r['cpu'] / best['wds+pillow']['cpu']:.2f}x wds+pillow by CPU)")
    report = {"samples": expected, "size": [w, h], "spec": SPEC, "results": best}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

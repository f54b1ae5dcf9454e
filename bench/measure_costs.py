"""Per-sample cost of every codec setting through the whole pipeline, and what it means for full datasets.

For each workload (ImageNet-like 500x375 JPEG photos, ADE20K-like 683x512 JPEG photos,
LibriSpeech-like 12.3 s speech at 16 kHz mono, MUSDB-like 30 s music at 44.1 kHz stereo) and each
codec setting, a fresh Python process runs ``transcode`` in-process (one core: a single-threaded
worker) on N samples after one warm-up sample, and reports per sample: wall time, CPU time (of
the process and of encoder programs it runs), the codec's own encode and decode time from the
manifest, and its peak memory.
The projections in docs/scaling.md are computed from these figures by ``--markdown``.

Learned image codecs run on the CPU with one thread, on random-init weights in the zoo's
configuration (real weights cannot be downloaded here; convolution time does not depend on weight
values). Inputs are synthesized (photographs shipped with scikit-image and scikit-learn; speech- and
music-like signals from tests/audio_fixtures.py), so costs for real data differ somewhat.

    .venv/bin/python bench/measure_costs.py --json bench/costs.json          # measure (about 10 minutes)
    .venv/bin/python bench/measure_costs.py --markdown bench/costs.json      # tables for docs/scaling.md
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

IMAGE_CODECS = ["jpeg:quality=75", "webp:quality=75", "avif:quality=50", "jpeg2000:ratio=40", "jxl:distance=1",
                "hevc:quality=50", "none"]
LEARNED_CODECS = ["bmshj2018-factorized:quality=3", "mbt2018-mean:quality=3", "cheng2020-anchor:quality=3"]
# audio settings at bitrates typical for each kind of content
AUDIO_CODECS = {
    "librispeech": ["mp3:kbps=32", "aac:kbps=32", "opus:kbps=16", "vorbis:kbps=48", "none"],
    "musdb": ["mp3:kbps=128", "aac:kbps=128", "opus:kbps=96", "vorbis:kbps=128", "none"],
}

# workload -> (modality, what one sample is, samples timed)
WORKLOADS = {
    "imagenet": ("image", "500x375 JPEG photo", 16),
    "ade20k": ("image", "683x512 JPEG photo", 12),
    "librispeech": ("audio", "12.3 s speech, 16 kHz mono FLAC", 8),
    "musdb": ("audio", "30 s music, 44.1 kHz stereo FLAC", 4),
}

# what a full run holds (per codec setting)
DATASETS = {
    "imagenet": {"name": "ImageNet-1k train", "samples": 1_281_167, "per_shard": 1000},
    "ade20k": {"name": "ADE20K (20,210 train + 2,000 val)", "samples": 22_210, "per_shard": 1000},
    "librispeech": {"name": "LibriSpeech 960 h", "samples": 281_241, "audio_s": 960 * 3600, "per_shard": 1000},
    "musdb": {"name": "MUSDB18 (150 tracks, about 10 h, mixtures)", "samples": 150, "audio_s": 10 * 3600,
              "per_shard": 4},
}
AUDIO_SECONDS = {"librispeech": 12.3, "musdb": 30.0}


# --------------------------------------------------------------------------- inputs


def build(workload: str, root: Path, n: int) -> Path:
    """n+1 samples (one for warm-up) of a workload, written in an imagefolder/audiofolder layout."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    if workload in ("imagenet", "ade20k"):
        import skimage.data as data
        from sklearn.datasets import load_sample_images

        sk = load_sample_images()
        sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), *sk.images]
        w, h = (500, 375) if workload == "imagenet" else (683, 512)
        for i in range(n + 1):
            img = Image.fromarray(sources[i % len(sources)]).resize((w, h), Image.Resampling.LANCZOS)
            if (i // len(sources)) % 2:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            img.save(root / f"s{i:03d}.jpg", quality=90)  # ImageNet and ADE20K store JPEG
        return root
    sys.path.insert(0, str(REPO / "tests"))
    import audio_fixtures as af

    for i in range(n + 1):
        if workload == "librispeech":
            af.write_audio(root / f"s{i:03d}.flac", af.speech(AUDIO_SECONDS[workload], seed=i), af.SPEECH_RATE)
        else:
            af.write_audio(root / f"s{i:03d}.flac", af.music(AUDIO_SECONDS[workload], seed=i), af.MUSIC_RATE)
    del np
    return root


def random_weights(folder: Path, specs: list[str]) -> None:
    """Random-init CompressAI zoo checkpoints under hash-carrying names; the zoo's URL table points at them."""
    import hashlib

    import torch
    from compressai.zoo.image import cfgs, model_architectures, model_urls

    from pipeline.codecs.spec import parse_spec

    folder.mkdir(parents=True, exist_ok=True)
    for text in specs:
        spec = parse_spec(text)
        arch, q, metric = spec.name, spec["quality"], spec["metric"]
        torch.manual_seed(0)
        model = model_architectures[arch](*cfgs[arch][q])
        model.update(force=True)
        tmp = folder / f"{arch}.tmp"
        torch.save(model.state_dict(), tmp)
        name = f"{arch}-bench-{q}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth.tar"
        tmp.rename(folder / name)
        model_urls[arch][metric][q] = f"https://models.invalid/{name}"


# --------------------------------------------------------------------------- one measurement (child process)


def child(workload: str, codec: str, root: str, n: int) -> dict:
    import pyarrow.parquet as pq

    from pipeline import TranscodeConfig
    from pipeline.run.driver import transcode

    learned = codec in LEARNED_CODECS
    if learned:
        os.environ.update({"MPQ_OFFLINE": "1", "MPQ_INFERENCE_THREADS": "1", "MPQ_DEVICE": "cpu"})
        folder = Path(tempfile.mkdtemp(prefix="mpq-cost-weights-"))
        os.environ["MPQ_WEIGHTS_DIR"] = str(folder)
        random_weights(folder, [codec])
    dataset = "imagefolder" if WORKLOADS[workload][0] == "image" else "audiofolder"
    out = Path(tempfile.mkdtemp(prefix="mpq-cost-out-"))
    # warm-up: imports, codec libraries, models
    transcode(TranscodeConfig.create(dataset, root, [codec], out=out / "warm", limit=1, samples_per_shard=1))
    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
    res = transcode(TranscodeConfig.create(dataset, root, [codec], out=out / "run", samples_per_shard=n + 1))
    # CPU of this process and of the encoders it ran as programs (ffmpeg for mp3 and vorbis)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0 + _children_cpu() - k0
    rows = pq.read_table(Path(res.sets[0].folder) / "manifest.parquet").to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    if len(ok) != len(rows):
        raise RuntimeError(f"{codec}: {[r['error'] for r in rows if r['status'] != 'ok'][:2]}")
    m = len(rows)
    return {"workload": workload, "codec": res.sets[0].spec, "samples": m, "wall_s": wall / m, "cpu_s": cpu / m,
            "encode_s": sum(r["encode_s"] for r in ok) / m, "decode_s": sum(r["decode_s"] for r in ok) / m,
            "bytes_per_sample": res.sets[0].bytes / m,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------- projections


def projections(results: list[dict]) -> str:
    """Markdown tables: measured costs, and core-hours, shards, tasks and memory for the full datasets."""
    lines = []
    for workload, (modality, what, _) in WORKLOADS.items():
        rows = [r for r in results if r["workload"] == workload]
        if not rows:
            continue
        ds = DATASETS[workload]
        shards = math.ceil(ds["samples"] / ds["per_shard"])
        unit = 1 if modality == "image" else AUDIO_SECONDS[workload]
        lines += [f"### {ds['name']}", "",
                  f"Measured on {what} ({rows[0]['samples']} samples); {ds['samples']:,} samples, "
                  f"{shards:,} shards of {ds['per_shard']} per setting.", "",
                  "| setting | CPU s/sample | wall s/sample | encode s | decode s | core-hours per setting "
                  "| shard size | peak RSS |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            scale = (ds["audio_s"] / unit) if modality == "audio" else ds["samples"]
            core_h = r["cpu_s"] * scale / 3600
            shard_mb = r["bytes_per_sample"] * ds["per_shard"] / 1e6 if modality == "image" else \
                r["bytes_per_sample"] / unit * ds["audio_s"] / shards / 1e6
            learned = r["codec"].split(":")[0] in {c.split(":")[0] for c in LEARNED_CODECS}
            size = "n/a (random weights)" if learned else f"{shard_mb:,.0f} MB"
            hours = f"{core_h:,.1f}" if core_h >= 10 else f"{core_h:.2f}"
            lines.append(f"| `{r['codec']}` | {r['cpu_s']:.3f} | {r['wall_s']:.3f} | {r['encode_s']:.3f} | "
                         f"{r['decode_s']:.3f} | {hours} | {size} | {r['peak_rss_mb']:.0f} MB |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="measure and write the figures here")
    ap.add_argument("--markdown", type=Path, help="print the tables for docs/scaling.md from this JSON")
    ap.add_argument("--workload", action="append", choices=sorted(WORKLOADS), help="default: all")
    ap.add_argument("--no-learned", action="store_true", help="skip the learned image codecs (slow on a CPU)")
    ap.add_argument("--learned-n", type=int, default=2, help="images timed per learned codec")
    ap.add_argument("--child", nargs=4, metavar=("WORKLOAD", "CODEC", "ROOT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        workload, codec, root, n = args.child
        print(json.dumps(child(workload, codec, root, int(n))))
        return
    if args.markdown:
        print(projections(json.loads(args.markdown.read_text())["results"]))
        return
    if not args.json:
        ap.error("give --json FILE (measure) or --markdown FILE (tables)")
    results = []
    if args.workload and args.json.is_file():  # re-measure some workloads, keep the others
        results = [r for r in json.loads(args.json.read_text())["results"] if r["workload"] not in args.workload]
    tmp = Path(tempfile.mkdtemp(prefix="mpq-costs-"))
    for workload in args.workload or list(WORKLOADS):
        modality, _, n = WORKLOADS[workload]
        codecs = IMAGE_CODECS if modality == "image" else AUDIO_CODECS[workload]
        if modality == "image" and not args.no_learned and workload == "imagenet":
            codecs = codecs + LEARNED_CODECS
        root = build(workload, tmp / workload, n)
        for codec in codecs:
            k = args.learned_n if codec in LEARNED_CODECS else n
            cmd = [sys.executable, __file__, "--child", workload, codec, str(root), str(k)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode:
                print(f"{workload} {codec}: FAILED\n{proc.stderr[-1500:]}", file=sys.stderr)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{workload:12} {r['codec']:40} cpu {r['cpu_s']:.3f} s  wall {r['wall_s']:.3f} s  "
                  f"enc {r['encode_s']:.3f}  dec {r['decode_s']:.3f}  rss {r['peak_rss_mb']:.0f} MB", flush=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpu": _cpu_name(),
            "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    order = list(WORKLOADS)
    results.sort(key=lambda r: order.index(r["workload"]))  # stable: codec order within a workload kept
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(projections(results))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()

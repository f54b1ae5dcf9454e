"""Benchmark: audio transcoding throughput of the pipeline against a bare ffmpeg command-line loop.

Throughput is seconds of audio per second per core: audio seconds / (wall seconds x workers). Both
sides read the same FLAC files and encode and decode them with the same settings, ``workers``
files at a time:

* pipeline: ``transcode`` on a process pool (``InlineExecutor`` for one worker): read, decode,
  resample where the codec needs it, encode, decode the payload, measure SNR/SI-SDR, write shards
  (one per worker, the fewest that keep every worker busy; real runs default to 1000 samples a
  shard) and the manifest;
* bare loop: per file ``ffmpeg -i SRC.flac <codec options> OUT.ext`` then ``ffmpeg -i OUT.ext -f null -``
  (the same bundled binary), ``workers`` files in parallel; for Opus both commands resample with
  soxr at the pipeline's precision (to 48 kHz, and back to the source rate on decode).

"Per core" is literal: the benchmark pins itself, and so every process it starts (the ffmpeg
binaries of both sides, the pool's workers), to ``workers`` CPUs, so both sides have exactly
``workers`` cores (``--no-pin`` lets them spread; the ffmpeg binary then runs its decode, encode
and mux threads on about 1.2 cores for one file). CPU seconds (this process and its children) are
reported too; numpy's BLAS runs on one thread (``OMP_NUM_THREADS=1`` unless set), the ffmpeg
binary with its defaults on both sides. ``--backends`` instead times the two
ways into FFmpeg per codec (the ``ffmpeg`` binary vs PyAV in-process), encode and decode of the
same clips, which is how each codec's backend was chosen.

    .venv/bin/python bench/bench_audio.py --workers 1
    .venv/bin/python bench/bench_audio.py --kind music --files 8 --seconds 30 --workers 2
    .venv/bin/python bench/bench_audio.py --backends
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test signal synthesizers
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core per worker, as deployed
    os.environ.setdefault(_var, "1")

#: the pipeline's resampler (soxr "VHQ", 28-bit precision) as an ffmpeg filter
SOXR_VHQ = ["-af", "aresample=resampler=soxr:precision=28"]
#: pipeline spec -> ffmpeg output options doing the same. Opus codes at 48 kHz: like the pipeline, the
#: loop resamples to 48 kHz with soxr for the encode and back to the source rate on decode.
SETTINGS = {
    "mp3:kbps=64": (["-c:a", "libmp3lame", "-b:a", "64k"], "mp3"),
    "opus:kbps=32": ([*SOXR_VHQ, "-ar", "48000", "-c:a", "libopus", "-b:a", "32k"], "opus"),
    "aac:kbps=64": (["-c:a", "aac", "-b:a", "64k"], "m4a"),
    "vorbis:kbps=64": (["-c:a", "libvorbis", "-b:a", "64k"], "ogg"),
}


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def make_dataset(root: Path, kind: str, files: int, seconds: float) -> float:
    """An audiofolder of FLAC files (speech 16 kHz mono or music 44.1 kHz stereo); returns total seconds."""
    import audio_fixtures as af

    total = 0.0
    for i in range(files):
        if kind == "speech":
            ints, rate = af.speech(seconds * (0.75 + 0.5 * (i % 3) / 2), 1000 + i), af.SPEECH_RATE
        else:
            ints, rate = af.music(seconds, 1000 + i), af.MUSIC_RATE
        af.write_audio(root / f"clip{i:04d}.flac", ints, rate)
        total += len(ints) / rate
    return total


def run_pipeline(root: Path, out: Path, spec: str, workers: int) -> tuple[float, float]:
    from pipeline import TranscodeConfig, transcode

    files = len(list(root.glob("*.flac")))  # one shard per worker: the fewest that keep every worker busy
    config = TranscodeConfig.create("audiofolder", root, [spec], out=out, samples_per_shard=-(-files // workers))
    c0, t0 = cpu_seconds(), time.perf_counter()
    if workers == 1:
        result = transcode(config)
    else:
        with cf.ProcessPoolExecutor(max_workers=workers) as pool:
            result = transcode(config, pool)
    wall = time.perf_counter() - t0
    if result.failed or any(s.errors for s in result.sets):
        raise SystemExit(f"pipeline run failed: {result.failed or [s.errors for s in result.sets]}")
    return wall, cpu_seconds() - c0


def ffmpeg_commands(src: Path, out_dir: Path, spec: str) -> list[list[str]]:
    from pipeline.codecs.ffmpeg_audio import ffmpeg_exe

    options, ext = SETTINGS[spec]
    coded = out_dir / f"{src.stem}.{ext}"
    base = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    back = []  # decode at the source's rate, as the pipeline does
    if "-ar" in options:
        import soundfile as sf

        back = [*SOXR_VHQ, "-ar", str(sf.info(str(src)).samplerate)]
    return [[*base, "-i", str(src), *options, str(coded)], [*base, "-i", str(coded), *back, "-f", "null", "-"]]


def _run_file(commands: list[list[str]]) -> None:
    for cmd in commands:
        subprocess.run(cmd, check=True)


def run_ffmpeg_loop(root: Path, out: Path, spec: str, workers: int) -> tuple[float, float]:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [ffmpeg_commands(src, out, spec) for src in sorted(root.glob("*.flac"))]
    c0, t0 = cpu_seconds(), time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:  # threads only wait on the processes
        list(pool.map(_run_file, jobs))
    return time.perf_counter() - t0, cpu_seconds() - c0


def bench_throughput(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="mpq-bench-audio-") as tmp:
        root = Path(tmp) / "data"
        audio_s = make_dataset(root, args.kind, args.files, args.seconds)
        example = " && ".join(" ".join(c) for c in ffmpeg_commands(sorted(root.glob("*.flac"))[0],
                                                                    Path("OUT"), args.codecs[0]))
        rows = []
        for spec in args.codecs:
            best: dict[str, tuple[float, float]] = {}
            for rep in range(args.repeat):
                for side, fn in (("pipeline", run_pipeline), ("ffmpeg", run_ffmpeg_loop)):
                    wall, cpu = fn(root, Path(tmp) / f"{side}-{rep}-{spec.split(':')[0]}", spec, args.workers)
                    if side not in best or wall < best[side][0]:
                        best[side] = (wall, cpu)
            p_wall, p_cpu = best["pipeline"]
            f_wall, f_cpu = best["ffmpeg"]
            row = {"codec": spec, "audio_s": audio_s, "workers": args.workers,
                   "pipeline_wall_s": p_wall, "pipeline_cpu_s": p_cpu, "ffmpeg_wall_s": f_wall, "ffmpeg_cpu_s": f_cpu,
                   "pipeline_audio_s_per_s_per_core": audio_s / p_wall / args.workers,
                   "ffmpeg_audio_s_per_s_per_core": audio_s / f_wall / args.workers,
                   "ratio_wall": f_wall / p_wall, "ratio_cpu": f_cpu / p_cpu}
            rows.append(row)
            print(f"{spec:16s} pipeline {row['pipeline_audio_s_per_s_per_core']:7.1f} audio-s/s/core "
                  f"(cpu {p_cpu:5.2f} s)   ffmpeg loop {row['ffmpeg_audio_s_per_s_per_core']:7.1f} "
                  f"(cpu {f_cpu:5.2f} s)   ratio {row['ratio_wall']:.2f}x wall, {row['ratio_cpu']:.2f}x cpu",
                  flush=True)
    return {"rows": rows, "ffmpeg_command_example": example}


def bench_backends(args: argparse.Namespace) -> dict:
    """Encode+decode the same clips through the ffmpeg binary and through PyAV, per codec."""
    import audio_fixtures as af

    from pipeline.media.audio import av_decode, resample
    from pipeline.codecs.ffmpeg_audio import encode_cli, encode_pyav

    clips = {"speech 16k mono 12s": (af.as_float(af.speech(12.0, 7)), af.SPEECH_RATE),
             "music 44.1k stereo 30s": (af.as_float(af.music(30.0, 7)), af.MUSIC_RATE)}
    encoders = {"mp3": ("libmp3lame", "mp3", [("b:a", "64000")], []),
                "opus": ("libopus", "ogg", [("b:a", "32000")], []),
                "aac": ("aac", "ipod", [("b:a", "64000")], [])}
    rows = []
    for clip, (x, rate) in clips.items():
        for name, (encoder, muxer, options, mux_opts) in encoders.items():
            r = 48000 if name == "opus" else rate
            xx = resample(x, rate, r) if r != rate else x
            times = {}
            for backend, fn in (("cli", encode_cli), ("pyav", encode_pyav)):
                best = float("inf")
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    payload = fn(xx, r, encoder, muxer, options, mux_opts)
                    av_decode(payload)
                    best = min(best, time.perf_counter() - t0)
                times[backend] = best
            rows.append({"clip": clip, "codec": name, "cli_s": times["cli"], "pyav_s": times["pyav"]})
            faster = "binary" if times["cli"] < times["pyav"] else "PyAV"
            print(f"{clip:24s} {name:5s} ffmpeg binary {times['cli'] * 1000:7.1f} ms   "
                  f"PyAV {times['pyav'] * 1000:7.1f} ms   faster: {faster}", flush=True)
    return {"backends": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("speech", "music"), default="speech")
    ap.add_argument("--files", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=12.0, help="mean clip length")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="runs per side; the fastest counts")
    ap.add_argument("--codecs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--backends", action="store_true", help="time the ffmpeg binary against PyAV per codec")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin both sides to `workers` CPUs (the ffmpeg binary then uses more than one)")
    args = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and not args.backends:
        if args.workers > len(cpus):
            raise SystemExit(f"--workers {args.workers} needs that many CPUs to pin to; this process has {len(cpus)}")
        os.sched_setaffinity(0, cpus[:args.workers])  # inherited by every process started from here on
    env = {"python": platform.python_version(), "machine": platform.machine(), "cores": os.cpu_count(),
           "pinned_to": sorted(os.sched_getaffinity(0)) if args.pin else None, "argv": sys.argv}
    result = bench_backends(args) if args.backends else bench_throughput(args)
    result["environment"] = env
    if not args.backends:
        ratios = [r["ratio_wall"] for r in result["rows"]]
        print(f"\nclosing note: pipeline / bare ffmpeg loop throughput = {min(ratios):.2f}x to {max(ratios):.2f}x "
              f"({args.workers} worker(s){', pinned to as many cores' if args.pin else ', not pinned'}, "
              f"{args.kind}, {args.files} files); ffmpeg loop per file: "
              f"{result['ffmpeg_command_example']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

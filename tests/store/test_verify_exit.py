"""``mpq verify`` as its own process: exit 1 with the damage listed, never an abort at teardown.

Native thread pools still alive when the interpreter tears down (Arrow's, a codec's) made the
command abort after printing the damage ("terminate called without an active exception", exit
134) on some machines. The command now leaves with its code once its output is flushed, whatever
threads are still alive; a Python thread that never ends stands in for them here (without that
exit the process would wait for it forever).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def damaged(tmp_path) -> Path:
    from PIL import Image

    from pipeline.cli import main

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(src / f"im{i}.png")
    out = tmp_path / "out"
    assert main(["transcode", "imagefolder", str(src), "--codec", "none", "--codec", "jpeg:quality=50",
                 "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    (shard,) = (out / "imagefolder" / "all" / "jpeg-q50").glob("*.tar")
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    return out


def _run(code: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, "verify", str(out)], env=env, capture_output=True, text=True,
                          timeout=120)


def test_damaged_set_exits_1_with_the_damage(damaged):
    proc = _run("import sys; from pipeline.cli import main; sys.exit(main())", damaged)
    assert proc.returncode == 1, proc.stderr
    assert "jpeg-q50" in proc.stdout and "damaged: size or SHA-256 differs from index.json" in proc.stdout
    assert "1 problems in 2 sets, 2 shards" in proc.stderr and "terminate called" not in proc.stderr


def test_threads_alive_at_the_end_do_not_change_the_exit_code(damaged):
    code = ("import sys, threading, time; threading.Thread(target=time.sleep, args=(3600,)).start(); "
            "from pipeline.cli import main; sys.exit(main())")
    proc = _run(code, damaged)
    assert proc.returncode == 1 and "damaged" in proc.stdout, proc.stderr
    shard = next((damaged / "imagefolder" / "all" / "jpeg-q50").glob("*.tar"))
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # undo the damage: clean, exit 0, the same way
    shard.write_bytes(bytes(data))
    proc = _run(code, damaged)
    assert proc.returncode == 0 and "clean: 2 sets, 2 shards" in proc.stdout, proc.stderr

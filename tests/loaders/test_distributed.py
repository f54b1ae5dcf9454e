"""Real torch.distributed (gloo, two processes on 127.0.0.1): ranks come from the process group,
the epoch is split exactly once, and a gathered state resumes on another number of ranks."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import fixtures as fx  # noqa: E402
from pipeline.loaders import Loader, load  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

SPEC = "jpeg:quality=5"

RANK_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    from pipeline.loaders import Loader, load

    out, port, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ds = load(out, "imagefolder", "all", "jpeg:quality=5", shuffle=True, seed=3, buffer=2)
    assert (ds.rank, ds.world_size) == (rank, 2), (ds.rank, ds.world_size)
    loader = Loader(ds, batch_size=2, num_workers=2, collate_fn=lambda b: [s["__key__"] for s in b])
    full = [k for b in loader for k in b]
    loader.dataset.set_epoch(0)
    it = iter(loader)
    head = next(it)
    state = loader.state_dict(gather=True)  # a collective: every rank calls it
    del it
    dist.barrier()
    dist.destroy_process_group()
    print(json.dumps({"rank": rank, "len": len(ds), "full": full, "head": head, "state": state}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def out(tmp_path_factory, imagefolder_classes) -> Path:
    dest = tmp_path_factory.mktemp("ddp")
    assert not fx.transcode("imagefolder", imagefolder_classes, dest, codecs=(SPEC,), samples_per_shard=2).failed
    return dest


def test_two_gloo_ranks_split_the_epoch_and_resume_on_one(out, tmp_path):
    port = str(_free_port())
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    procs = [subprocess.Popen([sys.executable, str(script), str(out), port, str(r)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    everything = sorted(s["__key__"] for s in load(out, "imagefolder", "all", SPEC))
    full = [k for r in results for k in r["full"]]
    assert sorted(full) == everything and len(full) == len(set(full))
    assert [r["len"] for r in results] == [len(r["full"]) for r in results]
    # the gathered state holds both ranks; one process with three workers finishes the epoch
    state = results[0]["state"]
    assert sorted(state["consumed"]) == ["0", "1"] and state == results[1]["state"]
    head = [k for r in results for k in r["head"]]
    single = Loader(load(out, "imagefolder", "all", SPEC, shuffle=True, seed=3, buffer=2), batch_size=2,
                    num_workers=3, collate_fn=lambda b: [s["__key__"] for s in b])
    single.load_state_dict(state)
    rest = [k for b in single for k in b]
    assert sorted(head + rest) == everything and len(head + rest) == len(everything)

"""Mid-epoch resume: a job restarted from state_dict() continues the epoch, nothing repeated or skipped."""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import fixtures as fx  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from pipeline.loaders import Loader, load  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

SPEC = "jpeg:quality=5"


def keys(samples):
    return [s["__key__"] for s in samples]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """13 images in 4 shards (4, 4, 4, 1): uneven, so workers get different counts."""
    root = tmp_path_factory.mktemp("resume-src")
    names = ["astronaut", "coffee", "chelsea", "rocket", "cat", "china", "flower"]
    for i in range(13):
        name = names[i % len(names)]
        (root / f"{i:02d}_{name}.png").write_bytes(fx.png_bytes(fx.photo(name, 16 + i, 16)))
    dest = tmp_path_factory.mktemp("resume")
    assert not fx.transcode("imagefolder", fx.Built(root, {}), dest, codecs=(SPEC,), samples_per_shard=4).failed
    return dest


def make(out: Path, **kw):
    kw.setdefault("shuffle", True)
    kw.setdefault("seed", 11)
    kw.setdefault("buffer", 3)
    return load(out, "imagefolder", "all", SPEC, **kw)


def roundtrip(state: dict) -> dict:
    return json.loads(json.dumps(state))  # states are plain JSON


def test_in_process_resume_continues_the_same_order(out):
    full = keys(make(out))
    for k in (0, 1, 5, 12):
        ds = make(out)
        head = keys(islice(iter(ds), k))
        state = roundtrip(ds.state_dict())
        again = make(out)
        again.load_state_dict(state)
        assert head + keys(again) == full, k
        assert again.epoch == 1  # the resumed epoch finished: the next one follows
        assert keys(again) == keys(_at_epoch(make(out), 1))


def _at_epoch(ds, epoch):
    ds.set_epoch(epoch)
    return ds


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_loader_resume_with_workers_and_prefetch(out, workers):
    def loader(**kw):
        return Loader(make(out), batch_size=2, num_workers=workers, collate_fn=keys, **kw)

    fresh = loader()
    full = [k for b in fresh for k in b]
    assert len(list(fresh)) == len(fresh)  # len() counts each worker's partial batch
    assert sorted(full) == sorted(set(full)) and len(full) == 13
    for stop in (1, 3):
        first = loader()
        it = iter(first)
        head = [k for b in islice(it, stop) for k in b]
        state = roundtrip(first.state_dict())
        del it
        second = loader()
        second.load_state_dict(state)
        rest = [k for b in second for k in b]
        assert head + rest == full, (stop, state["consumed"])
        # the epoch after the resumed one is the ordinary next epoch
        nxt = loader()
        nxt.dataset.set_epoch(1)
        assert [k for b in second for k in b] == [k for b in nxt for k in b]


def test_resume_on_another_layout_splits_what_is_left(out):
    # two ranks with two workers each stop after one batch of two; their states are gathered
    states = []
    head = []
    for rank in range(2):
        ld = Loader(make(out, rank=rank, world_size=2), batch_size=2, num_workers=2, collate_fn=keys)
        it = iter(ld)
        head += next(it)
        states.append(roundtrip(ld.state_dict()))
        del it
    with pytest.raises(ConfigError, match="lacks ranks"):
        Loader(make(out), batch_size=2, num_workers=3, collate_fn=keys).load_state_dict(states[0])
    merged = dict(states[0], consumed={**states[0]["consumed"], **states[1]["consumed"]})
    rest = []
    for rank in range(3):  # three ranks, three workers each
        ld = Loader(make(out, rank=rank, world_size=3), batch_size=2, num_workers=3, collate_fn=keys)
        ld.load_state_dict(merged)
        rest += [k for b in ld for k in b]
    assert sorted(head + rest) == sorted(keys(make(out, shuffle=False)))
    assert len(head + rest) == len(set(head + rest)) == 13
    # a state saved after a layout change keeps what was done before it
    ld = Loader(make(out), batch_size=1, num_workers=0, collate_fn=keys)
    ld.load_state_dict(merged)
    it = iter(ld)
    more = next(it)
    chained = roundtrip(ld.state_dict())
    del it
    final = Loader(make(out), batch_size=1, num_workers=2, collate_fn=keys)
    final.load_state_dict(chained)
    tail = [k for b in final for k in b]
    assert sorted(head + more + tail) == sorted(head + rest)


def test_resampled_resume(out):
    ds = make(out, resampled=True, epoch_size=10)
    full = keys(ds)
    ds = make(out, resampled=True, epoch_size=10)
    head = keys(islice(iter(ds), 4))
    again = make(out, resampled=True, epoch_size=10)
    again.load_state_dict(roundtrip(ds.state_dict()))
    assert head + keys(again) == full


def test_a_state_of_another_loader_is_refused(out):
    ds = make(out)
    state = ds.state_dict()
    with pytest.raises(ConfigError, match="seed"):
        make(out, seed=12).load_state_dict(state)
    with pytest.raises(ConfigError, match="mode"):
        make(out, buffer=4).load_state_dict(state)
    with pytest.raises(ConfigError, match="persistent_workers"):
        Loader(make(out), num_workers=1, persistent_workers=True)

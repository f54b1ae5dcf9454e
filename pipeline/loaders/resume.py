"""The resume stage: a loader's position as a JSON-able state, and the resume point it gives back.

A state says which loader it belongs to (sets, total, mode, seed), the epoch, the layout it ran on
(world size, workers), how many samples each (rank, worker) slot emitted, and which worker was due
next. With the same layout the epoch continues in the very order it would have had; with another,
the samples not yet emitted are split anew (:func:`pipeline.loaders.sampling.consumed_mask`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from . import sampling as smp

STATE_FORMAT = "mpq-loader/1"


@dataclass(frozen=True)
class Identity:
    """What a state must match to resume a loader: its sets, sizes, mode and seed."""

    dataset: str
    split: str
    sets: tuple[str, ...]
    total: int
    mode: Mapping[str, Any]
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "sets": list(self.sets), "total": self.total,
                "mode": dict(self.mode), "seed": self.seed}


@dataclass(frozen=True)
class ResumePoint:
    """Where the next ``iter()`` starts: the epoch, samples already done, per-worker skips, worker rotation."""

    epoch: int
    done: np.ndarray | None
    skip: tuple[int, ...]
    num_workers: int
    rotate: int


def make_state(identity: Identity, *, epoch: int, world_size: int, num_workers: int,
               consumed: Mapping[str, Sequence[int]], done: np.ndarray | None, next_worker: int = 0) -> dict[str, Any]:
    return {"format": STATE_FORMAT, **identity.to_dict(), "epoch": int(epoch), "world_size": int(world_size),
            "num_workers": int(num_workers), "consumed": {k: list(v) for k, v in consumed.items()},
            "next_worker": int(next_worker), "done": None if done is None else smp.pack_mask(done)}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def resume_point(state: Mapping[str, Any], identity: Identity, *, rank: int, world_size: int, num_workers: int,
                 counts: Sequence[int], shuffle: bool, buffer: int, fixed_layout: bool) -> ResumePoint:
    """Check ``state`` belongs to this loader and work out where its next epoch pass starts."""
    if state.get("format") != STATE_FORMAT:
        raise ConfigError(f"not a loader state ({state.get('format')!r})")
    for k, v in identity.to_dict().items():
        if _jsonable(state.get(k)) != _jsonable(v):
            raise ConfigError(f"the state was saved for another loader: {k} is {state.get(k)!r}, here {v!r}")
    epoch, old_ws, old_nw = int(state["epoch"]), int(state["world_size"]), int(state["num_workers"])
    consumed = {str(k): [int(x) for x in v] for k, v in state["consumed"].items()}
    done = smp.unpack_mask(state["done"]) if state.get("done") else None
    if (old_ws, old_nw) == (world_size, num_workers) and str(rank) in consumed:
        # DataLoader asks its workers for batches in turn from worker 0: on resume, worker 0 takes
        # the slot whose turn was next, so even the interleaving of workers continues unchanged
        return ResumePoint(epoch, done, tuple(consumed[str(rank)]), num_workers,
                           int(state.get("next_worker", 0)) % num_workers)
    if fixed_layout:  # resampled draws and shards= lists depend on the slot itself
        raise ConfigError("a resampled loader (or one reading shards=) resumes only with the same world size, "
                          "rank and workers")
    missing = [r for r in range(old_ws) if str(r) not in consumed]
    if missing:
        raise ConfigError(f"resuming with another layout ({old_ws} ranks x {old_nw} workers -> "
                          f"{world_size} x {num_workers}) needs every rank's counts; the state lacks "
                          f"ranks {missing} (save it with Loader.state_dict(gather=True))")
    done = smp.consumed_mask(identity.total, counts, shuffle=shuffle, buffer=buffer, seed=identity.seed,
                             epoch=epoch, world_size=old_ws, num_workers=old_nw,
                             consumed=[consumed[str(r)] for r in range(old_ws)], done=done)
    return ResumePoint(epoch, done, (0,) * num_workers, num_workers, 0)

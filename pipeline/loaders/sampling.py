"""Which samples each (rank, worker) reads in an epoch, in which order: pure functions of the seed.

Samples are numbered globally in shard order (``index.json``). An epoch lists them shard by
shard, shards permuted from ``(seed, epoch)`` in training mode, then drops what a resumed
epoch already consumed. Every rank takes one contiguous slice of that list and splits it again
between its DataLoader workers, so each sample goes to exactly one (rank, worker) slot even
when workers outnumber shards, and each slot touches only one or two runs of shards. A slot
shuffles its slice with a bounded buffer whose random draws depend only on the seed, the epoch
and the slot, never on the data, so the emitted order can be replayed from positions alone:
that is what resuming, and resuming with another layout, rely on.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def rng_for(*parts: object) -> random.Random:
    """A random generator seeded from the parts' text, the same in every process and Python run."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def unit_hash(*parts: object) -> float:
    """A number in [0, 1) fixed by the parts (mixture choices: independent of order and layout)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0 ** 64


def bounds(n: int, parts: int, i: int) -> tuple[int, int]:
    """The i-th of ``parts`` contiguous slices of ``range(n)``, sizes differing by at most one."""
    return n * i // parts, n * (i + 1) // parts


def offsets(counts: Sequence[int]) -> np.ndarray:
    """Global number of the first sample of each shard (and the total at the end)."""
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])


def shard_order(n_shards: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    if not shuffle:
        return np.arange(n_shards)
    return np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32, epoch, 0x5A4D]).permutation(n_shards)


def epoch_positions(counts: Sequence[int], *, shuffle: bool, seed: int, epoch: int,
                    done: np.ndarray | None = None) -> np.ndarray:
    """Global sample numbers of one epoch in reading order, less those in ``done`` (a bool mask)."""
    off = offsets(counts)
    order = shard_order(len(counts), shuffle=shuffle, seed=seed, epoch=epoch)
    parts = [np.arange(off[j], off[j + 1]) for j in order]
    seq = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if done is not None:
        seq = seq[~done[seq]]
    return seq


@dataclass(frozen=True)
class Slot:
    rank: int
    world_size: int
    worker: int
    num_workers: int

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker


def rank_slice(seq: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    a, b = bounds(len(seq), world_size, rank)
    return seq[a:b]


def slot_slice(seq: np.ndarray, slot: Slot) -> np.ndarray:
    """The contiguous part of an epoch's positions this (rank, worker) reads."""
    mine = rank_slice(seq, slot.rank, slot.world_size)
    a, b = bounds(len(mine), slot.num_workers, slot.worker)
    return mine[a:b]


def buffer_shuffle(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """Shuffle a stream with a buffer of ``size`` items; the draws never depend on the items."""
    if size <= 1:
        yield from items
        return
    buf: list[T] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        k = rng.randrange(size)
        out, buf[k] = buf[k], item
        yield out
    rng.shuffle(buf)
    yield from buf


def slot_emission(positions: np.ndarray, *, shuffle: bool, buffer: int, seed: int, epoch: int,
                  slot: Slot) -> Iterator[int]:
    """The order in which a slot emits its positions (what the reader reproduces on the data)."""
    if not shuffle:
        return iter(positions.tolist())
    return buffer_shuffle(positions.tolist(), buffer, rng_for("buffer", seed, epoch, slot.rank, slot.worker))


def consumed_mask(total: int, counts: Sequence[int], *, shuffle: bool, buffer: int, seed: int, epoch: int,
                  world_size: int, num_workers: int, consumed: Sequence[Sequence[int]],
                  done: np.ndarray | None = None) -> np.ndarray:
    """Which global samples an interrupted epoch had emitted, replayed from the per-slot counts."""
    mask = np.zeros(total, dtype=bool) if done is None else done.copy()
    seq = epoch_positions(counts, shuffle=shuffle, seed=seed, epoch=epoch, done=done)
    for rank in range(world_size):
        for worker in range(num_workers):
            k = consumed[rank][worker]
            if k <= 0:
                continue
            slot = Slot(rank, world_size, worker, num_workers)
            order = slot_emission(slot_slice(seq, slot), shuffle=shuffle, buffer=buffer, seed=seed, epoch=epoch,
                                  slot=slot)
            for _, pos in zip(range(k), order):
                mask[pos] = True
    return mask


def pack_mask(mask: np.ndarray) -> dict:
    return {"n": int(mask.size), "bits": np.packbits(mask).tobytes().hex()}


def unpack_mask(packed: dict) -> np.ndarray:
    bits = np.frombuffer(bytes.fromhex(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(bits)[: packed["n"]].astype(bool)

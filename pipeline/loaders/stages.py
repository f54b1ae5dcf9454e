"""The loader's stages, each a small function or generator testable alone, composed by ``ShardDataset``.

In flow order, in the spirit of webdataset's pipeline stages:

1. ownership: which global sample positions this (rank, worker) slot reads in an epoch, and in
   which order it emits them (:func:`owned`, :func:`resampled_rounds`, :func:`listed`);
2. runs: consecutive positions of one shard, read with one pass over its tar (:func:`shard_runs`);
3. reading: a shard's member groups of every set, opened together (:func:`read_shard`);
4. joining: one key across the sets, and the mixture's choice of set (:func:`join_views`);
5. ordering: read order back to emission order, minus what a resumed epoch consumed (:func:`reorder`);
6. decoding, under an error policy (:func:`guarded`; the decoders are in :mod:`.decode`);
7. transforms (:func:`apply_transform`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence, TypeVar

import numpy as np

from ..errors import ConfigError, SampleError
from . import sampling as smp
from .storage import Storage, iter_groups, read_span

T = TypeVar("T")


# ---------------------------------------------------------------------- 1. ownership


def owned(counts: Sequence[int], slot: smp.Slot, *, shuffle: bool, buffer: int, seed: int, epoch: int,
          done: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
    """(positions this slot reads, in read order; the order it emits them in, as indices into those)."""
    seq = smp.epoch_positions(counts, shuffle=shuffle, seed=seed, epoch=epoch, done=done)
    mine = smp.slot_slice(seq, slot)
    order = smp.slot_emission(np.arange(len(mine)), shuffle=shuffle, buffer=buffer, seed=seed, epoch=epoch,
                              slot=slot)
    return mine, list(order)


def resampled_rounds(counts: Sequence[int], slot: smp.Slot, *, buffer: int, seed: int, epoch: int,
                     epoch_size: int | None) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Shards drawn with replacement (weighted by size), one round per rank quota; endless without ``epoch_size``."""
    offsets = smp.offsets(counts)
    total = int(offsets[-1])
    n_rank = epoch_size if epoch_size is not None else len(smp.rank_slice(np.arange(total), slot.rank,
                                                                          slot.world_size))
    a, b = smp.bounds(n_rank, slot.num_workers, slot.worker)
    quota = b - a
    if quota == 0 or total == 0:
        return
    weights = np.asarray(counts, dtype=np.float64) / total
    r = 0
    while True:
        rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch, r, slot.rank, slot.worker, 0x7E5])
        parts, n = [], 0
        while n < quota:
            j = int(rng.choice(len(counts), p=weights))
            parts.append(np.arange(offsets[j], offsets[j + 1]))
            n += counts[j]
        order = smp.buffer_shuffle(range(quota), buffer, smp.rng_for("resampled", seed, epoch, r, slot.rank,
                                                                     slot.worker))
        yield np.concatenate(parts)[:quota], list(order)
        if epoch_size is not None:
            return
        r += 1


def listed(counts: Sequence[int], names: Sequence[Sequence[str]],
           wanted: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """The positions of the shards named in ``wanted``, whole and in that order.

    ``names[s][j]`` is set ``s``'s file for shard ``j``: a shard may be named by any set's file.
    """
    where = {n: j for per_set in names for j, n in enumerate(per_set)}
    missing = [w for w in wanted if w not in where]
    if missing:
        raise ConfigError(f"shards {missing} are not in the set (its shards: {', '.join(names[0][:3])}, ...)")
    offsets = smp.offsets(counts)
    parts = [np.arange(offsets[where[w]], offsets[where[w] + 1]) for w in wanted]
    seq = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return seq, list(range(len(seq)))


# ---------------------------------------------------------------------- 2. runs


def shard_runs(seq: np.ndarray, offsets: np.ndarray, skipped: set[int]) -> Iterator[tuple[int, list[int], list[int]]]:
    """(shard, sample indices in it, read indices) for each run of ascending positions of one shard;
    positions whose read index is in ``skipped`` are left out (a resumed epoch does not read them)."""
    if len(seq) == 0:
        return
    shard = np.searchsorted(offsets, seq, side="right") - 1
    local = seq - offsets[shard]
    start = 0
    for i in range(1, len(seq) + 1):
        if i == len(seq) or shard[i] != shard[start] or local[i] <= local[i - 1]:
            ridx = [r for r in range(start, i) if r not in skipped]
            if ridx:
                yield int(shard[start]), [int(local[r]) for r in ridx], ridx
            start = i


# ---------------------------------------------------------------------- 3. reading


@dataclass
class Group:
    """One sample's members in one set's tar: its key and where each member lies (read on demand)."""

    key: str
    spans: Mapping[str, Any]
    fh: Any
    name: str

    def read(self, wanted: Iterable[str]) -> dict[str, bytes]:
        return {e: read_span(self.fh, self.spans[e], f"{self.name}: {self.key}.{e}") for e in wanted if e in self.spans}


def read_shard(storage: Storage, sets: Sequence[Any], members: Sequence[np.ndarray | None], j: int,
               locals_: list[int], *, verify: bool = False) -> Iterator[list[Group]]:
    """For each sample index of ``locals_`` (of the join), its member groups in every set's shard ``j``.

    ``members[s]`` maps join indices to set ``s``'s tar indices (None: the same). The shard files
    are open while the generator runs and closed when it ends or is closed.
    """
    files = []
    try:
        for s in sets:
            entry = s.shards[j]
            files.append(storage.open_shard((*s.parts, entry.name), entry.bytes, entry.sha256, verify=verify))
        gens = []
        for s, fh, idx in zip(sets, files, members):
            tar_idx = locals_ if idx is None else [int(idx[i]) for i in locals_]
            gens.append(iter_groups(fh, tar_idx, name=s.shards[j].name, expected=s.shards[j].samples))
        for _ in locals_:
            yield [Group(k, spans, fh, s.shards[j].name) for (_, k, spans), fh, s in zip((next(g) for g in gens),
                                                                                     files, sets)]
    finally:
        for fh in files:
            fh.close()


# ---------------------------------------------------------------------- 4. joining


def join_views(groups: list[Group], names: Sequence[str], choose: Callable[[str], int] | None,
               wanted: Sequence[Sequence[str]]) -> tuple[str, list[tuple[int, dict[str, bytes]]]]:
    """(key, [(set, members)]): the sets must hold one key; a mixture (``choose``) reads one set only."""
    key = groups[0].key
    for g, name in zip(groups[1:], names[1:]):
        if g.key != key:
            raise SampleError(f"{g.name}: {name} holds {g.key!r} where {names[0]} holds {key!r}")
    chosen = [choose(key)] if choose is not None else range(len(groups))
    return key, [(s, groups[s].read(wanted[s])) for s in chosen]


def mixture_choice(weights: Sequence[float], seed: int, epoch: int) -> Callable[[str], int]:
    """The mixture's setting for one sample: fixed by (seed, epoch, key), not by order or layout."""
    def choose(key: str) -> int:
        u = smp.unit_hash("mixture", seed, epoch, key)
        acc = 0.0
        for i, w in enumerate(weights):
            acc += w
            if u < acc:
                return i
        return max(i for i, w in enumerate(weights) if w > 0)
    return choose


# ---------------------------------------------------------------------- 5. ordering


def reorder(items: Iterator[tuple[int, T]], order: Sequence[int], skip: int) -> Iterator[T]:
    """Items arrive as (read index, item) in read order; emit them in ``order``, the first ``skip`` never read."""
    pending: dict[int, T] = {}
    for ridx in order[skip:]:
        while ridx not in pending:
            got, item = next(items)
            pending[got] = item
        yield pending.pop(ridx)


# ---------------------------------------------------------------------- 6. error policy


def guarded(key: str, fn: Callable[[], T], on_error: Any) -> tuple[Literal[True], T] | tuple[Literal[False], None]:
    """(True, fn()) or, when it raises and the policy is not ``raise``, (False, None) after the policy ran.

    ``on_error``: ``raise`` (a SampleError gets the key in front), ``skip``, ``warn`` or a
    function ``on_error(key, exc)`` (the sample is skipped after it returns).
    """
    try:
        return True, fn()
    except Exception as exc:
        if on_error == "raise":
            if isinstance(exc, SampleError):
                raise SampleError(f"{key}: {exc}") from None
            raise
        if on_error == "warn":
            warnings.warn(f"skipping sample {key}: {type(exc).__name__}: {exc}", stacklevel=3)
        elif callable(on_error):
            on_error(key, exc)
        return False, None


# ---------------------------------------------------------------------- 7. transforms


def apply_transform(sample: dict[str, Any], transform: Callable, *, views: list[dict[str, Any]], payload: str,
                    view_groups: Sequence[str] = (), sample_groups: Sequence[str] = (), masks: Sequence[str] = (),
                    wrap_images: bool = False) -> None:
    """One call of ``transform`` for every aligned input, so random crops and flips match.

    Inputs: the payload of each view, then each view's and the sample's named signals (coded
    and reference stems), then the mask fields (``tv_tensors.Mask`` when ``wrap_images``) and detection
    targets (their boxes as ``tv_tensors.BoundingBoxes`` on the first image's canvas, masks as ``Mask``).
    """
    import torch

    slots: list[tuple[dict, str]] = [(v, payload) for v in views]
    for holder in [*(v.get(g) for g in view_groups for v in views), *(sample.get(g) for g in sample_groups)]:
        if holder:
            slots += [(holder, k) for k in holder]
    mask_slots = [(sample, m) for m in masks if m in sample]
    args = [d[k] for d, k in slots + mask_slots]
    if wrap_images and len(args) > 1:
        from torchvision import tv_tensors

        from .detection import wrap

        canvas = (int(args[0].shape[-2]), int(args[0].shape[-1])) if isinstance(args[0], torch.Tensor) else (0, 0)
        args = ([tv_tensors.Image(x) if isinstance(x, torch.Tensor) else x for x in args[:len(slots)]]
                + [tv_tensors.Mask(x) if isinstance(x, torch.Tensor) else wrap(x, canvas) if isinstance(x, dict)
                   else x for x in args[len(slots):]])
    elif len(args) > 1 and _is_pil(args[0]):  # detection targets move with a PIL image too
        from .detection import wrap

        canvas = (int(args[0].size[1]), int(args[0].size[0]))
        args = [*args[:len(slots)], *(wrap(x, canvas) if isinstance(x, dict) else x for x in args[len(slots):])]
    out = transform(*args)
    if len(args) == 1:
        out = (out,)
    if not isinstance(out, (tuple, list)) or len(out) != len(args):
        raise ConfigError(f"transform returned {type(out).__name__}, expected {len(args)} outputs "
                          f"for its {len(args)} inputs")
    for (d, k), value in zip(slots + mask_slots, out):
        d[k] = plain(value)


def _is_pil(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def plain(value: Any) -> Any:
    """A tv_tensor back to a plain tensor, so collation and user code see ordinary tensors."""
    import torch

    if isinstance(value, dict):  # a detection target: its boxes and masks
        from .detection import unwrap

        return unwrap(value)

    if isinstance(value, torch.Tensor) and type(value) is not torch.Tensor:
        return value.as_subclass(torch.Tensor)
    return value

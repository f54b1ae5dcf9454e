"""The streaming dataset: codec sets read as a torch ``IterableDataset``, a short composition of stages.

Each (rank, DataLoader worker) reads its own slice of the epoch (see :mod:`.sampling`); tar
headers are parsed by :mod:`.storage`, only the members a sample needs are read, and they are
decoded as the set index's schema says (:mod:`.decode`). Samples are decoded only when emitted,
so the shuffle buffer holds compressed bytes and a resumed epoch skips samples without decoding
them. The stages themselves are in :mod:`.stages`; resume state in :mod:`.resume`.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ConfigError
from . import sampling as smp
from . import stages
from .decode import ViewDecoder
from .decoders import decoder_table
from .options import LoadOptions, parse_codecs
from .resume import STATE_FORMAT, Identity, ResumePoint, make_state, resume_point
from .sets import CodecSet, Join, join_sets, open_set
from .storage import Storage
from .train import TrainStage

__all__ = ["STATE_FORMAT", "ShardDataset"]


def _dist_layout() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataset(IterableDataset):
    """Samples of one or several codec sets of ``root/<dataset>/<split>/``; build it with :func:`load`.

    Takes a :class:`LoadOptions` or its fields as keywords (``load()``'s keywords).
    """

    def __init__(self, root: str, dataset: str, split: str, codec: Any = None,
                 options: LoadOptions | None = None, **kwargs: Any):
        super().__init__()
        self.options = opts = LoadOptions.create(options, **kwargs)
        self.specs, self.weights = parse_codecs(codec, opts.paired)
        self.dataset, self.split, self.paired = dataset, split, opts.paired
        self.shuffle, self.seed, self.buffer = opts.shuffled, int(opts.seed), int(opts.buffer)
        self.resampled, self.epoch_size = opts.resampled, opts.epoch_size
        decoder_table(None, opts.decoders)  # refuses unsafe extensions now, not in a worker
        self.storage = Storage(root, cache_dir=opts.cache_dir, storage_options=opts.storage_options)
        self.sets: list[CodecSet] = [open_set(self.storage, dataset, split, s) for s in self.specs]
        modalities = {s.modality for s in self.sets}
        if len(modalities) != 1:
            raise ConfigError(f"settings of different modalities: {sorted(modalities)}")
        self.modality = modalities.pop()
        self.join: Join = join_sets(self.storage, self.sets)
        self.counts = self.join.counts
        self.offsets = smp.offsets(self.counts)
        self.total = int(self.offsets[-1])
        self._listed = None if opts.shards is None else stages.listed(
            self.counts, [[e.name for e in s.shards] for s in self.sets], opts.shards)
        drank, dworld = _dist_layout()
        self.world_size = int(opts.world_size if opts.world_size is not None else dworld)
        self.rank = int(opts.rank if opts.rank is not None else (drank if opts.world_size is None else 0))
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.epoch = 0
        self._resume: ResumePoint | None = None
        self._progress: list[int] = [0, 0, 0]  # epoch, worker, samples emitted this epoch (this process)
        self._epoch_done: np.ndarray | None = None
        self._tables: list[ViewDecoder] | None = None
        self._train = None if opts.train is None else TrainStage(opts.train, self.seed)
        if self._train is not None and self.modality != "image":
            raise ConfigError(f"train= crops images; these are {self.modality} sets")

    # ------------------------------------------------------------------ sizes and epochs

    def __len__(self) -> int:
        """Samples this rank yields per epoch (index.json counts; ranks differ by at most one)."""
        if self._listed is not None:
            return len(self._listed[0])  # shards=: every listed shard, whole, wherever it is iterated
        if self.resampled:
            if self.epoch_size is None:
                raise TypeError("a resampled dataset without epoch_size is endless and has no length")
            return self.epoch_size
        a, b = smp.bounds(self.total, self.world_size, self.rank)
        return b - a

    def worker_lengths(self, num_workers: int) -> list[int]:
        """Samples each DataLoader worker of this rank yields in a fresh epoch."""
        n = len(self)
        if self._listed is not None:
            return [n] * num_workers
        return [b - a for a, b in (smp.bounds(n, num_workers, w) for w in range(num_workers))]

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch (shuffle order, mixture draws), as with DistributedSampler.set_epoch."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tables"] = None  # codecs are rebuilt in each worker
        return state

    # ------------------------------------------------------------------ resume

    def _identity(self) -> Identity:
        mode: dict[str, Any] = {"paired": self.paired, "shuffle": self.shuffle, "buffer": self.buffer,
                                "resampled": self.resampled, "epoch_size": self.epoch_size, "weights": self.weights}
        if self.options.shards is not None:  # only when set, so states saved before stay valid
            mode["shards"] = list(self.options.shards)
        return Identity(self.dataset, self.split, tuple(s.spec.canonical for s in self.sets), self.total, mode,
                        self.seed)

    def _state(self, epoch: int, num_workers: int, consumed: dict[str, list[int]],
               done: np.ndarray | None, next_worker: int = 0) -> dict[str, Any]:
        return make_state(self._identity(), epoch=epoch, world_size=self.world_size, num_workers=num_workers,
                          consumed=consumed, done=done, next_worker=next_worker)

    def state_dict(self) -> dict[str, Any]:
        """The position of an iteration running in this process (no DataLoader workers).

        With workers, use :class:`Loader`'s ``state_dict``: only the main process knows what
        the training loop has received.
        """
        epoch, _, emitted = self._progress
        return self._state(epoch, 1, {str(self.rank): [emitted]}, self._epoch_done)

    def load_state_dict(self, state: Mapping[str, Any], *, num_workers: int = 1) -> None:
        """Continue an interrupted epoch at the next ``iter()``: nothing repeated, nothing skipped.

        With the same world size and number of workers the epoch continues in the very order it
        would have had. With another layout the samples not yet emitted are split anew (the state
        must then hold every rank's counts: ``Loader.state_dict(gather=True)``).
        """
        point = resume_point(state, self._identity(), rank=self.rank, world_size=self.world_size,
                             num_workers=num_workers, counts=self.counts, shuffle=self.shuffle,
                             buffer=self.buffer, fixed_layout=self.resampled or self._listed is not None)
        self.epoch = point.epoch
        self._resume = point

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        resume, self._resume = self._resume, None
        if resume is not None:
            if resume.num_workers != nw:
                raise ConfigError(f"the state was loaded for {resume.num_workers} workers, this DataLoader has {nw}")
            worker = (worker + resume.rotate) % nw
            epoch, done, skip = resume.epoch, resume.done, resume.skip[worker]
        else:
            epoch, done, skip = self.epoch, None, 0
        self._epoch_done = done
        self._progress = [epoch, worker, skip]
        return self._run(smp.Slot(self.rank, self.world_size, worker, nw), epoch, done, skip)

    def _run(self, slot: smp.Slot, epoch: int, done: np.ndarray | None, skip: int) -> Iterator[dict[str, Any]]:
        """The epoch pass: ownership, then for each round read -> join -> reorder -> decode -> transform."""
        if self._listed is not None:
            rounds: Any = [self._listed]
        elif self.resampled:
            rounds = stages.resampled_rounds(self.counts, slot, buffer=self.buffer, seed=self.seed, epoch=epoch,
                                             epoch_size=self.epoch_size)
        else:
            rounds = [stages.owned(self.counts, slot, shuffle=self.shuffle, buffer=self.buffer, seed=self.seed,
                                   epoch=epoch, done=done)]
        for seq, order in rounds:
            if skip >= len(order) and self.resampled and self.epoch_size is None:
                skip -= len(order)  # an endless resampled pass resumes in a later round
                continue
            yield from self._emit(seq, order, skip, epoch)
            skip = 0
        if not self.resampled or self.epoch_size is not None:
            self.epoch = epoch + 1  # a finished pass moves on (set_epoch overrides)
            self._epoch_done = None

    def _emit(self, seq: np.ndarray, order: list[int], skip: int, epoch: int) -> Iterator[dict[str, Any]]:
        """Read ``seq`` (global positions) in order and emit it in ``order``, the first ``skip`` unread."""
        for key, views in stages.reorder(self._read(seq, set(order[:skip]), epoch), order, skip):
            self._progress[2] += 1  # counted before the yield: a batch collated now includes it
            outcome = stages.guarded(key, partial(self._decode, key, views, epoch), self.options.on_error)
            if outcome[0]:
                yield outcome[1]

    def _read(self, seq: np.ndarray, skipped: set[int], epoch: int) -> Iterator[tuple[int, tuple[str, list]]]:
        """(read index, (key, views)) for the positions of ``seq`` not in ``skipped``, in order."""
        tables = self._plan()
        wanted = [t.wanted(s == 0 or not self.paired) for s, t in enumerate(tables)]
        names = [s.spec.canonical for s in self.sets]
        choose = None if self.weights is None else stages.mixture_choice(self.weights, self.seed, epoch)
        for j, locals_, ridx in stages.shard_runs(seq, self.offsets, skipped):
            groups = stages.read_shard(self.storage, self.sets, [m[j] for m in self.join.members], j, locals_,
                                       verify=self.options.verify)
            for r, g in zip(ridx, groups):
                yield r, stages.join_views(g, names, choose, wanted)

    # ------------------------------------------------------------------ decoding

    def _plan(self) -> list[ViewDecoder]:
        if self._tables is None:  # built once per process: codecs (and any model) live in the worker
            o = self.options
            self._tables = [ViewDecoder(s.index, s.spec, o.decoders or {}, decode_payload=o.decode_payload,
                                        meta=o.meta, image_format=o.image_format, masks=o.masks)
                            for s in self.sets]
        return self._tables

    def _decode(self, key: str, views: list[tuple[int, dict[str, bytes]]], epoch: int = 0) -> dict[str, Any]:
        tables = self._plan()
        sample: dict[str, Any] = {"__key__": key}
        if not self.paired:
            s, members = views[0]
            hook = None if self._train is None else self._train.payload(key, epoch)  # this sample's crop
            view, extra = tables[s](members, hook)
            sample.update(view)
            sample.update(extra)
            out_views = [sample]
        else:
            by_tag = {}
            for s, members in views:
                view, extra = tables[s](members)
                by_tag[self.sets[s].spec.tag] = view
                if s == 0:
                    sample.update(extra)
            sample["views"] = by_tag
            out_views = list(by_tag.values())
        o, first = self.options, tables[views[0][0]]
        if o.transform is not None:
            stages.apply_transform(sample, o.transform, views=out_views, payload=first.payload_name,
                                   view_groups=first.view_groups, sample_groups=first.sample_groups,
                                   masks=first.masks if first.payload_type == "image" else (),
                                   wrap_images=first.payload_type == "image" and o.image_format == "tensor")
        if o.sample_transform is not None:
            sample = o.sample_transform(sample)
        return sample

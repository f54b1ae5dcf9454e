"""The resumable loader: a torch DataLoader over a :class:`ShardDataset` that knows where the loop is."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

from ..errors import ConfigError
from .dataset import ShardDataset
from .train import TrainTransform


class _Tagged:
    """Collate wrapper: each batch carries the worker that made it and that worker's position."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, samples: Any) -> tuple[int, list[int] | None, Any]:
        info = get_worker_info()
        if info is None:
            return -1, None, self.collate(samples)
        ds = info.dataset
        progress = list(ds._progress) if isinstance(ds, ShardDataset) else None
        return info.id, progress, self.collate(samples)


class Loader(DataLoader):
    """A torch DataLoader over a :class:`ShardDataset` that knows where the training loop is.

    ``state_dict()`` records, per worker, how many samples of the epoch the loop has received
    (prefetched batches do not count); ``load_state_dict()`` makes the next ``iter()`` continue
    from there. It sets the dataset's epoch at every pass and advances it when a pass ends.
    """

    dataset: ShardDataset  # checked in __init__: only a ShardDataset knows its workers' positions

    def __init__(self, dataset: ShardDataset, *args: Any, **kwargs: Any):
        if not isinstance(dataset, ShardDataset):
            raise TypeError("Loader takes a pipeline.loaders dataset (from load())")
        if kwargs.get("persistent_workers"):
            raise ConfigError("persistent_workers would keep the workers' old position: Loader restarts them "
                              "each epoch (use a plain DataLoader and set_epoch() if you need them)")
        super().__init__(dataset, *args, **kwargs)
        self.collate_fn = _Tagged(self.collate_fn)
        self._epoch: int | None = None
        self._consumed: list[int] | None = None
        self._done: np.ndarray | None = None
        self._next = 0  # the worker slot whose batch is due next

    @property
    def _workers(self) -> int:
        return max(1, self.num_workers)

    def __len__(self) -> int:
        """Batches per epoch: each worker batches its own slice, so partial batches are per worker."""
        per = self.dataset.worker_lengths(self._workers)
        if self.batch_size is None:
            return sum(per)
        if self.drop_last:
            return sum(n // self.batch_size for n in per)
        return sum(math.ceil(n / self.batch_size) for n in per)

    # DataLoader's own iterator class is internal to torch; callers only iterate what this returns
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        ds = self.dataset
        resume = ds._resume
        epoch = resume.epoch if resume is not None else ds.epoch
        ds.set_epoch(epoch)
        self._epoch = epoch
        self._consumed = list(resume.skip) if resume is not None else [0] * self._workers
        self._done = resume.done if resume is not None else None
        self._next = resume.rotate if resume is not None else 0
        if resume is not None and resume.num_workers != self._workers:
            raise ConfigError(f"the state was loaded for {resume.num_workers} workers, "
                              f"this loader has {self._workers}")
        it = super().__iter__()  # workers start here, each with a copy holding the resume point
        ds._resume = None
        return self._track(it, epoch)

    def _track(self, it: Iterator[Any], epoch: int) -> Iterator[Any]:
        ds = self.dataset
        for worker, progress, batch in it:
            if worker < 0:
                progress = ds._progress
            if progress is not None and progress[0] == epoch:
                if self._consumed is None:
                    raise ConfigError("load_state_dict() was called during a pass: call it before iter()")
                self._consumed[progress[1]] = progress[2]
                self._next = (progress[1] + 1) % self._workers
            yield batch
        ds.set_epoch(epoch + 1)
        self._epoch, self._consumed, self._done, self._next = epoch + 1, [0] * self._workers, None, 0

    def state_dict(self, *, gather: bool = False) -> dict[str, Any]:
        """Where this rank's training loop is. ``gather=True`` (call it on every rank together)
        collects all ranks' positions, so the state can resume on another number of ranks."""
        ds = self.dataset
        epoch = self._epoch if self._epoch is not None else (ds._resume.epoch if ds._resume is not None else ds.epoch)
        consumed = self._consumed if self._consumed is not None else [0] * self._workers
        next_worker = self._next
        if self._epoch is None and ds._resume is not None:
            consumed, next_worker = list(ds._resume.skip), ds._resume.rotate
        table = {str(ds.rank): list(consumed)}
        if gather and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, table)
            table = {k: v for p in parts for k, v in p.items()}
        done = self._done if self._epoch is not None else (ds._resume.done if ds._resume is not None else None)
        return ds._state(epoch, self._workers, table, done, next_worker)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.dataset.load_state_dict(state, num_workers=self._workers)
        self._epoch = None
        self._consumed = None
        self._done = None
        self._next = 0


def train_loader(root: str, dataset: str, split: str, codec: Any = None, *, batch_size: int = 256,
                 num_workers: int = 0, transform: TrainTransform | None = None, pin_memory: bool | None = None,
                 drop_last: bool = True, **load_kwargs: Any) -> Loader:
    """A resumable :class:`Loader` of normalized training batches: ``load(..., train=..., shuffle=True)``,
    batched by :meth:`TrainTransform.collate`, pinned when a GPU is there (``pin_memory=None``)."""
    transform = transform or TrainTransform()
    load_kwargs.setdefault("shuffle", True)
    ds = ShardDataset(root, dataset, split, codec, train=transform, **load_kwargs)
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    return Loader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=transform.collate,
                  pin_memory=pin, drop_last=drop_last)

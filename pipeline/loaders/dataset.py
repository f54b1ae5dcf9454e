"""The streaming dataset: codec sets read as a torch ``IterableDataset``, and a loader that can resume.

Each (rank, DataLoader worker) reads its own slice of the epoch (see :mod:`.sampling`); tar
headers are parsed by :mod:`.storage`, only the members a sample needs are read, and they are
decoded with the safe table of :mod:`.decoders`. Samples are decoded only when emitted, so the
shuffle buffer holds compressed bytes and a resumed epoch skips samples without decoding them.
"""
from __future__ import annotations

import math
import warnings
import dataclasses
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import ConfigError, SampleError
from ..codecs.spec import CodecSpec
from . import sampling as smp
from . import tasks
from .decoders import Decoder, decoder_table, png_rgb
from .sets import CodecSet, Join, join_sets, open_set, resolve_spec
from .storage import Storage, iter_groups, read_span

STATE_FORMAT = "mpq-loader/1"
IMAGE_FORMATS = ("tensor", "numpy", "pil")
ON_ERROR = ("raise", "skip", "warn")


def _dist_layout() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _parse_codecs(codec: Any, paired: bool) -> tuple[list[CodecSpec], list[float] | None]:
    """A setting, a list (paired views) or a {setting: weight} mixture -> specs and weights."""
    if isinstance(codec, Mapping):
        if paired:
            raise ConfigError("paired=True takes a list of settings, not weights")
        if not codec:
            raise ConfigError("a mixture needs at least one setting")
        specs = [resolve_spec(c) for c in codec]
        weights = [float(w) for w in codec.values()]
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"mixture weights must be non-negative with a positive sum, got {weights}")
        total = sum(weights)
        weights = [w / total for w in weights]
    elif isinstance(codec, (list, tuple)):
        if not paired:
            raise ConfigError("several settings: pass paired=True for views of each sample, "
                              "or a {setting: weight} dict for a mixture")
        if not codec:
            raise ConfigError("paired=True needs at least one setting")
        specs, weights = [resolve_spec(c) for c in codec], None
    else:
        specs, weights = [resolve_spec(codec)], None
    tags = [s.tag for s in specs]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"a setting is given twice: {tags}")
    return specs, weights


class ShardDataset(IterableDataset):
    """Samples of one or several codec sets of ``root/<dataset>/<split>/``; build it with :func:`load`."""

    def __init__(self, root: str, dataset: str, split: str, codec: Any = None, *, paired: bool = False,
                 shuffle: bool = False, seed: int = 0, buffer: int = 1000, resampled: bool = False,
                 epoch_size: int | None = None, transform: Callable | None = None,
                 sample_transform: Callable[[dict], Any] | None = None, image_format: str = "tensor",
                 decoders: Mapping[str, Decoder] | None = None, decode_payload: bool = False,
                 meta: bool = False, rank: int | None = None, world_size: int | None = None,
                 cache_dir: str | None | bool = None, storage_options: Mapping[str, Any] | None = None,
                 verify: bool = False, on_error: str | Callable[[str, Exception], None] = "raise",
                 shards: Sequence[str] | None = None):
        super().__init__()
        if image_format not in IMAGE_FORMATS:
            raise ConfigError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, not {image_format!r}")
        if not callable(on_error) and on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
        if buffer < 0 or (epoch_size is not None and epoch_size < 0):
            raise ConfigError("buffer and epoch_size must not be negative")
        if epoch_size is not None and not resampled:
            raise ConfigError("epoch_size applies to resampled=True (an ordinary epoch is every sample once)")
        self.specs, self.weights = _parse_codecs(codec, paired)
        self.paired = paired
        self.dataset, self.split = dataset, split
        self.shuffle = shuffle or resampled
        self.seed, self.buffer = int(seed), int(buffer)
        self.resampled, self.epoch_size = resampled, epoch_size
        self.transform, self.sample_transform = transform, sample_transform
        self.image_format, self.decode_payload, self.meta = image_format, decode_payload, meta
        self.user_decoders = dict(decoders or {})
        decoder_table(None, self.user_decoders)  # refuses unsafe extensions now, not in a worker
        self.verify, self.on_error = verify, on_error
        self.storage = Storage(root, cache_dir=cache_dir, storage_options=storage_options)
        self.sets: list[CodecSet] = [open_set(self.storage, dataset, split, s) for s in self.specs]
        self.only_shards = None if shards is None else tuple(shards)
        if self.only_shards is not None:
            if len(self.sets) > 1:
                raise ConfigError("shards= names the shard files of one set; it does not combine with several")
            self.sets = [_only_shards(s, self.only_shards) for s in self.sets]
            if self.shuffle or rank is not None or world_size is not None:
                raise ConfigError("shards= reads the named shards whole and in order: no shuffle, resampling "
                                  "or rank split")
        modalities = {s.modality for s in self.sets}
        if len(modalities) != 1:
            raise ConfigError(f"settings of different modalities: {sorted(modalities)}")
        self.modality = modalities.pop()
        self.join: Join = join_sets(self.storage, self.sets)
        self.counts = self.join.counts
        self.offsets = smp.offsets(self.counts)
        self.total = int(self.offsets[-1])
        drank, dworld = _dist_layout() if self.only_shards is None else (0, 1)
        self.world_size = int(world_size if world_size is not None else dworld)
        self.rank = int(rank if rank is not None else (drank if world_size is None else 0))
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.epoch = 0
        self._resume: dict[str, Any] | None = None
        self._progress: list[int] = [0, 0, 0]  # epoch, worker, samples emitted this epoch (this process)
        self._epoch_done: np.ndarray | None = None
        self._tables: list[_ViewPlan] | None = None

    # ------------------------------------------------------------------ sizes and epochs

    def __len__(self) -> int:
        """Samples this rank yields per epoch (index.json counts; ranks differ by at most one)."""
        if self.resampled:
            if self.epoch_size is None:
                raise TypeError("a resampled dataset without epoch_size is endless and has no length")
            return self.epoch_size
        a, b = smp.bounds(self.total, self.world_size, self.rank)
        return b - a

    def worker_lengths(self, num_workers: int) -> list[int]:
        """Samples each DataLoader worker of this rank yields in a fresh epoch."""
        n = len(self)
        return [b - a for a, b in (smp.bounds(n, num_workers, w) for w in range(num_workers))]

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch (shuffle order, mixture draws), as with DistributedSampler.set_epoch."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tables"] = None  # codecs are rebuilt in each worker
        return state

    # ------------------------------------------------------------------ resume

    def _mode(self) -> dict[str, Any]:
        return {"paired": self.paired, "shuffle": self.shuffle, "buffer": self.buffer,
                "resampled": self.resampled, "epoch_size": self.epoch_size, "weights": self.weights}

    def _state(self, epoch: int, num_workers: int, consumed: dict[str, list[int]],
               done: np.ndarray | None, next_worker: int = 0) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "dataset": self.dataset, "split": self.split,
                "sets": [s.spec.canonical for s in self.sets], "total": self.total, "mode": self._mode(),
                "seed": self.seed, "epoch": int(epoch), "world_size": self.world_size,
                "num_workers": int(num_workers), "consumed": consumed, "next_worker": int(next_worker),
                "done": None if done is None else smp.pack_mask(done)}

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
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"not a loader state ({state.get('format')!r})")
        mine = {"dataset": self.dataset, "split": self.split, "sets": [s.spec.canonical for s in self.sets],
                "total": self.total, "mode": self._mode(), "seed": self.seed}
        for k, v in mine.items():
            if _jsonable(state.get(k)) != _jsonable(v):
                raise ConfigError(f"the state was saved for another loader: {k} is {state.get(k)!r}, here {v!r}")
        epoch, old_ws, old_nw = int(state["epoch"]), int(state["world_size"]), int(state["num_workers"])
        consumed = {str(k): [int(x) for x in v] for k, v in state["consumed"].items()}
        done = smp.unpack_mask(state["done"]) if state.get("done") else None
        same = (old_ws, old_nw) == (self.world_size, num_workers)
        rotate = 0
        if same and str(self.rank) in consumed:
            skip = consumed[str(self.rank)]
            rotate = int(state.get("next_worker", 0)) % num_workers
        elif self.resampled:
            raise ConfigError("a resampled loader resumes only with the same world size, rank and workers")
        else:
            missing = [r for r in range(old_ws) if str(r) not in consumed]
            if missing:
                raise ConfigError(f"resuming with another layout ({old_ws} ranks x {old_nw} workers -> "
                                  f"{self.world_size} x {num_workers}) needs every rank's counts; the state lacks "
                                  f"ranks {missing} (save it with Loader.state_dict(gather=True))")
            done = smp.consumed_mask(self.total, self.counts, shuffle=self.shuffle, buffer=self.buffer,
                                     seed=self.seed, epoch=epoch, world_size=old_ws, num_workers=old_nw,
                                     consumed=[consumed[str(r)] for r in range(old_ws)], done=done)
            skip = [0] * num_workers
        self.epoch = epoch
        # DataLoader asks its workers for batches in turn from worker 0: on resume, worker 0 takes
        # the slot whose turn was next, so even the interleaving of workers continues unchanged
        self._resume = {"epoch": epoch, "done": done, "skip": skip, "num_workers": num_workers, "rotate": rotate}

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, nw = (info.id, info.num_workers) if info is not None and self.only_shards is None else (0, 1)
        slot = smp.Slot(self.rank, self.world_size, worker, nw)
        resume, self._resume = self._resume, None
        if resume is not None:
            if resume["num_workers"] != nw:
                raise ConfigError(f"the state was loaded for {resume['num_workers']} workers, "
                                  f"this DataLoader has {nw}")
            worker = (worker + resume["rotate"]) % nw
            slot = smp.Slot(self.rank, self.world_size, worker, nw)
            epoch, done, skip = resume["epoch"], resume["done"], resume["skip"][worker]
        else:
            epoch, done, skip = self.epoch, None, 0
        self._epoch_done = done
        self._progress = [epoch, worker, skip]
        return self._run(slot, epoch, done, skip)

    def _run(self, slot: smp.Slot, epoch: int, done: np.ndarray | None, skip: int) -> Iterator[dict[str, Any]]:
        if self.resampled:
            yield from self._run_resampled(slot, epoch, skip)
            return
        seq = smp.epoch_positions(self.counts, shuffle=self.shuffle, seed=self.seed, epoch=epoch, done=done)
        mine = smp.slot_slice(seq, slot)
        order = smp.slot_emission(np.arange(len(mine)), shuffle=self.shuffle, buffer=self.buffer,
                                  seed=self.seed, epoch=epoch, slot=slot)
        yield from self._emit(mine, list(order), skip, epoch)
        self.epoch = epoch + 1  # a finished pass moves on (set_epoch overrides)
        self._epoch_done = None

    def _run_resampled(self, slot: smp.Slot, epoch: int, skip: int) -> Iterator[dict[str, Any]]:
        n_rank = self.epoch_size if self.epoch_size is not None else len(smp.rank_slice(
            np.arange(self.total), slot.rank, slot.world_size))
        a, b = smp.bounds(n_rank, slot.num_workers, slot.worker)
        quota = b - a
        if quota == 0 or self.total == 0:
            return
        weights = np.asarray(self.counts, dtype=np.float64) / self.total
        rounds = [0] if self.epoch_size is not None else _count()
        for r in rounds:
            if skip >= quota:
                skip -= quota
                continue
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, r, slot.rank, slot.worker, 0x7E5])
            parts, n = [], 0
            while n < quota:
                j = int(rng.choice(len(self.counts), p=weights))
                parts.append(np.arange(self.offsets[j], self.offsets[j + 1]))
                n += self.counts[j]
            seq = np.concatenate(parts)[:quota]
            order = smp.buffer_shuffle(range(quota), self.buffer,
                                       smp.rng_for("resampled", self.seed, epoch, r, slot.rank, slot.worker))
            yield from self._emit(seq, list(order), skip, epoch)
            skip = 0
        if self.epoch_size is not None:
            self.epoch = epoch + 1

    def _emit(self, seq: np.ndarray, order: list[int], skip: int, epoch: int) -> Iterator[dict[str, Any]]:
        """Read ``seq`` (global positions) in order and emit it in ``order``, the first ``skip`` unread."""
        skipped = set(order[:skip])
        reader = self._read(seq, skipped, epoch)
        pending: dict[int, tuple[str, list]] = {}
        for ridx in order[skip:]:
            while ridx not in pending:
                got, key, views = next(reader)
                pending[got] = (key, views)
            key, views = pending.pop(ridx)
            self._progress[2] += 1  # counted before the yield: a batch collated now includes it
            try:
                sample = self._decode(key, views, epoch)
            except Exception as exc:
                if callable(self.on_error):  # the caller records the failure (mpq eval: an error row)
                    self.on_error(key, exc)
                    continue
                if self.on_error == "raise":
                    if isinstance(exc, SampleError):
                        raise SampleError(f"{key}: {exc}") from None
                    raise
                if self.on_error == "warn":
                    warnings.warn(f"skipping sample {key}: {type(exc).__name__}: {exc}", stacklevel=2)
                continue
            yield sample

    # ------------------------------------------------------------------ reading

    def _read(self, seq: np.ndarray, skipped: set[int], epoch: int) -> Iterator[tuple[int, str, list]]:
        """(read index, key, views) for the positions of ``seq`` not in ``skipped``, in order.

        Consecutive positions in one shard form a run read with one pass over each set's tar.
        """
        if len(seq) == 0:
            return
        shard = np.searchsorted(self.offsets, seq, side="right") - 1
        local = seq - self.offsets[shard]
        start = 0
        for i in range(1, len(seq) + 1):
            if i == len(seq) or shard[i] != shard[start] or local[i] <= local[i - 1]:
                ridx = [r for r in range(start, i) if r not in skipped]
                if ridx:
                    yield from self._read_shard(int(shard[start]), [int(local[r]) for r in ridx], ridx, epoch)
                start = i

    def _wanted(self, s: int) -> tuple[str, ...]:
        """Member extensions read for set ``s``: payload, record, attachments; others are skipped."""
        plan = self._plan(s)
        exts = [plan.extension, "json"]
        if plan.reconstruction:
            exts.append("png")
        exts += [f"{stem}.{plan.extension}" for stem in plan.stems]
        if s == 0 or not self.paired:
            exts += list(tasks.ATTACHMENT_FIELDS) + [f"{stem}.flac" for stem in plan.stems]
        exts += list(self.user_decoders)
        return tuple(dict.fromkeys(exts))

    def _read_shard(self, j: int, locals_: list[int], ridx: list[int], epoch: int) -> Iterator[tuple[int, str, list]]:
        files = []
        try:
            for s in self.sets:
                entry = s.shards[j]
                files.append(self.storage.open_shard((*s.parts, entry.name), entry.bytes, entry.sha256,
                                                     verify=self.verify))
            gens = []
            for s, (codec_set, fh) in enumerate(zip(self.sets, files)):
                idx = self.join.members[s][j]
                tar_idx = locals_ if idx is None else [int(idx[i]) for i in locals_]
                gens.append(iter_groups(fh, tar_idx, name=codec_set.shards[j].name,
                                        expected=codec_set.shards[j].samples))
            wanted = [self._wanted(s) for s in range(len(self.sets))]
            for r in ridx:
                groups = [next(g) for g in gens]
                key = groups[0][1]
                for (_, k, _), codec_set in zip(groups[1:], self.sets[1:]):
                    if k != key:
                        raise SampleError(f"shard {j}: {codec_set.spec.canonical} holds {k!r} where "
                                          f"{self.sets[0].spec.canonical} holds {key!r}")
                if self.weights is not None:
                    chosen = [self._choose(key, epoch)]
                else:
                    chosen = range(len(self.sets))
                views = []
                for s in chosen:
                    spans = groups[s][2]
                    name = self.sets[s].shards[j].name
                    views.append((s, {e: read_span(files[s], spans[e], f"{name}: {key}.{e}")
                                      for e in wanted[s] if e in spans}))
                yield r, key, views
        finally:
            for fh in files:
                fh.close()

    def _choose(self, key: str, epoch: int) -> int:
        """The mixture's setting for one sample: fixed by (seed, epoch, key), not by order or layout."""
        u = smp.unit_hash("mixture", self.seed, epoch, key)
        acc = 0.0
        for i, w in enumerate(self.weights or ()):
            acc += w
            if u < acc:
                return i
        return max(i for i, w in enumerate(self.weights or ()) if w > 0)

    # ------------------------------------------------------------------ decoding

    def _plan(self, s: int) -> "_ViewPlan":
        if self._tables is None:  # built once per process: codecs (and any model) live in the worker
            self._tables = [_ViewPlan(self, i) for i in range(len(self.sets))]
        return self._tables[s]

    def _decode_view(self, s: int, members: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(view fields: payload, bits, rate, codec; attachment fields) of one set's members."""
        plan = self._plan(s)
        if "json" not in members:
            raise SampleError("no .json record")
        record = _run(plan.json, members, "json")
        if not isinstance(record, dict) or record.get("codec") != plan.canonical:
            raise SampleError(f"record names codec {record.get('codec') if isinstance(record, dict) else None!r}, "
                              f"the set is {plan.canonical}")
        if plan.reconstruction and "png" in members and not self.decode_payload:
            payload = _run(png_rgb, members, "png")  # the stored decoded pixels the metrics were computed on
        elif plan.extension in members:
            payload = _run(plan.payload, members, plan.extension, record)
        else:
            raise SampleError(f"no .{plan.extension} payload")
        view: dict[str, Any] = {plan.field: self._convert(payload)}
        for name in plan.record_fields:
            if name in record:
                view[name] = record[name]
        view["codec"] = plan.canonical
        if self.meta:
            view["json"] = record
        extra: dict[str, Any] = {}
        if plan.stems:
            coded = {stem: self._convert(_run(plan.payload, members, f"{stem}.{plan.extension}", record))
                     for stem in plan.stems if f"{stem}.{plan.extension}" in members and plan.extension != "flac"}
            if coded:
                view["coded_stems"] = coded
            stems = {stem: self._convert(_run(plan.flac, members, f"{stem}.flac", record))
                     for stem in plan.stems if f"{stem}.flac" in members}
            if stems:
                extra["stems"] = stems
        for ext, name, decoder in plan.attachments:
            if ext in members:
                extra[name] = _attachment(_run(decoder, members, ext))
        for name in plan.record_extras:
            if name not in extra and record.get(name) is not None:
                extra[name] = record[name]
        for ext, decoder in plan.user:
            if ext in members:
                extra[ext] = _run(decoder, members, ext)
        return view, extra

    def _convert(self, payload: Any) -> Any:
        if not isinstance(payload, np.ndarray):
            return payload
        if self.modality == "audio":  # (n, channels) -> (channels, n), torchaudio's layout
            out = np.ascontiguousarray(payload.T)
            return out if self.image_format == "numpy" else torch.from_numpy(out)
        if payload.ndim == 3:
            if self.image_format == "numpy":
                return payload
            if self.image_format == "pil":
                from PIL import Image

                return Image.fromarray(payload)
            return torch.from_numpy(payload).permute(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(payload))

    def _decode(self, key: str, views: list, epoch: int) -> dict[str, Any]:
        sample: dict[str, Any] = {"__key__": key}
        if not self.paired:
            s, members = views[0]
            view, extra = self._decode_view(s, members)
            sample.update(view)
            sample.update(extra)
        else:
            out_views = {}
            for s, members in views:
                view, extra = self._decode_view(s, members)
                out_views[self.sets[s].spec.tag] = view
                if s == 0:
                    sample.update(extra)
            sample["views"] = out_views
        if self.transform is not None:
            self._apply_transform(sample)
        if self.sample_transform is not None:
            sample = self.sample_transform(sample)
        return sample

    def _apply_transform(self, sample: dict[str, Any]) -> None:
        """One call of ``transform`` for every aligned input, so random crops and flips match.

        Inputs: the payload of each view, then (images) segmentation maps as ``tv_tensors.Mask``,
        or (audio) each view's coded stems and the reference stems.
        """
        field = tasks.payload_field(self.dataset, self.modality)
        views = list(sample["views"].values()) if self.paired else [sample]
        slots: list[tuple[dict, str]] = [(v, field) for v in views]
        masks: list[tuple[dict, str]] = []
        if self.modality == "audio":
            for holder in [*(v.get("coded_stems") for v in views), sample.get("stems")]:
                if holder:
                    slots += [(holder, k) for k in holder]
        else:
            masks = [(sample, m) for m in tasks.MASK_FIELDS if m in sample]
        args = [d[k] for d, k in slots + masks]
        if self.modality == "image" and self.image_format == "tensor" and len(args) > 1:
            from torchvision import tv_tensors

            args = ([tv_tensors.Image(x) if isinstance(x, torch.Tensor) else x for x in args[:len(slots)]]
                    + [tv_tensors.Mask(x) if isinstance(x, torch.Tensor) else x for x in args[len(slots):]])
        out = self.transform(*args)
        if len(args) == 1:
            out = (out,)
        if not isinstance(out, (tuple, list)) or len(out) != len(args):
            raise ConfigError(f"transform returned {type(out).__name__}, expected {len(args)} outputs "
                              f"for its {len(args)} inputs")
        for (d, k), value in zip(slots + masks, out):
            d[k] = _plain(value)


def _only_shards(codec_set: CodecSet, names: Sequence[str]) -> CodecSet:
    """The set restricted to the named shard files, in the order given (an unknown name raises)."""
    by_name = {s.name: s for s in codec_set.shards}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(f"{'/'.join(codec_set.parts)}: no shard named {missing[0]!r} in index.json")
    return dataclasses.replace(codec_set, shards=tuple(by_name[n] for n in names))


class _ViewPlan:
    """How one set's members become fields, worked out once per process (not per sample)."""

    def __init__(self, ds: ShardDataset, s: int):
        from ..codecs import get_codec

        codec_set = ds.sets[s]
        cls = get_codec(codec_set.spec.name)
        self.canonical = codec_set.spec.canonical
        self.reconstruction = bool(getattr(cls, "reconstruction", False))
        self.field = tasks.payload_field(ds.dataset, ds.modality)
        self.record_fields = tasks.record_fields(ds.modality)
        self.record_extras = tasks.record_extras(ds.dataset)
        self.stems = tasks.stems(ds.dataset)
        self.flac = None
        if ds.modality == "audio":
            from . import audio

            table = decoder_table(None, ds.user_decoders)
            self.extension, decode = audio.payload_decoder(codec_set.spec)
            self.payload = _WithRecord(decode)
            self.flac = _WithRecord(lambda data, record: audio.reference(audio.flac_audio(data), record))
        else:
            table = decoder_table(codec_set.spec, ds.user_decoders)
            self.extension = cls.extension
            self.payload = table[cls.extension]
        self.json = table["json"]
        self.attachments = [(ext, name, table[ext]) for ext, name in tasks.ATTACHMENT_FIELDS.items()
                            if ext in table and ext != self.extension]
        taken = {self.extension, "json", *tasks.ATTACHMENT_FIELDS}  # a user entry for these replaces ours
        self.user = [(ext, fn) for ext, fn in ds.user_decoders.items() if ext not in taken]


class _WithRecord:
    """A decoder that needs the sample's record (audio: the lengths and rates to restore)."""

    needs_record = True

    def __init__(self, fn: Callable[[bytes, Mapping[str, Any]], Any]):
        self.fn = fn

    def __call__(self, data: bytes, record: Mapping[str, Any]) -> Any:
        return self.fn(data, record)


def _run(decoder: Decoder, members: Mapping[str, bytes], ext: str, record: Mapping[str, Any] | None = None) -> Any:
    """Decode one member; whatever a parser raises on bad bytes becomes a SampleError naming the member."""
    try:
        if getattr(decoder, "needs_record", False):
            return decoder(members[ext], record or {})
        return decoder(members[ext])
    except SampleError as exc:
        raise SampleError(f".{ext}: {exc}") from None
    except Exception as exc:
        raise SampleError(f".{ext}: {type(exc).__name__}: {exc}") from exc


def _count() -> Iterator[int]:
    r = 0
    while True:
        yield r
        r += 1


def _attachment(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype not in (np.uint8, np.int16, np.int32, np.int64, np.bool_):
            value = value.astype(np.int64)
        return torch.from_numpy(value)
    return value


def _plain(value: Any) -> Any:
    """A tv_tensor back to a plain tensor, so collation and user code see ordinary tensors."""
    if isinstance(value, torch.Tensor) and type(value) is not torch.Tensor:
        return value.as_subclass(torch.Tensor)
    return value


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


# ---------------------------------------------------------------------- the resumable loader


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

    def __iter__(self) -> Iterator[Any]:
        ds: ShardDataset = self.dataset
        resume = ds._resume
        epoch = resume["epoch"] if resume is not None else ds.epoch
        ds.set_epoch(epoch)
        self._epoch = epoch
        self._consumed = list(resume["skip"]) if resume is not None else [0] * self._workers
        self._done = resume["done"] if resume is not None else None
        self._next = resume["rotate"] if resume is not None else 0
        if resume is not None and resume["num_workers"] != self._workers:
            raise ConfigError(f"the state was loaded for {resume['num_workers']} workers, "
                              f"this loader has {self._workers}")
        it = super().__iter__()  # workers start here, each with a copy holding the resume point
        ds._resume = None
        return self._track(it, epoch)

    def _track(self, it: Iterator[Any], epoch: int) -> Iterator[Any]:
        ds: ShardDataset = self.dataset
        for worker, progress, batch in it:
            if worker < 0:
                progress = ds._progress
            if progress is not None and progress[0] == epoch:
                self._consumed[progress[1]] = progress[2]
                self._next = (progress[1] + 1) % self._workers
            yield batch
        ds.set_epoch(epoch + 1)
        self._epoch, self._consumed, self._done, self._next = epoch + 1, [0] * self._workers, None, 0

    def state_dict(self, *, gather: bool = False) -> dict[str, Any]:
        """Where this rank's training loop is. ``gather=True`` (call it on every rank together)
        collects all ranks' positions, so the state can resume on another number of ranks."""
        ds: ShardDataset = self.dataset
        epoch = self._epoch if self._epoch is not None else (ds._resume or {}).get("epoch", ds.epoch)
        consumed = self._consumed if self._consumed is not None else [0] * self._workers
        next_worker = self._next
        if self._epoch is None and ds._resume is not None:
            consumed, next_worker = list(ds._resume["skip"]), ds._resume["rotate"]
        table = {str(ds.rank): list(consumed)}
        if gather and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, table)
            table = {k: v for p in parts for k, v in p.items()}
        done = self._done if self._epoch is not None else (ds._resume or {}).get("done")
        return ds._state(epoch, self._workers, table, done, next_worker)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.dataset.load_state_dict(state, num_workers=self._workers)
        self._epoch = None
        self._consumed = None
        self._done = None
        self._next = 0
